"""What a prediction is asked for -> product records in input order: a manifest, a folder of photos, a DataFrame,
a list of dicts, image paths or PIL images.

Columns come from the trained model (:class:`multimodal.loading.Columns`). Label columns are optional (absent =
unknown); a text or image column the model reads must be present. Every row becomes a record, so a batch job
writes one output line per input row: a row with an empty or repeated id gets a record that carries its
``error`` (the repeated one names the first row) and is listed in ``problems``; the Python API refuses such
input instead. An unusable image is not known here: the dataset reports it as a per-row error when it fails to
decode.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from multimodal.data.manifest import as_text, clean_value, split_tags
from multimodal.data.photos import Photo, kept_photos, photo_list
from multimodal.data.records import ProductRecord
from multimodal.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
Problems = list[dict[str, Any]]


def frame_records(
    df: pd.DataFrame,
    source: str,
    columns: Any,
    required: Sequence[str],
    require_image: bool = False,
) -> tuple[list[ProductRecord], Problems]:
    """A record of every row of ``df``, in row order; ``problems`` lists the rows whose id is empty or repeated
    (their records carry the same reason as ``error``).

    Args:
        df: one product per row (cells may be strings, None, NaN or, in the image column, PIL images).
        source: named in errors (a file path, or "the input DataFrame").
        columns: the model's :class:`Columns`.
        required: columns that must be present (the id column may be absent: the row number is the id then).
        require_image: a row without an image gets a per-row error (captioning needs a photo).
    """
    missing = [c for c in dict.fromkeys(required) if c not in df.columns]
    if missing:
        raise UserError(f"{source} is missing column(s) {missing} the model reads; columns present: {list(df.columns)}")
    read = [columns.id, *columns.texts, *columns.attributes, *columns.tags]
    df = as_text(df, [c for c in dict.fromkeys(read) if c in df.columns and c != columns.image], source)
    records: list[ProductRecord] = []
    problems: Problems = []
    seen: dict[str, int] = {}
    has_id = columns.id in df.columns
    for row, rec in enumerate(df.to_dict("records")):
        item_id = clean_value(rec[columns.id]) if has_id else str(row)
        id_error = None
        if item_id is None or item_id in seen:
            what = "an empty id" if item_id is None else f"duplicate id '{item_id}' (first at row {seen[item_id]})"
            id_error = f"{source} row {row}: {what}"
            problems.append({"id": item_id, "row": row, "reason": id_error})
        else:
            seen[item_id] = row
        records.append(row_record(row, item_id, rec, columns, source, require_image, id_error))
    return records, problems


def row_record(
    row: int,
    item_id: str | None,
    cells: dict[str, Any],
    columns: Any,
    source: str,
    require_image: bool = False,
    id_error: str | None = None,
) -> ProductRecord:
    """The record of one input row (its text cells already text, its photo cell as read); ``id_error`` says why its
    id cannot be used (empty or repeated), which makes it an error row."""
    photos, ignored, error = _row_photos(cells.get(columns.image), f"{source} row {row}", columns, require_image)
    return ProductRecord(
        row=row,
        id=item_id or "",
        photos=photos,
        ignored_photos=ignored,
        texts={c: clean_value(cells.get(c)) for c in columns.texts},
        labels={a: clean_value(cells.get(a)) for a in columns.attributes},
        tags={c: split_tags(clean_value(cells.get(c)), columns.tag_separator) for c in columns.tags},
        error=id_error or error,
    )


def _row_photos(
    cell: Any, where: str, columns: Any, require_image: bool
) -> tuple[list[Photo], list[Photo], str | None]:
    """The photos of a row's cell, those past ``max_images``, and the row's error when it needs a photo and has none."""
    photos, ignored = kept_photos(photo_list(cell, f"{where}, column '{columns.image}'"), columns.max_images)
    error = f"no usable image path ('{'' if cell is None else cell}')" if require_image and not photos else None
    return photos, ignored, error


def folder_records(folder: Path, columns: Any) -> list[ProductRecord]:
    """Image files under ``folder`` (recursively, sorted); id = the path relative to the folder without suffix."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {folder}")
    return [
        ProductRecord(
            row=i,
            id=p.relative_to(folder).with_suffix("").as_posix(),
            photos=[p.relative_to(folder).as_posix()],
            texts={c: None for c in columns.texts},
            labels={a: None for a in columns.attributes},
            tags={c: None for c in columns.tags},
        )
        for i, p in enumerate(files)
    ]


def api_records(
    inputs: Any, columns: Any, required: Sequence[str], require_image: bool = False
) -> tuple[list[ProductRecord], Problems]:
    """Records of what a Python caller passes: a DataFrame, a list of dicts, or a list of image paths / PIL images.

    Image paths are taken as given (absolute, or relative to the working directory).
    """
    if isinstance(inputs, (str, Path, Image.Image, dict)):
        inputs = [inputs]
    if isinstance(inputs, pd.DataFrame):
        df, source = inputs, "the input DataFrame"
    else:
        items = list(inputs)
        if items and all(isinstance(x, dict) for x in items):
            df, source = pd.DataFrame(items, dtype=object), "the input records"
        elif all(isinstance(x, (str, Path, Image.Image)) for x in items):
            ids = [str(x) if not isinstance(x, Image.Image) else str(i) for i, x in enumerate(items)]
            images = [x if isinstance(x, Image.Image) else str(x) for x in items]
            df, source = pd.DataFrame({columns.id: ids, columns.image: images}, dtype=object), "the input images"
            required = [c for c in required if c == columns.image]  # images alone: texts unknown
        else:
            kinds = sorted({type(x).__name__ for x in items})
            raise UserError(f"inputs must be a DataFrame, dicts, image paths or PIL images, not {kinds}")
    if len(df) == 0:
        raise UserError(f"{source} is empty: nothing to predict")
    return frame_records(df, source, columns, required, require_image)
