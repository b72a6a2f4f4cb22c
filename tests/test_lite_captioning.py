"""Captioning on the torch-free runtime (:mod:`multimodal.lite.captioning`): in one subprocess where torch,
torchvision, lightning, transformers, timm and open_clip cannot be imported, an ONNX export of the tiny captioner
runs the Python API (trained prompt and a given one) and ``multimodal caption`` to JSONL; the greedy captions equal
the eager captioner's (scores within 1e-4), a product without a photo is an error row in both, and an option the
decoding loop does not follow is refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import BLOCK_HEAVY, ROOT, SAMPLE_IMAGES, SAMPLE_MANIFEST

import multimodal
from multimodal.onnx.export import export_model

FP32 = 1e-4  # |ONNX Runtime - eager| allowed in fp32
NEW_TOKENS = 12
PROMPT = "a photo of"

BLOCKED = (
    BLOCK_HEAVY
    + """
import json
import pandas as pd
import multimodal
from multimodal.cli import main
from multimodal.errors import UserError
folder, manifest, out, tokens, prompt = sys.argv[1:6]
df = pd.read_csv(manifest, dtype=str)
captioner = multimodal.load(folder, batch_size=4)
result = {"api": captioner.with_options(max_new_tokens=int(tokens)).run(df)}
result["prompted"] = captioner.with_options(prompt=prompt, max_new_tokens=int(tokens)).run(df)
try:
    captioner.with_options(top_p=0.9)
except UserError as err:
    result["refused"] = str(err)
main(["caption", "--ckpt_path", folder, "--data.manifest", manifest, "--out", f"{out}/captions.jsonl",
      "--max_new_tokens", tokens, "--batch_size", "4", "--no_progress"])
result["heavy"] = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
json.dump(result, open(f"{out}/result.json", "w"))
"""
)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path]:
    """8 committed products with absolute photo paths, one without a photo, and the same rows as a manifest."""
    df = pd.read_csv(SAMPLE_MANIFEST, dtype=str).iloc[::41].head(8).reset_index(drop=True)
    df["image"] = [str(SAMPLE_IMAGES / name) for name in df["image"]]
    df.loc[3, "image"] = None
    manifest = tmp_path_factory.mktemp("lite-caption-input") / "m.csv"
    df.to_csv(manifest, index=False)
    return df, manifest


def _same(lite: list[dict], eager: list[dict]) -> None:
    """Rows of the same ids and errors, equal captions and scores within ``FP32``."""
    assert [r["id"] for r in lite] == [r["id"] for r in eager]
    assert [("error" in r) for r in lite] == [("error" in r) for r in eager] == [i == 3 for i in range(8)]
    ok = [i for i, r in enumerate(eager) if "error" not in r]
    assert [lite[i]["caption"] for i in ok] == [eager[i]["caption"] for i in ok]
    np.testing.assert_allclose([lite[i]["score"] for i in ok], [eager[i]["score"] for i in ok], atol=FP32)


def test_captions_without_torch_equal_eager(
    trained: dict[str, Path], sample: tuple[pd.DataFrame, Path], tmp_path: Path
) -> None:
    df, manifest = sample
    folder = tmp_path / "captioner_onnx"
    export_model(trained["captioner"], folder, progress=False)
    out = tmp_path / "out"
    out.mkdir()
    args = [str(folder), str(manifest), str(out), str(NEW_TOKENS), PROMPT]
    proc = subprocess.run([sys.executable, "-c", BLOCKED, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["heavy"] == []

    eager = multimodal.load(trained["captioner"], batch_size=4)
    expected = eager.with_options(max_new_tokens=NEW_TOKENS).run(df)
    assert any(r.get("caption") for r in expected)  # the tiny model writes something to compare
    _same(result["api"], expected)
    prompted = eager.with_options(prompt=PROMPT, max_new_tokens=NEW_TOKENS).run(df)
    assert [r.get("caption") for r in prompted] != [r.get("caption") for r in expected]  # the prompt is read
    _same(result["prompted"], prompted)
    assert "top_p" in result["refused"] and "\n" not in result["refused"]

    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    _same(rows, expected)
    assert [r["image"] for r in rows] == [None if pd.isna(p) else p for p in df["image"]]
