"""Loading and using a trained captioner says nothing a user cannot act on: no transformers load report or
"checkpoint seem corrupted" line for the LM head an encoder checkpoint never had, no deprecation warning from
``generate``, no Lightning adverts; a pretrained weight that is really missing is still one warning line."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLE_IMAGES, SAMPLE_MANIFEST, TINY_CONFIGS

NOISE = ("warning", "missing", "corrupted", "load report", "deprecated", "tip:", "loading weights")


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "always"}  # every warning shown, once each
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def pretrained_captioner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One step of the tiny captioner with the real pretrained MiniLM as its decoder (its LM head is new)."""
    root = tmp_path_factory.mktemp("quiet")
    done = run([sys.executable, "-m", "multimodal.cli", "fit", "--config", str(TINY_CONFIGS["captioner"]),
                "--model.language_model.init_args.random_init", "false",
                "--model.language_model.init_args.config_overrides", "{}",
                "--data.init_args.manifest", str(SAMPLE_MANIFEST), "--data.init_args.image_root", str(SAMPLE_IMAGES),
                "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
                "--trainer.enable_checkpointing", "true", "--trainer.default_root_dir", str(root)])  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (ckpt,) = root.rglob("*.ckpt")
    return ckpt


def noise_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if any(word in line.lower() for word in NOISE)]


def test_loading_and_captioning_in_python_prints_nothing(pretrained_captioner: Path) -> None:
    photo = SAMPLE_IMAGES / sorted(os.listdir(SAMPLE_IMAGES))[0]
    script = (
        "import multimodal\n"
        f"c = multimodal.load({str(pretrained_captioner)!r})\n"
        f"out = c.caption([{str(photo)!r}], prompt='product title')\n"
        "print(out.iloc[0]['caption'])\n"
    )
    done = run([sys.executable, "-c", script])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip(), "no caption written"
    assert done.stderr.strip() == "", done.stderr[-2000:]


def test_caption_command_prints_no_warning(pretrained_captioner: Path, tmp_path: Path, sample_df) -> None:
    manifest, out = tmp_path / "new.csv", tmp_path / "captions.jsonl"
    sample_df.head(6).to_csv(manifest, index=False)
    done = run([sys.executable, "-m", "multimodal.cli", "caption", "--ckpt_path", str(pretrained_captioner),
                "--input", str(manifest), "--image_root", str(SAMPLE_IMAGES), "--out", str(out),
                "--batch_size", "4"])  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.exists()
    assert noise_in(done.stderr) == [], done.stderr[-2000:]


def test_a_really_missing_pretrained_weight_is_one_warning_line(caplog: pytest.LogCaptureFixture) -> None:
    from encoders.hf_loading import report_missing

    with caplog.at_level(logging.DEBUG, logger="encoders.hf_loading"):
        report_missing("some/model", ["cls.predictions.bias", "encoder.layer.0.attention.self.query.weight"], ["cls."])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "encoder.layer.0.attention.self.query.weight" in warnings[0].getMessage()
    assert "cls.predictions.bias" not in warnings[0].getMessage()
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) == 1 and "cls.predictions.bias" in debug[0].getMessage()
