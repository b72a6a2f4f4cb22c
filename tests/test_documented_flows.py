"""The README's "Search and captioning" commands, run as written.

The command lines are read out of README.md's section (its indented block), not retyped: a change there that breaks
a documented flow fails here. Only placeholders are substituted: ``<ckpt>`` by a tiny checkpoint of the task the
command needs (a retriever for ``export``, a captioner for ``caption``), and the files the commands assume exist are
made first: ``catalog.csv`` (90 products of the committed sample, absolute image paths), ``photos/`` (four sample
photos), and for the live update ``emb_new/`` (the README's own export line run on five new products) and
``ids_gone.txt`` (three catalogue ids). Every command runs in a scratch working folder, in this process.

Skipped: the two ``multimodal fit`` lines. They train the documented configs (pretrained EfficientNet-Lite0 and
MiniLM on the 842 sample products, several epochs): minutes on a CPU, where the rest of this test takes seconds.
Training itself is covered by the tiny configs (``tests/conftest.py``'s ``trained``).
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, SAMPLE_IMAGES, run_cli

from multimodal.errors import UserError
from multimodal.search.export import metadata_columns

SECTION = "## Search and captioning"


def documented_commands() -> list[list[str]]:
    """Each ``multimodal ...`` line of the README's section, as the shell would split it (comments dropped)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split(f"\n{SECTION}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for line in section.splitlines() if line.startswith("    multimodal ")]
    return [shlex.split(line, comments=True)[1:] for line in lines]


def substituted(command: list[str], checkpoints: dict[str, Path]) -> list[str]:
    task = {"export": "retriever", "caption": "captioner"}.get(command[0])
    return [str(checkpoints[task]) if word == "<ckpt>" else word for word in command]


def json_lines(out: str) -> list[dict]:
    """The JSON lines of a command's output (the progress bar, as written, shares stdout)."""
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.fixture
def workdir(tmp_path: Path, sample_df: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> pd.DataFrame:
    """A scratch working folder holding the files the documented commands name; returns the catalogue."""
    monkeypatch.chdir(tmp_path)
    absolute = sample_df.assign(image=[str(SAMPLE_IMAGES / name) for name in sample_df["image"]])
    catalogue = absolute.iloc[::9].head(90)
    catalogue.to_csv("catalog.csv", index=False)
    absolute.iloc[4::9].head(5).to_csv("new_products.csv", index=False)
    Path("ids_gone.txt").write_text("\n".join(catalogue["id"].iloc[[2, 30, 60]]) + "\n")
    Path("photos").mkdir()
    for name in sample_df["image"].head(4):
        shutil.copy(SAMPLE_IMAGES / name, Path("photos") / name)
    return catalogue


def test_readme_search_and_captioning_commands_run_as_written(
    trained: dict[str, Path], workdir: pd.DataFrame, capsys: pytest.CaptureFixture[str]
) -> None:
    commands = documented_commands()
    assert [c[0] for c in commands] == ["fit", "export", "index", "search", "search", "index", "fit", "caption"]
    fit, export, build, dense, hybrid, update, _, caption = (substituted(c, trained) for c in commands)

    summary = json_lines(run_cli(export, capsys))[-1]
    assert summary["complete"] and summary["count"] == 90
    built = json_lines(run_cli(build, capsys))[-1]
    assert built["count"] == 90 and built["lexical"]

    results = json_lines(run_cli(dense, capsys))
    assert [r["rank"] for r in results] == list(range(1, 11))
    assert set(results[0]) >= {"id", "score", "title", "gender", "year", "articleType", "usage"}

    results = json_lines(run_cli(hybrid, capsys))
    matching = workdir[(workdir["gender"] == "Men") & (workdir["year"].astype(float) >= 2012)]
    assert len(results) == min(10, len(matching)) and {r["id"] for r in results} <= set(matching["id"])
    assert all(r["gender"] == "Men" and int(r["year"]) >= 2012 for r in results)
    lexical = json_lines(run_cli([*hybrid[:4], "--mode", "lexical", "-k", "3"], capsys))
    words = set(hybrid[hybrid.index("--text") + 1].lower().split())  # BM25 over the stored titles
    assert lexical and all(words & set(r["title"].lower().split()) for r in lexical)

    new = [w if w not in ("catalog.csv", "emb/") else {"catalog.csv": "new_products.csv"}.get(w, "emb_new/")
           for w in export]  # fmt: skip
    run_cli(new, capsys)
    updated = json_lines(run_cli(update, capsys))[-1]
    assert (updated["added"], updated["removed"], updated["count"]) == (5, 3, 92)
    gone = set(Path("ids_gone.txt").read_text().split())
    title = pd.read_csv("new_products.csv", dtype=str)["title"][0]
    found = json_lines(run_cli(["search", "index/", "--text", title, "--mode", "lexical", "-k", "92"], capsys))
    assert title in [r["title"] for r in found[:3]] and not gone & {r["id"] for r in found}

    run_cli(caption, capsys)
    rows = json_lines(Path("captions.jsonl").read_text())
    assert [r["id"] for r in rows] == sorted(Path(n).stem for n in Path("photos").iterdir())
    assert all(isinstance(r["caption"], str) for r in rows)
    assert fit[:2] == ["fit", "--config"]  # the skipped training lines (see the module's docstring)


def test_export_keeps_every_column_that_can_be_filtered() -> None:
    """The default columns: all but the id and image columns, a column named like the table's own, and a column
    of lists (a Parquet manifest's); ``--columns`` narrows, ``--columns`` alone stores none."""
    df = pd.DataFrame({"sku": ["a", "b"], "photo": ["a.jpg", "b.jpg"], "title": ["x", "y"], "year": [2012, None],
                       "image_path": ["p", "q"], "sizes": [["s"], ["m", "l"]]}, dtype=object)  # fmt: skip
    table, kept, dropped = metadata_columns(df, "sku", "photo", None, "cat.parquet")
    assert kept == ["title", "year"] and table["year"].tolist() == ["2012", None]
    assert len(dropped) == 2 and "'image_path'" in dropped[0] and "row 0, column 'sizes'" in dropped[1]
    assert metadata_columns(df, "sku", "photo", ["year", "title"], "cat.parquet")[1] == ["year", "title"]
    assert metadata_columns(df, "sku", "photo", [], "cat.parquet")[1] == []
    with pytest.raises(UserError, match="stores the id and image_path anyway"):
        metadata_columns(df, "sku", "photo", ["id"], "cat.parquet")
