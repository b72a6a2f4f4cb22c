"""Parameter-efficient fine-tuning through peft: ``trainable: {lora: ...}`` in YAML trains only the adapters of a
tower, the checkpoint holds them, ``multimodal.load`` merges them (outputs equal to the unmerged model) and the ONNX
export carries the merged weights; bad adapter settings are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SAMPLE_IMAGES, SAMPLE_MANIFEST, fit_tiny, write_manifest

import multimodal
from encoders.adapters import adapter_config, adapter_parameters, has_adapters, merge_adapters
from encoders.errors import ConfigError
from multimodal.loading import build_model, load, read_checkpoint, stored_config

TEXT_LORA = json.dumps({"lora": {"r": 4, "alpha": 8}})
VISION_LORA = json.dumps({"lora": {"r": 2, "target_modules": ["conv_pw", "conv_pwl"]}})  # the CNN's 1x1 convs
LM_DORA = json.dumps({"dora": {"r": 4}})


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    df = pd.read_csv(SAMPLE_MANIFEST, dtype=str, keep_default_na=False).iloc[::29].head(24).assign(split="train")
    write_manifest(df, root / "train.csv")
    return root / "train.csv"


@pytest.fixture(scope="module")
def lora_tagger(catalogue: Path) -> Path:
    """A tiny tagger, LoRA on the text tower's linear layers and on the photo tower's 1x1 convolutions, 3 steps."""
    return fit_tiny("tagger", catalogue.parent / "tagger", catalogue, SAMPLE_IMAGES, 3,
                    "--model.init_args.text.init_args.trainable", TEXT_LORA,
                    "--model.init_args.vision.init_args.trainable", VISION_LORA)  # fmt: skip


@pytest.fixture(scope="module")
def dora_captioner(catalogue: Path) -> Path:
    """A tiny captioner, DoRA on the language model (cross-attention layers added and fully trained), 3 steps."""
    return fit_tiny("captioner", catalogue.parent / "captioner", catalogue, SAMPLE_IMAGES, 3,
                    "--model.init_args.language_model.init_args.trainable", LM_DORA)  # fmt: skip


def _initial_model(ckpt: Path) -> torch.nn.Module:
    """The model as ``fit`` built it before its first step: the stored config under the run's seed."""
    import lightning as L

    config = stored_config(read_checkpoint(ckpt), ckpt)
    L.seed_everything(config.get("seed_everything", 0), verbose=False)
    return build_model(config["model"], ckpt)


def _only_adapters_changed(ckpt: Path, towers: tuple[str, ...]) -> None:
    trained = read_checkpoint(ckpt)["state_dict"]
    initial = _initial_model(ckpt).state_dict()
    for tower in towers:
        names = [n for n in trained if n.startswith(f"{tower}.")]
        adapters = [n for n in names if ".lora_" in n]
        assert adapters, f"no adapter weights of {tower} in the checkpoint"
        changed = {n for n in names if not torch.equal(trained[n], initial[n])}
        assert changed and changed <= set(adapters) | {n for n in names if "crossattention" in n}, sorted(
            changed - set(adapters)
        )[:5]


def test_lora_tagger_trains_only_its_adapters_and_predicts_the_same_merged(lora_tagger: Path, tmp_path: Path) -> None:
    _only_adapters_changed(lora_tagger, ("text", "vision"))
    apart = load(lora_tagger, merge_adapters=False).model
    assert has_adapters(apart.text) and has_adapters(apart.vision)
    assert all(p.requires_grad for p in adapter_parameters(apart))
    towers = [*apart.text.named_parameters(), *apart.vision.named_parameters()]
    assert {n for n, p in towers if p.requires_grad} == {n for n, p in towers if ".lora_" in n}
    merged = load(lora_tagger).model
    assert not has_adapters(merged) and not any(".lora_" in n for n in merged.state_dict())

    df = pd.read_csv(SAMPLE_MANIFEST, dtype=str).iloc[1::37].head(12).reset_index(drop=True)
    df["image"] = [str(SAMPLE_IMAGES / name) for name in df["image"]]
    p = multimodal.load(lora_tagger, merge_adapters=False).predict_proba(df)
    q = multimodal.load(lora_tagger).predict_proba(df)
    for key in p:
        np.testing.assert_allclose(q[key].to_numpy(), p[key].to_numpy(), atol=1e-5, rtol=0)
    again = multimodal.load(lora_tagger).predict_proba(df)  # a second load: the same numbers
    assert all(again[key].equals(q[key]) for key in q)

    # The ONNX export carries the merged towers (no adapter nodes) and matches the unmerged eager model.
    from multimodal.onnx.export import export_model

    out = tmp_path / "onnx"
    export_model(lora_tagger, out, progress=False)
    onnx = multimodal.load(out).predict_proba(df)
    for key in p:
        np.testing.assert_allclose(onnx[key].to_numpy(), p[key].to_numpy(), atol=1e-4, rtol=0)
    import onnx as onnx_lib

    graph = onnx_lib.load(str(out / "tagger.onnx"), load_external_data=False).graph
    assert not any("lora" in init.name.lower() for init in graph.initializer)


def test_dora_captioner_trains_only_its_adapters_and_captions_the_same_merged(dora_captioner: Path) -> None:
    _only_adapters_changed(dora_captioner, ("text",))  # the language model is the task's text tower
    apart = load(dora_captioner, merge_adapters=False).model
    merged = load(dora_captioner).model
    assert has_adapters(apart.lm) and not has_adapters(merged.lm)
    torch.manual_seed(0)
    pixels = torch.rand(3, 3, 64, 64)
    ids = torch.full((3, 1), apart.lm.bos_id)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        vision = apart.encode_images(pixels)
        labels = torch.randint(1000, 2000, (3, 6))
        torch.testing.assert_close(
            merged.logits(vision, labels, torch.ones_like(labels)),
            apart.logits(vision, labels, torch.ones_like(labels)),
            atol=1e-5,
            rtol=0,
        )
    a = apart.generate(pixels, ids, mask, max_new_tokens=6)
    b = merged.generate(pixels, ids, mask, max_new_tokens=6)
    assert a.texts == b.texts and a.scores == pytest.approx(b.scores, abs=1e-5)


def test_merge_folds_every_adapter_into_a_plain_layer() -> None:
    from encoders.pretrained import MiniLMTextEncoder

    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    ia3 = {"ia3": {"target_modules": ["query", "value", "output.dense"], "feedforward_modules": ["output.dense"]}}
    tower = MiniLMTextEncoder(random_init=True, max_length=16, config_overrides=small, trainable=ia3).eval()
    for p in adapter_parameters(tower):
        torch.nn.init.normal_(p, mean=1.0, std=0.2)  # IA3 starts at 1 (a no-op): make it do something
    ids = torch.randint(1000, 2000, (2, 7))
    before = tower(ids, torch.ones_like(ids)).pooled
    assert merge_adapters(tower) == 8 and not has_adapters(tower)
    assert type(tower.model.encoder.layer[0].attention.self.query) is torch.nn.Linear
    torch.testing.assert_close(tower(ids, torch.ones_like(ids)).pooled, before, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"lorra": {}}, "unknown adapter method 'lorra'"),
        ({"lora": {"rank": 4}}, r"unknown option\(s\) \['rank'\]"),
        ({"lora": {}, "ia3": {}}, "give one adapter method"),
        ({"lora": [4]}, "the options must be a mapping"),
    ],
)
def test_bad_adapter_settings_name_the_key(spec: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        adapter_config(spec)


def test_fit_with_a_bad_adapter_setting_is_a_one_line_error(
    catalogue: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import TINY_CONFIGS, cli_error

    bad = json.dumps({"lora": {"target_modules": ["nope"]}})
    err = cli_error(["fit", "--config", TINY_CONFIGS["tagger"], "--data.init_args.manifest", catalogue,
                     "--data.init_args.image_root", SAMPLE_IMAGES, "--trainer.max_steps", "1",
                     "--trainer.default_root_dir", tmp_path,
                     "--model.init_args.vision.init_args.trainable", bad],
                    capsys)  # fmt: skip
    assert "nope" in err and "Traceback" not in err


def test_pretrained_weights_land_under_the_adapters() -> None:
    """EfficientNet-Lite0 loads its ImageNet weights after the adapters wrap its 1x1 convolutions: at
    initialisation (LoRA's B = 0) it computes what the plain pretrained tower does."""
    from encoders.pretrained import EfficientNetLiteEncoder

    spec = {"lora": {"r": 4, "target_modules": ["conv_pw", "conv_pwl"]}}
    plain = EfficientNetLiteEncoder(0, 96, trainable=False).eval()
    adapted = EfficientNetLiteEncoder(0, 96, trainable=spec).eval()
    assert has_adapters(adapted) and all(p.requires_grad for p in adapter_parameters(adapted))
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(adapted(x).pooled, plain(x).pooled, atol=1e-6, rtol=0)
