"""Long jobs log their progress when stderr is a file (nohup, cron, CI): lines with done / total, rate and ETA at a
bounded rate, instead of a bar that a log receives only when it ends."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY_CONFIGS

from multimodal.progress import ProgressLog, duration

LINE = re.compile(
    r"^(?P<desc>.+): (?P<done>\d+)/(?P<total>\d+) \(\d+%\), [\d.e+]+ \w+/s, elapsed \d+:\d\d, ETA \d+:\d\d"
)


def command_log(args: list[str], tmp_path: Path, seconds: str = "0") -> str:
    """Run ``multimodal <args>`` with stderr redirected to a file; returns that file's text."""
    log = tmp_path / "stderr.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MULTIMODAL_PROGRESS_SECONDS": seconds}
    with log.open("w") as err:
        done = subprocess.run([sys.executable, "-m", "multimodal.cli", *args], cwd=ROOT, env=env, stderr=err,
                              stdout=subprocess.DEVNULL, timeout=300)  # fmt: skip
    text = log.read_text()
    assert done.returncode == 0, text[-2000:]
    return text


def progress_lines(text: str, desc: str) -> list[re.Match[str]]:
    return [m for line in text.splitlines() if (m := LINE.match(line)) and m["desc"].startswith(desc)]


@pytest.mark.parametrize("command", ["predict", "export"])
def test_batch_jobs_log_progress_lines_with_an_eta(command: str, trained, job_input, tmp_path: Path) -> None:
    manifest, images, _ = job_input
    task = "tagger" if command == "predict" else "retriever"
    out = tmp_path / ("out.jsonl" if command == "predict" else "vectors")
    text = command_log([command, "--ckpt_path", str(trained[task]), "--input", str(manifest), "--image_root",
                        str(images), "--out", str(out), "--batch_size", "2"], tmp_path)  # fmt: skip
    lines = progress_lines(text, "Predicting")
    assert len(lines) >= 2, text[-2000:]
    assert [int(m["done"]) for m in lines] == sorted(int(m["done"]) for m in lines)
    assert int(lines[-1]["done"]) == int(lines[-1]["total"]) == 6  # 12 rows in batches of 2
    assert "\r" not in text and "━" not in text  # no redrawn bar in a log file


def test_fit_logs_epochs_with_loss_and_eta(tmp_path: Path, job_input) -> None:
    from conftest import SAMPLE_IMAGES, SAMPLE_MANIFEST

    text = command_log(["fit", "--config", str(TINY_CONFIGS["tagger"]), "--data.init_args.manifest",
                        str(SAMPLE_MANIFEST), "--data.init_args.image_root", str(SAMPLE_IMAGES),
                        "--trainer.enable_progress_bar", "true", "--trainer.max_steps", "3",
                        "--trainer.limit_val_batches", "1", "--trainer.default_root_dir", str(tmp_path / "run")],
                       tmp_path)  # fmt: skip
    train = progress_lines(text, "Training epoch 0")
    assert train and "loss" in train[-1]["desc"], text[-2000:]


def test_the_rate_of_lines_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MULTIMODAL_PROGRESS_SECONDS", "3600")
    stream = io.StringIO()
    log = ProgressLog(1000, "rows", unit="row", stream=stream)
    for _ in range(1000):
        log.update()
    log.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # the first update and the close, nothing in between
    assert lines[-1].startswith("rows: 1000/1000 (100%)")
    assert duration(3725) == "1:02:05" and duration(65) == "1:05"
