"""Batch inference on Ray Data: every task's Python API as a ``map_batches`` step over a catalogue's rows.

Ray Data's documented pattern for batch inference is a callable class that holds the model: Ray starts a pool of
actors, each builds the class once (one model per actor, loaded through :func:`multimodal.load`) and then maps
pandas batches of manifest rows to pandas batches of output rows. Each batch goes through the same
``Predictor.run`` the Python API uses, so a row's tags, vector or caption equal the single-process ones.

Example::

    import ray
    import multimodal.distributed as md

    ds = ray.data.read_parquet("s3://shop/catalog/")
    out = md.predict(ds, "tagger.ckpt", batch_size=64, num_actors=8, image_root="s3://shop/photos/")
    out.write_parquet("s3://shop/tags/")

Every input row gives exactly one output row (``error`` says why a row could not be predicted; ``None`` when it
was). Ray may hand batches to actors in any order: carry a column of row numbers (``carry=["row"]``) and sort by
it when the input order matters. Importing this module imports neither torch nor Ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from multimodal.data.fetch import is_remote, photo_url
from multimodal.errors import UserError

Row = dict[str, Any]


def resolve_photos(cell: Any, root: str | Path | None, where: str) -> Any:
    """The photos of one manifest cell with paths relative to ``root`` made absolute (a list when ``root`` is
    set), so the Python API, which reads relative paths from the working directory, finds them on any worker.

    Args:
        cell: the image cell (a path, a URL, several joined by ``|``, or a list of them).
        root: a local folder or a URL prefix (``s3://shop/photos/``); None leaves the cell as it is.
        where: names the cell in errors.
    """
    from multimodal.data.photos import photo_list

    if root is None:
        return cell
    prefix = str(root)
    out: list[Any] = []
    for photo in photo_list(cell, where):
        url = photo_url(prefix, photo) if isinstance(photo, str) else None  # the one rule for URLs and URL roots
        if url is not None:
            out.append(url)
        elif not isinstance(photo, str) or "://" in photo or Path(photo).is_absolute():  # file://, absolute
            out.append(photo)
        else:
            out.append(str(Path(prefix) / photo))
    return out


class BatchPredictor:
    """What each Ray actor holds: one loaded model and the per-call options of the job.

    Args:
        checkpoint: a checkpoint of any task (or an ONNX export of one).
        runtime: ``torch``, ``onnx`` or ``onnx-int8`` (see :func:`multimodal.load`).
        batch_size: items per forward pass.
        image_root: folder or URL prefix that relative photo paths are read from (None: absolute paths only).
        carry: input columns copied unchanged onto each output row (row numbers, partition keys...).
        options: the task's per-call options: ``top_k`` for a tagger; ``prompt``, ``seed`` and ``generate``
            options for a captioner; none for a retriever.
    """

    def __init__(
        self,
        checkpoint: str,
        runtime: str = "torch",
        batch_size: int = 64,
        image_root: str | None = None,
        carry: Sequence[str] = (),
        options: dict[str, Any] | None = None,
    ) -> None:
        import multimodal

        self.api = bind_options(multimodal.load(checkpoint, batch_size=batch_size, runtime=runtime), options or {})
        self.image_root = image_root
        self.carry = list(carry)

    def __call__(self, batch: Any) -> Any:
        """Output rows of one pandas batch of manifest rows: one per input row, in the batch's order."""
        import pandas as pd

        inputs = self.inputs(batch)
        rows = self.rows(inputs)
        out = pd.DataFrame([output_row(r) for r in rows], index=range(len(rows)))
        if "id" not in out.columns:
            out["id"] = pd.Series(dtype=object)
        for name in reversed(self.carry):
            out.insert(1, name, batch[name].to_numpy() if len(batch) else [])
        errors = out["error"] if "error" in out.columns else pd.Series([None] * len(out), dtype=object)
        out["error"] = errors.astype(object).where(errors.notna(), None)  # one column type in every block
        return float32_vectors(out) if "vector" in out.columns else out

    def inputs(self, batch: Any) -> Any:
        """The batch with its photo paths resolved against ``image_root``."""
        # A missing column fails the job at its first batch rather than giving every row the same error.
        missing = [c for c in dict.fromkeys([*self.carry, *self.api.required_columns()]) if c not in batch.columns]
        if missing:
            raise UserError(f"the input is missing column(s) {missing}; columns present: {list(batch.columns)}")
        batch = batch.reset_index(drop=True).copy()
        image = self.api.columns.image
        if self.image_root is not None and image in batch.columns:
            batch[image] = pd_object([self.resolved(cell, i) for i, cell in enumerate(batch[image])])
        return batch

    def resolved(self, cell: Any, i: int) -> Any:
        """``cell`` resolved against ``image_root``; a cell that is not photos is left for ``run`` to report."""
        try:
            return resolve_photos(cell, self.image_root, f"batch row {i}, column {self.api.columns.image}")
        except UserError:
            return cell

    def rows(self, inputs: Any) -> list[Row]:
        """``run`` over the whole batch; when the batch as a whole is refused (an empty or repeated id), each row
        alone, so that every row still gets its output or its own error."""
        if len(inputs) == 0:
            return []
        try:
            return self.api.run(inputs)
        except UserError:
            pass
        out: list[Row] = []
        id_column = self.api.columns.id
        seen: dict[str, int] = {}
        for i in range(len(inputs)):
            row = inputs.iloc[[i]]
            value = row[id_column].iloc[0] if id_column in row.columns else None
            item_id = None if value is None or pd_isna(value) else str(value)
            try:
                if item_id is not None and item_id in seen:
                    raise UserError(f"batch row {i}: duplicate id '{item_id}' (first at batch row {seen[item_id]})")
                out += self.api.run(row)
            except UserError as err:
                out.append({"id": item_id, "error": str(err)})
            if item_id is not None:
                seen.setdefault(item_id, i)
        return out


def pd_isna(value: Any) -> bool:
    """Whether a scalar cell is missing (None, NaN, NA)."""
    import pandas as pd

    return bool(pd.isna(value)) if not isinstance(value, list | tuple) else False


def pd_object(values: list[Any]) -> Any:
    """A pandas object column of ``values`` (lists stay lists, one per cell)."""
    import pandas as pd

    column = pd.Series([None] * len(values), dtype=object)
    for i, value in enumerate(values):
        column[i] = value
    return column


def bind_options(api: Any, options: dict[str, Any]) -> Any:
    """The task API bound to its per-call options (the same ``with_*`` methods the Python API's calls use)."""
    from multimodal.captioning.predictor import Captioner
    from multimodal.tagging.predictor import Tagger

    if isinstance(api, Tagger):
        unknown = sorted(set(options) - {"top_k"})
        api = api.with_top_k(int(options.get("top_k", 1))) if not unknown else api
    elif isinstance(api, Captioner):
        return api.with_options(**options)
    else:
        unknown = sorted(options)
    if unknown:
        raise UserError(f"{type(api).__name__} takes no option(s) {unknown}")
    return api


def float32_vectors(out: Any) -> Any:
    """``out`` as an Arrow table whose ``vector`` column is ``list<float32>`` (pandas would widen it to float64)."""
    import pyarrow as pa

    table = pa.Table.from_pandas(out, preserve_index=False)
    i = table.schema.get_field_index("vector")
    return table.set_column(i, "vector", table.column(i).cast(pa.list_(pa.float32())))


def output_row(row: Row) -> Row:
    """A row as stored: an ``embedding`` tensor becomes the float32 list column ``vector``."""
    if "embedding" not in row:
        return row
    out = {k: v for k, v in row.items() if k != "embedding"}
    out["vector"] = row["embedding"].float().numpy().tolist()
    return out


def checked_paths(
    checkpoint: str | Path, batch_size: int, num_actors: int, image_root: str | Path | None, carry: Sequence[str]
) -> tuple[str, str | None]:
    """The checkpoint and image root as absolute paths (workers may run in another working directory) or URLs,
    after one-line errors for options out of range, a missing checkpoint, a carried column that clashes."""
    if batch_size < 1 or num_actors < 1:
        raise UserError(f"batch_size and num_actors must be positive, not {batch_size} and {num_actors}")
    path = Path(checkpoint)
    if not is_remote(str(checkpoint)) and not path.exists():
        raise UserError(f"checkpoint {checkpoint} does not exist")
    clash = sorted({"id", "error", "vector", "caption", "score"} & set(carry))
    if clash:
        raise UserError(f"carry cannot name output column(s) {clash}; rename them in the input")
    root = None if image_root is None else str(image_root)
    if root is not None and not is_remote(root):
        root = str(Path(root).resolve())
    return (str(checkpoint) if is_remote(str(checkpoint)) else str(path.resolve())), root


def predict(
    ds: Any,
    checkpoint: str | Path,
    batch_size: int = 64,
    num_actors: int = 2,
    runtime: str = "torch",
    image_root: str | Path | None = None,
    carry: Sequence[str] = (),
    num_cpus: float = 1,
    **options: Any,
) -> Any:
    """Predict every row of a Ray Dataset of manifest rows with a pool of ``num_actors`` actors.

    Args:
        ds: a ``ray.data.Dataset`` with the columns the model reads (id, image, texts).
        checkpoint: a checkpoint of any task, or an ONNX export of one; every worker must be able to read it.
        batch_size: rows per ``map_batches`` call and per forward pass.
        num_actors: actors in the pool, each holding one model.
        runtime: ``torch``, ``onnx`` or ``onnx-int8``.
        image_root: folder or URL prefix for relative photo paths (None: paths must be absolute or URLs).
        carry: input columns copied onto the output rows (for example a row number to restore the input order).
        num_cpus: CPUs reserved per actor.
        options: the task's per-call options (``top_k``; ``prompt``, ``seed``, ``num_beams``...).

    Returns:
        A lazy ``ray.data.Dataset``: one row per input row with ``id``, the carried columns, the task's outputs
        (labels and scores, ``vector``, or ``caption`` and ``score``) and ``error``.
    """
    import ray.data

    ckpt, root = checked_paths(checkpoint, batch_size, num_actors, image_root, carry)
    return ds.map_batches(
        BatchPredictor,
        fn_constructor_kwargs=dict(
            checkpoint=ckpt, runtime=runtime, batch_size=batch_size, image_root=root, carry=list(carry), options=options
        ),
        batch_size=batch_size,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_cpus=num_cpus,
        udf_modifying_row_count=False,  # one output row per input row
    )
