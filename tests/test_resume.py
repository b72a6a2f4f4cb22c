"""Exact resume of `fit`: a run killed with SIGKILL mid-epoch and resumed with `--ckpt_path` ends with the same
weights as an uninterrupted run (max abs difference 0 on the CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import ROOT, SAMPLE_IMAGES, TINY_CONFIGS

from multimodal.cli import main

STEPS = 16  # 7 batches per epoch: the kill lands inside the second epoch


def fit_args(root: Path, manifest: Path) -> list[str]:
    checkpoints = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                   "init_args": {"dirpath": str(root / "ck"), "every_n_train_steps": 1, "save_top_k": -1,
                                 "filename": "{step}"}}  # fmt: skip
    return ["fit", "--config", str(TINY_CONFIGS["tagger"]), "--data.init_args.manifest", str(manifest),
            "--data.init_args.image_root", str(SAMPLE_IMAGES), "--data.init_args.batch_size", "8",
            "--trainer.max_steps", str(STEPS), "--trainer.max_epochs", "5", "--trainer.limit_val_batches", "0",
            "--trainer.num_sanity_val_steps", "0", "--trainer.enable_checkpointing", "true",
            "--trainer.default_root_dir", str(root), "--trainer.callbacks", json.dumps([checkpoints])]  # fmt: skip


@pytest.mark.slow
def test_kill_9_mid_epoch_and_resume_equals_an_uninterrupted_fit(tmp_path: Path, sample_df: pd.DataFrame) -> None:
    manifest = tmp_path / "m.csv"
    sample_df.iloc[::13].head(60).drop(columns=["split"], errors="ignore").to_csv(manifest, index=False)
    assert_killed_and_resumed_equals_uninterrupted(tmp_path, lambda root: fit_args(root, manifest))


def assert_killed_and_resumed_equals_uninterrupted(tmp_path: Path, args: Callable[[Path], list[str]]) -> None:
    """``multimodal <args(root)>`` run whole, then in a process SIGKILLed after step 11 and resumed from step 10
    here: the two runs' final weights are equal."""
    main(args(tmp_path / "full"))
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread, as here: the same float sums
    proc = subprocess.Popen([sys.executable, "-m", "multimodal.cli", *args(killed)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (killed / "ck" / "step=11.ckpt").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "ck" / f"step={STEPS}.ckpt").exists()  # it was killed before the end
    main([*args(tmp_path / "resumed"), "--ckpt_path", str(killed / "ck" / "step=10.ckpt")])
    full = torch.load(tmp_path / "full" / "ck" / f"step={STEPS}.ckpt", map_location="cpu", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "ck" / f"step={STEPS}.ckpt", map_location="cpu", weights_only=True)
    assert full["global_step"] == resumed["global_step"] == STEPS
    diff = max(float((full["state_dict"][k].float() - v.float()).abs().max()) for k, v in resumed["state_dict"].items())
    assert diff == 0.0
