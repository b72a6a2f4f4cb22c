"""Reading product manifests (CSV, JSONL, Parquet), deterministic splits and label vocabularies."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from multimodal.errors import UserError

MISSING = {"", "NA", "N/A", "nan", "NaN", "None", "null"}
SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}


def read_manifest(path: str | Path, required: Iterable[str] = (), photos: Iterable[str] = ()) -> pd.DataFrame:
    """Read a manifest as strings; check that every required column is present.

    Args:
        path: ``.csv``, ``.jsonl`` / ``.json`` (one object per line) or ``.parquet``.
        required: column names the config refers to.
        photos: columns whose cells are kept as read (a list of photos is one cell:
            :func:`multimodal.data.photos.photo_list` reads them).

    Raises:
        UserError: unreadable or empty manifest, unknown format, or a missing column (named, with the ones present).
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"manifest not found: {p}")
    suffix = p.suffix.lower()
    try:
        if suffix == ".csv":
            df = pd.read_csv(p, dtype=str, keep_default_na=False)
        elif suffix in (".jsonl", ".json"):
            df = _read_jsonl(p)
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            # Plain Python values: an integer column with nulls stays integer ("2010", not "2010.0" as in pandas).
            df = pd.DataFrame(pq.read_table(p).to_pydict(), dtype=object)
        else:
            raise UserError(f"manifest {p}: unknown format '{suffix}' (use .csv, .jsonl or .parquet)")
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - any parser failure is a user file problem
        raise UserError(f"manifest {p} could not be read: {err}") from err
    if len(df) == 0:
        raise UserError(f"manifest {p} is empty")
    missing = [c for c in dict.fromkeys(required) if c not in df.columns]
    if missing:
        raise UserError(f"manifest {p} is missing column(s) {missing}; columns present: {list(df.columns)}")
    if suffix != ".csv":  # CSV cells are read as text already
        text = [c for c in dict.fromkeys(required) if c in df.columns and c not in set(photos)]
        df = as_text(df, text, f"manifest {p}")
    return df


def cell_text(value: object, where: str) -> str | None:
    """One cell as text, by explicit rules: text as is; None / NaN unknown; integers (and integral floats, as
    Parquet and JSON store integer columns with nulls) without ``.0``; other numbers and booleans as Python
    writes them; bytes decoded as UTF-8. Lists, dicts and other objects are refused (``where`` names the cell)."""
    import numpy as np

    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{where}: bytes that are not UTF-8 text ({value[:20]!r}...)") from None
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        if value != value:
            return None
        return str(int(value)) if float(value).is_integer() else str(float(value))
    kind = type(value).__name__
    raise UserError(f"{where}: a {kind} cell ({str(value)[:40]}); this column needs one text or number per cell")


def as_text(df: pd.DataFrame, columns: Iterable[str], source: str, keep: tuple[type, ...] = ()) -> pd.DataFrame:
    """``df`` with every cell of ``columns`` made text by :func:`cell_text` (cells of the ``keep`` types, e.g. PIL
    images in an image column, are kept as they are); the error names the row and the column."""
    out = df.copy()
    for column in columns:
        values = out[column].tolist()
        out[column] = pd.Series(
            [
                v if keep and isinstance(v, keep) else cell_text(v, f"{source} row {row}, column '{column}'")
                for row, v in enumerate(values)
            ],
            index=out.index,
            dtype=object,
        )
    return out


def _read_jsonl(p: Path) -> pd.DataFrame:
    """One JSON object per line, kept as Python values (no float coercion of integer columns with nulls)."""
    records = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"manifest {p} line {n}: invalid JSON ({err})") from None
        if not isinstance(record, dict):
            raise UserError(f"manifest {p} line {n}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return pd.DataFrame(records, dtype=object)


def clean_value(value: object) -> str | None:
    """A cell as a stripped string, or None when it is empty, ``NA`` or null."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip()
    return None if text in MISSING else text


def hash_split(item_id: str, val_fraction: float, test_fraction: float, salt: str = "") -> str:
    """Stable split of one id: the same id always lands in the same split, on every machine."""
    h = int(hashlib.md5(f"{salt}{item_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if h < test_fraction:
        return "test"
    if h < test_fraction + val_fraction:
        return "val"
    return "train"


def assign_splits(
    df: pd.DataFrame,
    id_column: str,
    split_column: str | None,
    val_fraction: float,
    test_fraction: float,
    salt: str = "",
) -> list[str]:
    """Split of every row: from ``split_column`` when the manifest has it, else by a hash of the id."""
    if split_column and split_column in df.columns:
        splits = []
        for row, value in enumerate(df[split_column]):
            name = _SPLIT_ALIASES.get(str(value).strip().lower())
            if name is None:
                raise UserError(f"row {row}: split column '{split_column}' has '{value}' (use train, val or test)")
            splits.append(name)
        return splits
    return [hash_split(str(i), val_fraction, test_fraction, salt) for i in df[id_column]]


def split_tags(value: str | None, separator: str) -> list[str] | None:
    """``"cotton|slim fit"`` -> ``["cotton", "slim fit"]``; None when the cell is unknown."""
    if value is None:
        return None
    return [t.strip() for t in value.split(separator) if t.strip()]


def build_vocabulary(values: Sequence[str | None]) -> list[str]:
    """Sorted distinct known values (the training split's)."""
    return sorted({v for v in values if v is not None})


def build_tag_vocabulary(values: Sequence[list[str] | None]) -> list[str]:
    """Sorted distinct tags over the training split."""
    return sorted({t for tags in values if tags for t in tags})


def unseen_counts(values: Sequence[str | None], vocabulary: Sequence[str]) -> dict[str, int]:
    """How often each known value outside the vocabulary occurs (labels never seen in training)."""
    known = set(vocabulary)
    return dict(Counter(v for v in values if v is not None and v not in known))
