"""The vector file of one export shard: safetensors, ``.npy`` or Parquet, written atomically, read as float32.

A Parquet shard (``shard-NNNNNN.vectors.parquet``) is a whole row per product, the shape a vector database
ingests: ``id``, ``vector`` (a fixed-size list of float32, ``dim`` long) and the shard's metadata columns. Its
vectors are float32 whatever ``--dtype`` says, because that is the type vector engines index; with ``float16`` the
values are rounded to float16 first, so an export answers the same queries in every format.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from multimodal.errors import UserError

if TYPE_CHECKING:  # reading a shard needs no torch
    pass

FORMATS = ("safetensors", "npy", "parquet")
EXTENSIONS = {"safetensors": "safetensors", "npy": "npy", "parquet": "vectors.parquet"}
VECTOR = "vector"  # the Parquet shard's vector column


def vector_file(block: int, fmt: str) -> str:
    """The name of block ``block``'s vector file in format ``fmt`` (the metadata shard is ``.parquet``)."""
    return f"shard-{block:06d}.{EXTENSIONS[fmt]}"


def check_columns(fmt: str, columns: list[str]) -> None:
    """A Parquet shard holds the metadata next to its ``vector`` column: a metadata column of that name clashes."""
    if fmt == "parquet" and VECTOR in columns:
        raise UserError(
            f"--format parquet: metadata column '{VECTOR}' clashes with the vectors' column; "
            "leave it out with --columns"
        )


def _vector_table(vectors: np.ndarray, table: pd.DataFrame) -> object:
    """``id``, ``vector`` (fixed-size list of float32) and the metadata columns, as an Arrow table."""
    import pyarrow as pa

    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), pa.float32())
    column = pa.FixedSizeListArray.from_arrays(flat, dim)
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    # Ids and metadata are text. A column with no value in this shard (or a shard whose every product was
    # skipped) reads as Arrow's null type, and pandas' own strings as large_string: both become string, so that
    # every shard has one schema and the shards concatenate into one table.
    text = (pa.types.is_null, pa.types.is_large_string)
    schema = pa.schema([f.with_type(pa.string()) if any(t(f.type) for t in text) else f for f in arrow.schema])
    arrow = arrow.cast(schema)
    return arrow.add_column(1, VECTOR, column)


def save_vectors(path: Path, vectors: Any, table: pd.DataFrame | None = None) -> None:
    """Write ``(n, E)`` vectors atomically as safetensors (key ``embeddings``), ``.npy`` or Parquet.

    Args:
        path: the shard's vector file; its name says the format (:func:`vector_file`).
        vectors: the shard's vectors, already in the export's precision (a NumPy array, or a CPU tensor).
        table: Parquet only: the shard's ids and metadata, one row per vector, in the same order.
    """
    vectors = np.ascontiguousarray(np.asarray(vectors))
    tmp = path.with_name("." + path.name + ".tmp")
    if path.name.endswith(".vectors.parquet"):
        import pyarrow.parquet as pq

        if table is None or len(table) != len(vectors):
            raise ValueError(f"{path}: a Parquet shard needs one id row per vector")
        pq.write_table(_vector_table(vectors.astype(np.float32), table), tmp)
    elif path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file({"embeddings": vectors}, str(tmp))
    else:
        with open(tmp, "wb") as f:
            np.save(f, vectors)
    os.replace(tmp, path)


def _read_parquet_vectors(path: Path) -> np.ndarray:
    """The ``vector`` column of a Parquet shard as ``(n, E)``."""
    import pyarrow.parquet as pq

    column = pq.read_table(path, columns=[VECTOR]).column(VECTOR).combine_chunks()
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), dim)


def load_vectors(path: Path) -> np.ndarray:
    """Read one shard as float32 ``(n, E)``; a missing or corrupt shard is a one-line error."""
    if not path.is_file():
        raise UserError(f"missing shard {path}: re-run `multimodal export` into the same folder to finish it")
    try:
        if path.name.endswith(".vectors.parquet"):
            arr = _read_parquet_vectors(path)
        elif path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            arr = load_file(str(path))["embeddings"]
        else:
            arr = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - any decoding failure means a corrupt shard
        raise UserError(
            f"corrupt shard {path} ({type(err).__name__}): delete it and re-run `multimodal export`"
        ) from err
    return np.ascontiguousarray(arr, dtype=np.float32)
