"""Vocabulary trimming of caption generation: the training targets' token ids are collected at fit, saved in the
checkpoint and restored by ``multimodal.load``; the trimmed output layer equals the full one on those ids; bad
settings are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import SAMPLE_IMAGES, cli_error, fit_tiny, write_manifest

from multimodal.errors import UserError


def _small_lm() -> object:
    from encoders.language_model import MiniLMLanguageModel

    torch.manual_seed(0)
    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    return MiniLMLanguageModel(random_init=True, config_overrides=small)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A tiny captioner fitted for 2 steps on 24 sample products (all in the training split): checkpoint, titles."""
    root = tmp_path_factory.mktemp("trim")
    df = pd.read_csv(SAMPLE_IMAGES.parent / "metadata.csv", dtype=str, keep_default_na=False).iloc[::31].head(24)
    df = df.assign(split="train")
    write_manifest(df, root / "train.csv")
    return fit_tiny("captioner", root / "fit", root / "train.csv", SAMPLE_IMAGES), df["title"].tolist()


def test_trimmed_output_layer_equals_the_full_one_on_the_kept_ids() -> None:
    lm = _small_lm()
    layer = lm.get_output_layer()
    kept = torch.tensor([lm.pad_id, 1000, 2500, lm.bos_id, lm.eos_id, 7000])
    hidden = torch.randn(3, 2, 32)
    with lm.hidden_transform(lambda h: h * 2), lm.trimmed_output(kept):  # the hidden transform still runs
        assert lm.get_output_layer() is not layer
        trimmed = lm.model.cls.predictions(hidden)  # through the LM head's transform, as generate calls it
    assert lm.get_output_layer() is layer  # restored
    expected = layer(lm.model.cls.predictions.transform(hidden) * 2)
    assert trimmed.shape == expected.shape == (3, 2, layer.weight.shape[0])
    torch.testing.assert_close(trimmed[..., kept], expected[..., kept])
    others = torch.ones(layer.weight.shape[0], dtype=torch.bool)
    others[kept] = False
    assert torch.isneginf(trimmed[..., others]).all()


def test_kept_ids_are_saved_in_and_restored_from_the_checkpoint(fitted: tuple[Path, list[str]]) -> None:
    import multimodal

    ckpt, titles = fitted
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)["caption_token_ids"]
    model = multimodal.load(ckpt).model
    lm = model.lm
    expected = {i for t in titles for i in lm.tokenizer(t, add_special_tokens=False)["input_ids"]}
    expected |= {lm.bos_id, lm.eos_id, lm.pad_id}
    assert model.caption_token_ids.tolist() == sorted(expected) == stored.tolist()
    ids = torch.full((2, 1), lm.bos_id)
    pixels = torch.zeros(2, 3, 64, 64)
    out = model.generate(pixels, ids, torch.ones_like(ids), max_new_tokens=6, min_new_tokens=6)
    assert all(set(lm.tokenizer(t, add_special_tokens=False)["input_ids"]) <= expected for t in out.texts), out.texts


def test_checkpoint_without_kept_ids_generates_over_the_whole_vocabulary(
    fitted: tuple[Path, list[str]], tmp_path: Path
) -> None:
    import multimodal

    checkpoint = torch.load(fitted[0], map_location="cpu", weights_only=True)
    del checkpoint["caption_token_ids"]  # as written before vocabulary trimming
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    captioner = multimodal.load(old).model
    assert captioner.caption_token_ids is None
    ids = torch.full((1, 1), captioner.lm.bos_id)
    pixels = torch.zeros(1, 3, 64, 64)
    assert captioner.generate(pixels, ids, torch.ones_like(ids), max_new_tokens=3).texts
    with pytest.raises(UserError, match="holds no training-target token ids"):
        captioner.generate(pixels, ids, torch.ones_like(ids), max_new_tokens=3, trim_vocabulary=True)
    checkpoint["caption_token_ids"] = torch.tensor([5, 10**6])
    torch.save(checkpoint, old)
    with pytest.raises(UserError, match="caption_token_ids are not token ids"):
        multimodal.load(old)


def test_bad_trim_settings_are_one_line_errors(
    fitted: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from multimodal.captioning.predictor import check_generation

    ckpt = fitted[0]
    out = tmp_path / "c.jsonl"
    err = cli_error(["caption", "--ckpt_path", ckpt, "--input", SAMPLE_IMAGES, "--out", out, "--trim_vocabulary",
                     "maybe"], capsys)  # fmt: skip
    assert "--trim_vocabulary" in err and "maybe" in err
    with pytest.raises(UserError, match="trim_vocabulary must be true or false, not 'yes'"):
        check_generation({"trim_vocabulary": "yes"})


def test_caption_command_trims_by_default_and_can_turn_it_off(
    fitted: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from conftest import run_cli

    ckpt, titles = fitted
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted(SAMPLE_IMAGES.iterdir())[:3]:
        (photos / p.name).write_bytes(p.read_bytes())
    rows = {}
    for flag in ("on", "off"):
        out = tmp_path / f"{flag}.jsonl"
        run_cli(["caption", "--ckpt_path", ckpt, "--input", photos, "--out", out, "--trim_vocabulary", flag,
                 "--max_new_tokens", "4", "--no_progress"], capsys)  # fmt: skip
        rows[flag] = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows["on"]) == len(rows["off"]) == 3
    assert all(r["caption"] is not None for r in rows["on"])


@pytest.mark.parametrize("options", [{}, {"num_beams": 3}, {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2}])
def test_compact_id_space_generates_what_the_scattered_trimmed_layer_does(options: dict[str, object]) -> None:
    """Generation in the compact id space (``(B, K')`` scores) writes the same ids with the same scores as the
    trimmed layer scattered into the whole vocabulary; prompt ids outside the kept ones are read, never written."""
    lm = _small_lm().eval()
    kept = torch.unique(torch.cat([torch.randint(1000, 30000, (300,)), torch.tensor([lm.bos_id, lm.eos_id])]))
    prompt = [5000, 6000, 7000, 8000, 9000]
    ids = torch.tensor([[lm.pad_id, lm.bos_id, *prompt[:2]], [lm.bos_id, *prompt[2:]]])
    mask = (ids != lm.pad_id).long()
    fixed = {"max_new_tokens": 8, "min_new_tokens": 8, "return_dict_in_generate": True, "output_scores": True}
    with torch.no_grad():
        compact = lm.generate(ids, mask, output_token_ids=kept, **fixed, **options)
        # an option holding token ids sends generation through the scattered (B, V) layer instead
        scattered = lm.generate(ids, mask, output_token_ids=kept, eos_token_id=lm.eos_id, **fixed, **options)
    assert compact.scores[0].shape[1] < 400 and scattered.scores[0].shape[1] == lm.get_output_layer().weight.shape[0]
    assert torch.equal(compact.sequences, scattered.sequences)
    new = compact.sequences[:, ids.shape[1] :]
    assert torch.isin(new, kept).all() and not torch.isin(new, torch.tensor(prompt)).any()
    if "num_beams" in options:
        torch.testing.assert_close(compact.sequences_scores, scattered.sequences_scores)
    else:
        columns = torch.searchsorted(compact.score_token_ids, new)
        for t, (a, b) in enumerate(zip(compact.scores, scattered.scores, strict=True)):
            torch.testing.assert_close(a.gather(1, columns[:, t : t + 1]), b.gather(1, new[:, t : t + 1]))
    assert lm.get_output_layer() is lm.model.get_output_embeddings() and type(lm.get_output_layer()) is torch.nn.Linear
