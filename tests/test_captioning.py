"""ProductCaptioner: each fusion family memorises 8 titles, cached == uncached and trimmed == full-vocabulary
generation, prompt masking, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from multimodal.captioning.metrics import caption_scores, normalise
from multimodal.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY_CAPTION = ROOT / "configs" / "captioning" / "tiny.yaml"
SAMPLE_IMAGES = ROOT / "examples" / "fashion-products" / "images"
MODES = ["PrefixConditioning", "CrossAttentionConditioning", "LateConditioning"]
STEPS = 150


def eight_titles(tmp_path: Path, sample: pd.DataFrame) -> Path:
    """8 sample products with distinct titles, all in the training split."""
    df = sample.drop_duplicates("title").head(8).copy()
    df["split"] = "train"
    path = tmp_path / "eight.csv"
    df.to_csv(path, index=False)
    return path


def tiny_cli(mode: str, manifest: Path, *extra: str, run: bool = False) -> Any:
    from multimodal.lightning_cli import MultimodalCLI

    args = [
        "--config", str(TINY_CAPTION),
        "--model.init_args.fusion.class_path", f"fusion.conditioning.{mode}",
        "--data.init_args.manifest", str(manifest),
        "--data.init_args.image_root", str(SAMPLE_IMAGES),
        *extra,
    ]  # fmt: skip
    return MultimodalCLI(args=args, run=run)


@pytest.fixture(scope="module", params=MODES)
def trained(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Any, dict[str, Any]]:
    """A tiny captioner of one fusion family trained for STEPS steps on 8 products, and one batch of them."""
    sample = pd.read_csv(ROOT / "examples" / "fashion-products" / "metadata.csv", dtype=str, keep_default_na=False)
    manifest = eight_titles(tmp_path_factory.mktemp(request.param), sample)
    cli = tiny_cli(
        request.param, manifest,
        "--trainer.max_steps", str(STEPS), "--trainer.max_epochs", "-1", "--trainer.limit_val_batches", "0",
    )  # fmt: skip
    cli.trainer.fit(cli.model, cli.datamodule)
    batch = next(iter(cli.datamodule.loader("train")))
    return request.param, cli.model.eval(), batch


def _generate(model: Any, batch: dict[str, Any], **kwargs: Any) -> Any:
    return model.generate(batch["pixel_values"], batch["prompt_ids"], batch["prompt_mask"], **kwargs)


def test_each_fusion_family_memorises_eight_titles(trained: tuple[str, Any, dict[str, Any]]) -> None:
    mode, model, batch = trained
    captions = _generate(model, batch)
    assert len(set(batch["references"])) == 8
    wrong = [(p, r) for p, r in zip(captions.texts, batch["references"], strict=True) if normalise(p) != normalise(r)]
    assert not wrong, f"{mode}: {wrong}"
    assert all(s > -0.5 for s in captions.scores), captions.scores  # confident: mean token log-probability


def test_cached_and_uncached_generation_agree(trained: tuple[str, Any, dict[str, Any]]) -> None:
    _, model, batch = trained
    for options in ({}, {"num_beams": 3}, {"do_sample": True, "top_k": 20, "temperature": 1.5, "max_new_tokens": 6}):
        torch.manual_seed(3)
        cached = _generate(model, batch, **options)
        torch.manual_seed(3)
        uncached = _generate(model, batch, use_cache=False, **options)
        assert cached.texts == uncached.texts, options
        assert cached.scores == pytest.approx(uncached.scores, abs=1e-3)


def test_trimmed_vocabulary_generation_is_exact(trained: tuple[str, Any, dict[str, Any]]) -> None:
    """Logits for the training targets' ids only (the default after fit): the same greedy and beam captions."""
    mode, model, batch = trained
    vocab = model.lm.get_output_layer().weight.shape[0]
    assert model.caption_token_ids is not None and len(model.caption_token_ids) < vocab / 10
    for options in ({}, {"num_beams": 3}):
        trimmed = _generate(model, batch, trim_vocabulary=True, **options)
        full = _generate(model, batch, trim_vocabulary=False, **options)
        assert trimmed.texts == full.texts, (mode, options)
        # Greedy: log-probabilities over the kept ids (the rest of the vocabulary holds almost no mass).
        assert trimmed.scores == pytest.approx(full.scores, abs=1e-2), (mode, options)
        assert all(t >= f - 1e-4 for t, f in zip(trimmed.scores, full.scores, strict=True)), (mode, options)
    assert _generate(model, batch).texts == full.texts  # default: trimmed


def test_sampling_is_seeded_and_length_limited(trained: tuple[str, Any, dict[str, Any]]) -> None:
    _, model, batch = trained
    options = {"do_sample": True, "temperature": 2.0, "top_p": 0.95, "max_new_tokens": 3, "repetition_penalty": 1.3}
    torch.manual_seed(7)
    first = _generate(model, batch, **options)
    torch.manual_seed(7)
    assert _generate(model, batch, **options).texts == first.texts
    assert all(len(t.split()) <= 3 for t in first.texts)  # a word takes one token or more


def test_prompt_is_masked_out_of_the_loss() -> None:
    from encoders.language_model import MiniLMLanguageModel
    from multimodal.captioning.text import CaptionText
    from multimodal.data.dataset import IGNORE_INDEX

    lm = MiniLMLanguageModel(random_init=True, config_overrides={"hidden_size": 32, "num_hidden_layers": 1,
                             "num_attention_heads": 2, "intermediate_size": 64})  # fmt: skip
    fn = CaptionText(lm.tokenizer, "title", ["brand"], "describe", 32, lm.bos_id, lm.eos_id, lm.pad_id)
    out = fn({"title": ["red shoe", None], "brand": ["nike", None]})
    prompt = lm.tokenizer("describe. nike", add_special_tokens=False)["input_ids"]
    target = lm.tokenizer("red shoe", add_special_tokens=False)["input_ids"]
    assert out["input_ids"][0].tolist() == [lm.bos_id, *prompt, *target, lm.eos_id]
    assert out["caption_labels"][0].tolist() == [IGNORE_INDEX] * (1 + len(prompt)) + [*target, lm.eos_id]
    assert (out["caption_labels"][1] == IGNORE_INDEX).all()  # no target: nothing to learn
    # Generation input is left-padded [bos] prompt.
    describe = lm.tokenizer("describe", add_special_tokens=False)["input_ids"]
    assert out["prompt_ids"][1].tolist()[-1 - len(describe) :] == [lm.bos_id, *describe]
    assert out["prompt_mask"][1].tolist() == [0] * (len(prompt) - len(describe)) + [1] * (1 + len(describe))


@pytest.mark.parametrize("mode", ["PrefixConditioning", "CrossAttentionConditioning"])
def test_lm_warmup_holds_the_pretrained_lm_weights_only(mode: str, tmp_path: Path) -> None:
    """Through ``Trainer.fit``: for ``lm_warmup_steps`` steps the LM's own weights stay as built while the
    conditioning (and new cross-attention layers) learn; one step later the LM moves too."""
    sample = pd.read_csv(ROOT / "examples" / "fashion-products" / "metadata.csv", dtype=str, keep_default_na=False)
    manifest = eight_titles(tmp_path, sample)

    def fit(steps: int) -> tuple[Any, dict[str, torch.Tensor]]:
        cli = tiny_cli(mode, manifest, "--model.init_args.lm_warmup_steps", "2", "--trainer.max_steps", str(steps),
                       "--trainer.max_epochs", "-1", "--trainer.limit_val_batches", "0")  # fmt: skip
        before = {n: p.detach().clone() for n, p in cli.model.named_parameters()}
        cli.trainer.fit(cli.model, cli.datamodule)
        return cli.model, before

    model, before = fit(2)
    held = {id(p) for p in model.lm.pretrained_parameters()}
    assert held and model.lm.added_parameter_names == (
        set() if mode == "PrefixConditioning" else {n for n, _ in model.lm.model.named_parameters() if "crossatt" in n}
    )
    for name, p in model.named_parameters():
        same = torch.equal(p, before[name])
        if id(p) in held:
            assert same, f"{name} moved during the warm-up"
        elif name.startswith("conditioning.") and name.endswith("weight"):
            assert not same, f"{name} did not learn during the warm-up"
    for name in model.lm.added_parameter_names:
        assert not torch.equal(model.lm.model.get_parameter(name), before[f"text.model.{name}"])
    model, before = fit(3)
    moved = [n for n, p in model.named_parameters() if id(p) in {id(q) for q in model.lm.pretrained_parameters()}
             and not torch.equal(p, before[n])]  # fmt: skip
    assert moved, "the LM never trains after the warm-up"
    with pytest.raises(UserError, match="lm_warmup_steps=-1: needs a whole number"):
        type(model)(model.vision, model.lm, model.conditioning.__class__, lm_warmup_steps=-1)


def test_word_dropout_masks_only_target_inputs() -> None:
    from encoders.language_model import MiniLMLanguageModel
    from encoders.timm_encoder import TimmVisionEncoder
    from fusion.conditioning import PrefixConditioning
    from multimodal.captioning.captioner import ProductCaptioner
    from multimodal.captioning.text import CaptionText

    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    vision = TimmVisionEncoder("test_efficientnet", image_size=32)
    lm = MiniLMLanguageModel(random_init=True, config_overrides=small)
    model = ProductCaptioner(vision, lm, PrefixConditioning, prompt_columns=["brand"], word_dropout=0.5)
    fn = CaptionText(lm.tokenizer, "title", ["brand"], "", 64, lm.bos_id, lm.eos_id, lm.pad_id)
    words = " ".join(["red"] * 40)
    out = fn({"title": [words, "blue shoe"], "brand": ["nike", None]})
    ids, labels = out["input_ids"], out["caption_labels"]
    torch.manual_seed(0)
    dropped = model.drop_words(ids, labels)
    changed = dropped != ids
    assert (dropped[changed] == lm.tokenizer.mask_token_id).all()
    target = (labels != -100) & (ids != lm.eos_id)
    assert not (changed & ~target).any()  # [bos], the prompt, [eos] and padding stay
    assert 0.3 < changed[0].sum().item() / target[0].sum().item() < 0.7
    assert torch.equal(ProductCaptioner(vision, lm, PrefixConditioning).drop_words(ids, labels), ids)  # off
    for bad in (1.0, -0.1):
        with pytest.raises(UserError, match="word_dropout"):
            ProductCaptioner(vision, lm, PrefixConditioning, word_dropout=bad)


def test_caption_metrics_values() -> None:
    perfect = caption_scores(["nike men blue shoes", "red shirt"], ["Nike Men Blue Shoes", "Red Shirt"])
    assert perfect["bleu4"] == pytest.approx(1.0) and perfect["exact"] == 1.0
    assert perfect["cider"] > 0
    wrong = caption_scores(["green hat", "blue bag"], ["Nike Men Blue Shoes", "Red Shirt"])
    assert wrong["bleu4"] == 0.0 and wrong["exact"] == 0.0 and wrong["cider"] < perfect["cider"]


def test_bad_inputs_are_user_errors(tmp_path: Path) -> None:
    from encoders.language_model import MiniLMLanguageModel
    from encoders.timm_encoder import TimmVisionEncoder
    from fusion.conditioning import LateConditioning
    from multimodal.captioning.captioner import ProductCaptioner

    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    vision = TimmVisionEncoder("test_efficientnet", image_size=32)
    with pytest.raises(UserError, match="Linear cannot condition a language model"):  # neither fusion family
        ProductCaptioner(vision, MiniLMLanguageModel(random_init=True, config_overrides=small), torch.nn.Linear)
    model = ProductCaptioner(
        vision, MiniLMLanguageModel(random_init=True, config_overrides=small), LateConditioning
    ).eval()
    ids = torch.full((1, 1), model.lm.bos_id)
    with pytest.raises(UserError, match="max_new_tokens must be positive"):
        model.generate(torch.zeros(1, 3, 32, 32), ids, torch.ones_like(ids), max_new_tokens=0)


def test_wrong_or_unknown_fusion_mode_is_a_cli_error(capsys: pytest.CaptureFixture[str]) -> None:
    from multimodal.cli import main

    base = ["fit", "--config", str(TINY_CAPTION), "--trainer.fast_dev_run", "true"]
    with pytest.raises(SystemExit) as exc:  # a module of neither fusion family
        main([*base, "--model.init_args.fusion.class_path", "torch.nn.Linear"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # log lines (seed set...) may precede
    assert len(errors) == 1 and "cannot condition a language model" in errors[0] and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:  # no such class: LightningCLI's parser names it
        main([*base, "--model.init_args.fusion.class_path", "fusion.conditioning.NoSuchMode"])
    assert exc.value.code == 2
    assert "NoSuchMode" in capsys.readouterr().err


def test_fit_validates_with_bleu_and_cider(tmp_path: Path) -> None:
    from multimodal.lightning_cli import MultimodalCLI

    cli = MultimodalCLI(
        args=["fit", "--config", str(TINY_CAPTION), "--trainer.limit_train_batches", "1",
              "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0",
              "--trainer.default_root_dir", str(tmp_path), "--model.init_args.word_dropout", "0.3"],
    )  # fmt: skip
    assert cli.model.word_dropout == 0.3  # trained with words dropped from the inputs
    metrics = cli.trainer.callback_metrics
    assert {"val/loss", "val/bleu4", "val/cider", "val/exact"} <= set(metrics)
    assert 0.0 <= float(metrics["val/bleu4"]) <= 1.0 and float(metrics["val/cider"]) >= 0.0


def test_target_column_missing_from_the_data_is_a_cli_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from multimodal.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(TINY_CAPTION), "--model.init_args.target_column", "description",
              "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    assert exc.value.code == 2
    assert "['description'] are not in data.text_columns ['title']" in capsys.readouterr().err


def test_identity_head_init_touches_only_the_missing_head_transform() -> None:
    from encoders.language_model import MiniLMLanguageModel

    plain, identity = MiniLMLanguageModel(), MiniLMLanguageModel(head_init="identity")
    dense = identity.model.cls.predictions.transform.dense
    assert torch.equal(dense.weight, torch.eye(dense.in_features)) and not dense.bias.any()
    assert not torch.equal(plain.model.cls.predictions.transform.dense.weight, dense.weight)
    shipped = {n: p for n, p in plain.model.named_parameters() if "cls.predictions.transform" not in n}
    for name, p in identity.model.named_parameters():
        if name in shipped and "predictions.bias" not in name and "decoder.bias" not in name:
            assert torch.equal(p, shipped[name]), name
    with pytest.raises(ValueError, match="head_init must be"):
        MiniLMLanguageModel(head_init="zeros")


def test_label_smoothing_reaches_the_caption_loss() -> None:
    from encoders.language_model import MiniLMLanguageModel
    from encoders.timm_encoder import TimmVisionEncoder
    from fusion.conditioning import LateConditioning
    from multimodal.captioning.captioner import ProductCaptioner

    lm = MiniLMLanguageModel(random_init=True, config_overrides={"hidden_size": 32, "num_hidden_layers": 1,
                             "num_attention_heads": 2, "intermediate_size": 64})  # fmt: skip
    vision = TimmVisionEncoder("test_efficientnet", image_size=32)
    logits = torch.randn(2, 5, lm.model.config.vocab_size)
    labels = torch.tensor([[-100, 7, 8, 9, -100], [-100, 10, 11, -100, -100]])
    smooth = ProductCaptioner(vision, lm, LateConditioning, label_smoothing=0.1)
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100, label_smoothing=0.1
    )
    assert torch.allclose(smooth.loss(logits, labels), expected)
    assert not torch.allclose(ProductCaptioner(vision, lm, LateConditioning).loss(logits, labels), expected)
    with pytest.raises(UserError, match="label_smoothing=1.0"):
        ProductCaptioner(vision, lm, LateConditioning, label_smoothing=1.0)


def test_image_tokens_resampler_honours_padding_and_old_checkpoints_load_or_say_how() -> None:
    from encoders.types import Features
    from fusion.conditioning import CrossAttentionConditioning, ImageTokens, PrefixConditioning

    torch.manual_seed(0)
    tokens, pooled = torch.randn(2, 6, 12), torch.randn(2, 12)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    block = ImageTokens(12, 16, queries=3, heads=2).eval()
    out = block(Features(tokens=tokens, mask=mask, pooled=pooled))
    assert out.tokens.shape == (2, 3, 16) and out.mask.all()
    noisy = tokens.clone()
    noisy[1, 4:] = 100.0  # padded positions: must not change anything
    again = block(Features(tokens=noisy, mask=mask, pooled=pooled))
    assert torch.allclose(out.tokens, again.tokens, atol=1e-6)
    assert CrossAttentionConditioning(12, 16).image.use_pooled is False  # grid only by default
    # A state dict of the former MLP + LayerNorm layout (keys mlp.* / norm.*).
    old = {f"mlp.{k}": v for k, v in ImageTokens(12, 16, projection="mlp").project.state_dict().items()}
    old |= {"norm.weight": torch.ones(16), "norm.bias": torch.zeros(16)}
    rebuilt = PrefixConditioning(12, 16, projection="mlp", norm=True)
    rebuilt.load_state_dict(old)
    assert torch.equal(rebuilt.image.project[0].weight, old["mlp.0.weight"])
    with pytest.raises(ValueError, match="projection: mlp, norm: true"):
        PrefixConditioning(12, 16).load_state_dict(old)
