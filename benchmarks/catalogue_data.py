"""Large catalogues for the benchmarks: a sample manifest's rows repeated, with new ids, into one Parquet file.

    python -m benchmarks.catalogue_data examples/fashion-products/metadata.csv catalogue-100k.parquet --rows 100000

Every cell is text (as the sample is read); the photos repeat the sample's, so the same image folder serves them.
Needs no torch: only pandas and pyarrow.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from multimodal.data.manifest import read_manifest


def write_repeated_manifest(
    src: str | Path, out: str | Path, rows: int, row_group_rows: int = 65536, id_column: str = "id"
) -> Path:
    """Write ``rows`` rows of ``src`` (repeated in order) to the Parquet file ``out``, in row groups of
    ``row_group_rows``; row ``i`` gets the id ``"<its source id>-<i>"`` so every id is new and unique.

    Args:
        src: a manifest :func:`multimodal.data.manifest.read_manifest` reads (CSV, JSONL or Parquet).
        out: the Parquet file to write (replaced if present).
        rows: how many rows to write.
        row_group_rows: rows per row group (and per write, which bounds the memory used).
        id_column: the column that gets the new ids.

    Returns:
        ``out`` as a path.
    """
    sample = read_manifest(src, [id_column])
    table = pa.Table.from_pandas(sample.astype(object).where(sample.notna(), None), preserve_index=False)
    table = table.cast(pa.schema([pa.field(name, pa.string()) for name in table.schema.names]))
    ids = table.column(id_column).to_pylist()
    position = table.schema.get_field_index(id_column)
    out = Path(out)
    with pq.ParquetWriter(out, table.schema) as writer:
        for begin in range(0, rows, row_group_rows):
            stop = min(rows, begin + row_group_rows)
            picked = [i % table.num_rows for i in range(begin, stop)]
            group = table.take(pa.array(picked))
            new_ids = pa.array([f"{ids[p]}-{i}" for i, p in zip(range(begin, stop), picked, strict=True)])
            writer.write_table(group.set_column(position, id_column, new_ids), row_group_size=row_group_rows)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``SRC OUT --rows N [--row-group-rows N] [--id-column NAME]``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.catalogue_data", description=__doc__.splitlines()[0])
    parser.add_argument("src", help="the sample manifest")
    parser.add_argument("out", help="the Parquet file to write")
    parser.add_argument("--rows", type=int, required=True, help="rows to write")
    parser.add_argument("--row-group-rows", type=int, default=65536, help="rows per Parquet row group")
    parser.add_argument("--id-column", default="id", help="the column that gets new ids")
    args = parser.parse_args(argv)
    path = write_repeated_manifest(args.src, args.out, args.rows, args.row_group_rows, args.id_column)
    print(f"wrote {args.rows} rows to {path}")


if __name__ == "__main__":
    main()
