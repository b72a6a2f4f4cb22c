"""Batch inference on Spark: every task's Python API as a ``mapInPandas`` function over a catalogue's rows.

The function wraps the same :class:`multimodal.distributed.BatchPredictor` the Ray Data jobs use, so a row's tags,
vector or caption equal the Python API's single-process ones, every input row gives one output row, and a row
that cannot be predicted gets its own ``error``. Each Python worker loads the model once, at its first batch, and
keeps it for the batches and tasks that follow (Spark reuses its Python workers). See ``docs/spark.md``.

Importing this module imports neither torch nor pyspark.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from multimodal.errors import UserError

# One model per Python worker process: (checkpoint, options...) -> BatchPredictor.
_PREDICTORS: dict[tuple[Any, ...], Any] = {}
LOADS: list[tuple[Any, ...]] = []  # the keys this process has loaded, in order (one entry per model loaded)


def output_columns(
    checkpoint: str | Path, carry: Mapping[str, str] | None = None, top_k: int = 1
) -> list[tuple[str, str]]:
    """Names and Spark SQL types of the output rows for ``checkpoint``: ``id``, the carried columns, the task's
    outputs, ``error`` (what :func:`output_schema` writes as DDL)."""
    from multimodal.loading import describe
    from multimodal.task import resolve, task_of

    name, columns = describe(checkpoint)
    task = task_of(name)
    if task is None or task.row_schema is None:
        raise UserError(f"{checkpoint} holds a {name}, which declares no output schema (Task.row_schema)")
    outputs = resolve(task.row_schema)(columns, top_k)
    return [("id", "string"), *(carry or {}).items(), *outputs, ("error", "string")]


def output_schema(checkpoint: str | Path, carry: Mapping[str, str] | None = None, top_k: int = 1) -> str:
    """The Spark DDL schema of the output rows (``"`id` string, `row` bigint, `gender` string, ..."``).

    Args:
        checkpoint: a checkpoint of any task (or an ONNX export of one).
        carry: input columns copied onto the output, with their Spark SQL types (``{"row": "bigint"}``).
        top_k: the tagger's ``top_k`` (above 1 adds ``<attribute>_top``: an array of ``label, score`` structs).
    """
    return ", ".join(f"`{name}` {kind}" for name, kind in output_columns(checkpoint, carry, top_k))


class SparkPredict:
    """The ``mapInPandas`` function: pandas batches of manifest rows -> pandas batches of output rows.

    Args:
        checkpoint: absolute path (or URL) every worker reads the model from.
        columns: names and Spark SQL types of the output columns, in order (``schema`` is their DDL, for
            ``mapInPandas``).
        settings: ``BatchPredictor``'s arguments (runtime, batch size, image root, carried names, options).
    """

    def __init__(self, checkpoint: str, columns: list[tuple[str, str]], settings: dict[str, Any]) -> None:
        self.checkpoint = checkpoint
        self.columns = columns
        self.schema = ", ".join(f"`{name}` {kind}" for name, kind in columns)
        self.settings = settings

    def predictor(self) -> Any:
        """This process's model for these settings, loaded at its first use."""
        from multimodal.distributed import BatchPredictor

        key = (self.checkpoint, repr(sorted(self.settings.items())))
        if key not in _PREDICTORS:
            _PREDICTORS[key] = BatchPredictor(self.checkpoint, **self.settings)
            LOADS.append(key)
        return _PREDICTORS[key]

    def __call__(self, batches: Iterable[Any]) -> Iterator[Any]:
        """One output batch per input batch, one row per input row, in the batch's order."""
        import pyarrow as pa

        for batch in batches:
            out = self.predictor()(batch)
            out = out.to_pandas() if isinstance(out, pa.Table) else out
            for name, kind in self.columns:  # a batch in which every row failed has no output columns
                if name not in out.columns:
                    out[name] = None
                elif kind.startswith("array<struct"):  # top_k pairs [label, p] as structs
                    out[name] = [v if not isinstance(v, list) else [dict(label=a, score=b) for a, b in v]
                                 for v in out[name]]  # fmt: skip
            yield out[[name for name, _ in self.columns]]


def predict_fn(
    checkpoint: str | Path,
    batch_size: int = 64,
    runtime: str = "torch",
    image_root: str | Path | None = None,
    carry: Mapping[str, str] | None = None,
    **options: Any,
) -> SparkPredict:
    """The function to give ``DataFrame.mapInPandas`` (with its ``.schema``) to predict every row with one model
    per Python worker.

    Args:
        checkpoint: a checkpoint of any task, or an ONNX export of one, at a path every worker can read (a
            shared or mounted volume; the schema is read from it on the driver).
        batch_size: items per forward pass.
        runtime: ``torch``, ``onnx`` or ``onnx-int8``.
        image_root: folder or URL prefix for relative photo paths (None: paths must be absolute or URLs).
        carry: input columns copied onto the output rows, with their Spark SQL types (``{"row": "bigint"}``).
        options: the task's per-call options (``top_k``; ``prompt``, ``seed``, ``max_new_tokens``...).
    """
    from multimodal.distributed import checked_paths

    carry = dict(carry or {})
    ckpt, root = checked_paths(checkpoint, batch_size, 1, image_root, list(carry))
    columns = output_columns(ckpt, carry, int(options.get("top_k", 1)))
    settings = dict(runtime=runtime, batch_size=batch_size, image_root=root, carry=list(carry), options=options)
    return SparkPredict(ckpt, columns, settings)
