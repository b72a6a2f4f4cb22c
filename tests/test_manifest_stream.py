"""Streaming manifests (``multimodal.data.stream``): the same rows as ``read_manifest`` from CSV, JSONL, Parquet files
and Parquet datasets (local and ``memory://``), from any start row, row by row, with the ids scanned in one pass and
memory that does not grow with the catalogue."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, SAMPLE_MANIFEST

from benchmarks.catalogue_data import write_repeated_manifest
from multimodal.data.manifest import clean_value, read_manifest
from multimodal.data.stream import LazyRows, ManifestTable, scan_ids
from multimodal.errors import UserError
from multimodal.search.export import ids_sha256


def cells(df: pd.DataFrame) -> list[list[str | None]]:
    """Every cell after ``clean_value``, row by row (None, not NaN, for an empty cell)."""
    return [[clean_value(v) for v in row] for row in df.itertuples(index=False)]


def as_record(row: int, cells: dict) -> tuple[int, str]:
    return row, cells["id"]


@pytest.fixture(scope="module")
def formats(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sample as CSV (committed), JSONL and Parquet (year an integer column with a null, as pandas writes it)."""
    folder = tmp_path_factory.mktemp("formats")
    df = read_manifest(SAMPLE_MANIFEST)
    year = [int(y) if y else None for y in df["year"]]
    year[3] = None
    records = [{**r, "year": y} for r, y in zip(df.to_dict("records"), year, strict=True)]
    (folder / "m.jsonl").write_text(
        "".join(json.dumps(r) + "\n" + ("\n" if i == 5 else "") for i, r in enumerate(records))
    )
    pq.write_table(pa.Table.from_pylist(records), folder / "m.parquet", row_group_size=100)
    return {"csv": SAMPLE_MANIFEST, "jsonl": folder / "m.jsonl", "parquet": folder / "m.parquet"}


@pytest.fixture(scope="module")
def long_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 rows (past two offset-index blocks) whose quoted cells hold newlines, commas and quotes."""
    path = tmp_path_factory.mktemp("long") / "long.csv"
    rows = [
        {"id": f"p{i}", "title": f'line one\nline "two", {i}' if i % 7 == 0 else f"t{i}", "n": str(i)}
        for i in range(3000)
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_same_rows_as_read_manifest(formats: dict[str, Path], kind: str) -> None:
    expected = read_manifest(formats[kind])
    table = ManifestTable(str(formats[kind]), required=["id", "title"])
    assert table.columns == list(expected.columns)
    assert table.num_rows == len(expected) == 842
    got = pd.concat([chunk for _, chunk in table.chunks(rows=300)])
    assert list(got.index) == list(range(842))
    assert cells(got) == cells(expected)
    if kind == "parquet":  # plain Python values: an integer column with a null stays integer
        assert got["year"].tolist()[:4] == [2010, 2011, 2010, None] == expected["year"].tolist()[:4]


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_chunks_from_a_start_row_equal_the_tail(formats: dict[str, Path], long_csv: Path, kind: str) -> None:
    path = long_csv if kind == "csv" else formats[kind]  # CSV: 3,000 rows, so starts land in later index blocks
    expected = read_manifest(path)[["id", "title"]]
    n = len(expected)
    table = ManifestTable(str(path))
    for start in [0, 1, 99, 100, 101, 841, n - 1, *([1023, 1024, 1025, 2048] if n > 2048 else [])]:
        chunks = list(table.chunks(start=start, rows=128, columns=["id", "title"]))
        assert [first for first, _ in chunks] == list(range(start, n, 128))
        assert all(len(c) == 128 for _, c in chunks[:-1])
        tail = pd.concat([c for _, c in chunks])
        assert list(tail.index) == list(range(start, n)) and cells(tail) == cells(expected[start:])
    assert list(table.chunks(start=n)) == []
    assert cells(table.rows(n - 10, n + 5, ["title"])) == cells(expected[["title"]][n - 10 :])
    assert table.rows(5, 5).shape == (0, len(table.columns))


def test_long_csv_keeps_newlines_inside_quoted_cells(long_csv: Path) -> None:
    table = ManifestTable(str(long_csv))
    assert table.num_rows == 3000  # rows, not the 3,429 lines
    assert table.rows(2100, 2101)["title"].tolist() == ['line one\nline "two", 2100']
    assert table.rows(1024, 1027)["id"].tolist() == ["p1024", "p1025", "p1026"]


def test_jsonl_rows_before_the_start_are_not_decoded(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i:04d}"}) + "\n" for i in range(3000)))
    table = ManifestTable(str(path))  # indexed now
    data = bytearray(path.read_bytes())
    data[0:13] = b"not json !!!!"  # same length: the offsets stay right
    path.write_bytes(bytes(data))
    assert table.rows(2500, 2502)["id"].tolist() == ["p2500", "p2501"]  # seeks past the spoilt row
    with pytest.raises(UserError, match=r"m\.jsonl line 1: invalid JSON"):
        next(table.chunks(start=0))


def write_dataset(fs: fsspec.AbstractFileSystem, folder: str, df: pd.DataFrame) -> None:
    """Three files of about 280 rows in row groups of 50, plus the marker files a writer leaves beside them."""
    fs.makedirs(folder, exist_ok=True)
    for n, part in enumerate([df[:280], df[280:560], df[560:]]):
        with fs.open(f"{folder}/part-{n}.parquet", "wb") as f:
            pq.write_table(pa.Table.from_pandas(part, preserve_index=False), f, row_group_size=50)
    for marker in ["_SUCCESS", ".part-0.parquet.crc", "_metadata"]:
        fs.pipe(f"{folder}/{marker}", b"not parquet")


@pytest.mark.parametrize("where", ["local", "memory"])
def test_parquet_dataset_of_three_files(tmp_path: Path, where: str) -> None:
    df = read_manifest(SAMPLE_MANIFEST)
    url = str(tmp_path / "catalog") if where == "local" else "memory://stream-test/catalog"
    fs, folder = fsspec.core.url_to_fs(url)
    write_dataset(fs, folder, df)
    try:
        table = ManifestTable(url + "/", required=["id"])
        assert table.num_rows == 842 and table.columns == list(df.columns)
        assert cells(table.rows(0, 842)) == cells(df)
        for start in [0, 49, 50, 279, 280, 281, 600]:  # inside a row group, on its border, across files
            tail = pd.concat([c for _, c in table.chunks(start=start, rows=97)])
            assert cells(tail) == cells(df[start:])
        assert cells(table.rows(250, 650)) == cells(df[250:650])
    finally:
        if where == "memory":
            fs.rm(folder, recursive=True)


def test_memory_csv_and_pickled_table(formats: dict[str, Path]) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/stream-test/m.csv", Path(SAMPLE_MANIFEST).read_bytes())
    try:
        table = pickle.loads(pickle.dumps(ManifestTable("memory://stream-test/m.csv")))
        assert cells(table.rows(800, 842)) == cells(read_manifest(SAMPLE_MANIFEST)[800:])
    finally:
        fs.rm("/stream-test", recursive=True)


def test_dataset_files_that_disagree_are_named(tmp_path: Path) -> None:
    folder = tmp_path / "catalog"
    folder.mkdir()
    pq.write_table(pa.table({"id": ["a"], "year": [2010]}), folder / "a.parquet")
    pq.write_table(pa.table({"id": ["b"], "year": ["2011"]}), folder / "b.parquet")
    with pytest.raises(UserError, match=r"column 'year' is int64 in .*a\.parquet and string in .*b\.parquet"):
        ManifestTable(str(folder))
    pq.write_table(pa.table({"id": ["b"], "year": [None]}), folder / "b.parquet")  # an all-null column is fine
    assert ManifestTable(str(folder)).rows(0, 2)["year"].tolist() == [2010, None]
    pq.write_table(pa.table({"id": ["b"]}), folder / "b.parquet")
    with pytest.raises(UserError, match=r"a\.parquet has column 'year' and .*b\.parquet has not"):
        ManifestTable(str(folder))


def test_dict_cells_are_refused_with_file_row_and_column(tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": ["a", "b", "c"], "size": [None, {"w": 1}, {"w": 2}]}), tmp_path / "m.parquet")
    table = ManifestTable(str(tmp_path / "m.parquet"))
    assert table.rows(0, 3, ["id"])["id"].tolist() == ["a", "b", "c"]  # a column not read is not checked
    with pytest.raises(UserError, match=r"m\.parquet row 1, column 'size': a struct<w: int64> cell"):
        table.rows(0, 3)
    (tmp_path / "m.jsonl").write_text('{"id": "a"}\n{"id": "b", "photos": [{"url": "x"}]}\n')
    with pytest.raises(UserError, match=r"m\.jsonl line 2 \(row 1\), column 'photos': a dict cell"):
        ManifestTable(str(tmp_path / "m.jsonl"))


def test_list_cells_stay_lists(tmp_path: Path) -> None:
    photos = [["a.jpg", "b.jpg"], [], None, ["c.jpg"]]
    pq.write_table(pa.table({"id": list("abcd"), "photos": photos}), tmp_path / "m.parquet")
    assert ManifestTable(str(tmp_path / "m.parquet")).rows(0, 4)["photos"].tolist() == photos
    lines = [{"id": "a", "photos": ["a.jpg", "b.jpg"]}, {"id": "b", "photos": "c.jpg"}, {"id": "c", "title": "t"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    got = ManifestTable(str(tmp_path / "m.jsonl")).rows(0, 3)
    assert list(got.columns) == ["id", "photos", "title"]
    assert got["photos"].tolist() == [["a.jpg", "b.jpg"], "c.jpg", None]


def test_lazy_rows_random_sequential_and_pickled(formats: dict[str, Path]) -> None:
    ids = read_manifest(SAMPLE_MANIFEST)["id"].tolist()
    table = ManifestTable(str(formats["csv"]))
    rows = LazyRows(table, as_record, chunk_rows=100, columns=["id"])
    assert len(rows) == 842
    assert [rows[i] for i in [841, 0, 450, 99, 100, -1]] == [(i % 842, ids[i]) for i in [841, 0, 450, 99, 100, -1]]
    assert list(rows) == list(enumerate(ids))
    assert rows[10:13] == [(10, ids[10]), (11, ids[11]), (12, ids[12])]
    with pytest.raises(IndexError):
        rows[842]
    clone = pickle.loads(pickle.dumps(rows))
    assert clone[777] == (777, ids[777]) and len(clone._cache) == 1


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_scan_ids_hash_equals_ids_sha256(formats: dict[str, Path], kind: str) -> None:
    scan = scan_ids(ManifestTable(str(formats[kind])), "id", chunk_rows=100)
    ids = [clean_value(i) for i in read_manifest(SAMPLE_MANIFEST)["id"]]
    assert scan.ids_sha256 == ids_sha256(ids) and scan.num_rows == 842
    assert scan.empty_rows == [] and scan.duplicates == []


def test_scan_ids_finds_empty_and_repeated_ids(tmp_path: Path) -> None:
    ids = ["a", "b", " a ", "", "c", "NA", "b", "b", "d"]
    pq.write_table(pa.table({"id": ids, "x": range(len(ids))}), tmp_path / "m.parquet", row_group_size=2)
    scan = scan_ids(ManifestTable(str(tmp_path / "m.parquet")), "id", chunk_rows=3)
    assert scan.ids_sha256 == ids_sha256(["a", "b", "a", "", "c", "", "b", "b", "d"])
    assert scan.empty_rows == [3, 5]
    assert scan.duplicates == [(2, "a", 0), (6, "b", 1), (7, "b", 1)]
    assert [p["reason"] for p in scan.problems("m")][:2] == [
        "m row 2: duplicate id 'a' (first at row 0)",
        "m row 3: an empty id",
    ]
    pq.write_table(pa.table({"id": [["a"], ["b"]]}), tmp_path / "lists.parquet")
    with pytest.raises(UserError, match=r"lists\.parquet row 0, column 'id': a list cell"):
        scan_ids(ManifestTable(str(tmp_path / "lists.parquet")), "id")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("m.txt", "id\n1\n", r"m\.txt: unknown format '\.txt'"),
        ("m.csv", "id,title\n", r"m\.csv is empty"),
        ("m.csv", "id,title\n1,a\n2,b,c\n", r"m\.csv line 3: 3 fields, the header has 2"),
        ("m.jsonl", "\n\n", r"m\.jsonl is empty"),
        ("m.jsonl", '{"id": 1}\n{"id": 2\n', r"m\.jsonl line 2: invalid JSON"),
        ("m.jsonl", '{"id": 1}\n[1, 2]\n', r"m\.jsonl line 2: expected a JSON object, got list"),
        ("m.csv", "id,title\n1,a\n", r"m\.csv is missing column\(s\) \['image'\]; columns present: \['id', 'title'\]"),
    ],
)
def test_bad_manifests_get_one_line_errors(tmp_path: Path, name: str, text: str, message: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(UserError, match=message) as err:
        ManifestTable(str(tmp_path / name), required=["id", "image"] if "image" in message else ["id"])
        ManifestTable(str(tmp_path / name)).num_rows  # noqa: B018 - CSV rows are read on first need
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="manifest not found"):
        ManifestTable(str(tmp_path / "absent.parquet"))


# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child of the test process would report the
# test process's own peak.
PEAK = """
import resource, sys
from multimodal.data.stream import ManifestTable, scan_ids
table = ManifestTable(sys.argv[1], required=["id"])
rows = sum(len(chunk) for _, chunk in table.chunks())
scan = scan_ids(table, "id")
assert rows == scan.num_rows == table.num_rows and not scan.duplicates, (rows, scan)
try:
    status = open("/proc/self/status").read()
    peak_kb = int(status.split("VmHWM:")[1].split()[0])
except OSError:
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(peak_kb // 1024, "torch" in sys.modules)
"""


def test_memory_stays_flat_over_a_million_rows(tmp_path: Path) -> None:
    small = write_repeated_manifest(SAMPLE_MANIFEST, tmp_path / "10k.parquet", 10_000, 65_536)
    big = write_repeated_manifest(SAMPLE_MANIFEST, tmp_path / "1m.parquet", 1_000_000, 65_536)
    assert pq.ParquetFile(big).metadata.num_row_groups == 16
    peaks = {}
    for path in [small, big]:
        run = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(PEAK), str(path)], cwd=ROOT, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr[-2000:]
        mb, torch_loaded = run.stdout.split()
        peaks[path.name] = int(mb)
        assert torch_loaded == "False"
    print(f"peak RSS: 10k rows {peaks['10k.parquet']} MB, 1M rows {peaks['1m.parquet']} MB")
    assert peaks["1m.parquet"] <= peaks["10k.parquet"] + 60, peaks
