"""`multimodal caption`: a folder or a manifest in, JSONL out with per-item errors, resumed after kill -9 (the
shared job path is tested for every task in test_jobs.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import kill_9_after_blocks

from multimodal.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY_CAPTION = ROOT / "configs" / "captioning" / "tiny.yaml"
SAMPLE = ROOT / "examples" / "fashion-products"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny captioner fitted for 2 steps by `multimodal fit`, so its checkpoint stores the config."""
    root = tmp_path_factory.mktemp("fit")
    main(["fit", "--config", str(TINY_CAPTION), "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
          "--trainer.enable_checkpointing", "true", "--trainer.default_root_dir", str(root)])  # fmt: skip
    (ckpt,) = list(root.rglob("*.ckpt"))
    return ckpt


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """10 real photos (one in a subfolder) and one corrupt file."""
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    names = sorted(p.name for p in (SAMPLE / "images").iterdir())[:10]
    for name in names[:9]:
        shutil.copy(SAMPLE / "images" / name, folder / name)
    shutil.copy(SAMPLE / "images" / names[9], folder / "more" / names[9])
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_folder_job_writes_one_line_per_image_and_errors_inline(checkpoint: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "captions.jsonl"
    main(["caption", "--ckpt_path", str(checkpoint), "--input", str(photos), "--out", str(out), "--batch_size", "4",
          "--max_new_tokens", "5", "--no_progress"])  # fmt: skip
    lines = _lines(out)
    ids = sorted(p.relative_to(photos).with_suffix("").as_posix() for p in photos.rglob("*.jpg"))
    assert [x["id"] for x in lines] == ids  # sorted file order, each once
    (bad,) = [x for x in lines if "error" in x]
    assert bad["id"] == "broken" and "broken.jpg" in bad["error"] and "caption" not in bad
    good = [x for x in lines if "error" not in x]
    assert all(x["caption"] and isinstance(x["score"], float) and x["image"].endswith(".jpg") for x in good)
    assert any(x["id"].startswith("more/") for x in good)


def test_sigkilled_cli_job_resumes_without_duplicates(checkpoint: Path, photos: Path, tmp_path: Path) -> None:
    out, full = tmp_path / "killed.jsonl", tmp_path / "full.jsonl"
    args = ["caption", "--ckpt_path", str(checkpoint), "--input", str(photos), "--out", str(out), "--batch_size", "1",
            "--block_size", "1", "--max_new_tokens", "20", "--num_beams", "2", "--no_progress"]  # fmt: skip
    assert 0 < kill_9_after_blocks(args, tmp_path / ".killed.jsonl.job") and not out.exists()
    main(args)
    main([a if a != str(out) else str(full) for a in args])
    ids = [x["id"] for x in _lines(out)]
    assert len(ids) == 11 and len(set(ids)) == 11
    assert out.read_text() == full.read_text()


def test_manifest_input_with_prompt_columns_and_missing_images(checkpoint: Path, tmp_path: Path) -> None:
    df = pd.read_csv(SAMPLE / "metadata.csv", dtype=str, keep_default_na=False).head(5)
    df.loc[1, "image"] = "nowhere.jpg"
    df.loc[2, "image"] = ""
    df.loc[3, "id"] = df.loc[0, "id"]  # duplicate id: a line of its own, with an error naming the first row
    manifest = tmp_path / "catalog.jsonl"
    df.to_json(manifest, orient="records", lines=True)
    out = tmp_path / "out.jsonl"
    main(["caption", "--ckpt_path", str(checkpoint), "--input", str(manifest), "--image_root", str(SAMPLE / "images"),
          "--out", str(out), "--max_new_tokens", "4", "--prompt", "describe", "--do_sample", "--top_k", "5",
          "--seed", "3", "--no_progress"])  # fmt: skip
    lines = _lines(out)
    assert [x["id"] for x in lines] == df["id"].tolist()
    assert "not found" in lines[1]["error"] and "no usable image" in lines[2]["error"]
    assert lines[3]["error"].endswith("(first at row 0)") and "caption" not in lines[3]
    again = tmp_path / "again.jsonl"  # sampling with a seed: the same captions on a re-run
    main(["caption", "--ckpt_path", str(checkpoint), "--input", str(manifest), "--image_root", str(SAMPLE / "images"),
          "--out", str(again), "--max_new_tokens", "4", "--prompt", "describe", "--do_sample", "--top_k", "5",
          "--seed", "3", "--no_progress"])  # fmt: skip
    assert [x.get("caption") for x in _lines(again)] == [x.get("caption") for x in lines]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max_new_tokens", "0"], "max_new_tokens must be positive"),
        (["--batch_size", "0"], "batch_size must be positive"),
        (["--num_beams", "0"], "num_beams must be positive"),
    ],
)
def test_bad_arguments(checkpoint: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                       args: list[str], message: str) -> None:  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "caption",
                "--ckpt_path",
                str(checkpoint),
                "--input",
                str(photos),
                "--out",
                str(tmp_path / "o.jsonl"),
                *args,
            ]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


def test_empty_folder_and_foreign_checkpoint(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    empty, out = str(tmp_path / "empty"), str(tmp_path / "o.jsonl")
    args = ["caption", "--ckpt_path", str(checkpoint), "--input", empty, "--out", out]
    with pytest.raises(SystemExit):
        main(args)
    assert "no image files" in capsys.readouterr().err
    tagger = tmp_path / "tagger.ckpt"
    config = {"model": {"class_path": "multimodal.tagging.tagger.ProductTagger", "init_args": {}}}
    torch.save({"multimodal_config": yaml.safe_dump(config), "state_dict": {}}, tagger)
    with pytest.raises(SystemExit) as exc:
        main([*args[:2], str(tagger), *args[3:]])
    assert exc.value.code == 2
    assert "ProductTagger checkpoint, not a ProductCaptioner" in capsys.readouterr().err
