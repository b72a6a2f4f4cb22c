"""ProductTagger: real Lightning training through every fusion block, missing modalities, tags, metrics, writers."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import pytest
import torch
from conftest import SAMPLE_IMAGES, tiny_text, tiny_vision
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from encoders.timm_encoder import TimmVisionEncoder
from fusion import CrossAttentionFusion, EarlyFusion, LateFusion
from multimodal.data.datamodule import ProductDataModule
from multimodal.data.dataset import IGNORE_INDEX
from multimodal.errors import UserError
from multimodal.tagging.metrics import TaggingMetrics
from multimodal.tagging.tagger import NgramHead, ProductTagger

FUSIONS = {
    "early": partial(EarlyFusion, dim=32, layers=1, heads=2, dropout=0.0),
    "late": partial(LateFusion, dim=32, mode="concat", dropout=0.0),
    "cross_attention": partial(CrossAttentionFusion, dim=32, layers=1, heads=2, dropout=0.0),
}
ATTRIBUTES = ["gender", "masterCategory"]


def make_tagger(fusion: str = "cross_attention", seed: int = 0, **kwargs: Any) -> ProductTagger:
    kwargs.setdefault("modality_dropout", 0.0)
    kwargs.setdefault("head_dropout", 0.0)
    vision, text = tiny_vision(seed, image_size=32), tiny_text(seed)
    torch.manual_seed(seed)
    return ProductTagger(
        vision=vision,
        text=text,
        fusion=FUSIONS[fusion],
        optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3),
        **{"encoder_lr_scale": 1.0, **kwargs},
    )


def make_datamodule(manifest: Path, **kwargs: Any) -> ProductDataModule:
    kwargs.setdefault("image_root", str(SAMPLE_IMAGES))
    kwargs.setdefault("text_columns", ["title"])
    kwargs.setdefault("attributes", ATTRIBUTES)
    return ProductDataModule(str(manifest), batch_size=16, num_workers=0, **kwargs)


def trainer(tmp_path: Path, **kwargs: Any) -> L.Trainer:
    kwargs.setdefault("logger", False)
    kwargs.setdefault("max_epochs", 1)
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        **kwargs,
    )


@pytest.fixture
def manifest(make_manifest: Callable[..., Path]) -> Path:
    """32 training, 8 validation and 8 test products from the sample."""
    return make_manifest(n=48, splits=["train"] * 4 + ["val", "test"])


def ready(model: ProductTagger, dm: ProductDataModule) -> ProductTagger:
    """What the Trainer does at set-up: heads from the data's vocabularies, preprocessing from the task."""
    model.build_heads(dm.vocabularies, dm.tag_vocabularies)
    dm.attach(model)
    return model


def eval_loss(model: ProductTagger, batches: list[dict[str, Any]]) -> float:
    model.eval()
    with torch.no_grad():
        return sum(model.loss(model(b), b).item() for b in batches) / len(batches)


# -------------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("fusion", list(FUSIONS))
def test_fit_lowers_training_loss_through_each_fusion(fusion: str, manifest: Path, tmp_path: Path) -> None:
    dm = make_datamodule(manifest)
    model = ready(make_tagger(fusion), dm)
    assert type(model.fusion).__name__ == FUSIONS[fusion].func.__name__
    batches = list(dm.loader("train"))  # a fixed set: eval transforms, no shuffling
    assert [len(b["ids"]) for b in batches] == [16, 16]
    before = eval_loss(model, batches)
    model.train()  # Lightning trains modules in the mode it finds them in
    params = {k: v.detach().clone() for k, v in model.named_parameters()}

    trainer(tmp_path, max_steps=16, max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0).fit(model, dm)

    after = eval_loss(model, batches)
    assert torch.isfinite(torch.tensor([before, after])).all()
    assert after < 0.6 * before, f"{fusion}: loss {before:.3f} -> {after:.3f}"
    changed = {k.split(".")[0] for k, v in model.named_parameters() if not torch.equal(v, params[k])}
    assert {"vision", "text", "fusion", "heads"} <= changed


def test_fit_leaves_a_frozen_vision_tower_unchanged(manifest: Path, tmp_path: Path) -> None:
    """Through Lightning's own mode handling (it keeps the modes the model was built with and restores them after
    validation): a CNN built frozen keeps its weights and batch-norm statistics, while the rest trains."""
    dm = make_datamodule(manifest)
    torch.manual_seed(0)
    model = ProductTagger(
        vision=TimmVisionEncoder("test_efficientnet", image_size=32, trainable=False),
        text=tiny_text(0),
        fusion=FUSIONS["cross_attention"],
        optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3),
    )
    ready(model, dm)
    vision = {k: v.clone() for k, v in model.vision.state_dict().items()}
    assert any("running_mean" in k for k in vision)
    heads = {k: v.clone() for k, v in model.heads.state_dict().items()}

    trainer(tmp_path, max_steps=6, max_epochs=-1, val_check_interval=2, num_sanity_val_steps=1).fit(model, dm)

    assert all(torch.equal(v, model.vision.state_dict()[k]) for k, v in vision.items())
    assert not all(torch.equal(v, model.heads.state_dict()[k]) for k, v in heads.items())


@pytest.mark.parametrize("fusion", list(FUSIONS))
def test_every_parameter_gets_a_gradient(fusion: str, manifest: Path) -> None:
    """DDP (without find_unused_parameters) fails on a parameter outside the graph; the missing-modality
    stand-ins are in it even when no product of the batch lacks a photo or a title."""
    dm = make_datamodule(manifest)
    model = ready(make_tagger(fusion), dm).train()
    batch = next(iter(dm.loader("train")))
    assert batch["has_image"].all() and batch["has_text"].all()
    model.loss(model(batch), batch).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_trained_vocabularies_are_saved_in_the_checkpoint(manifest: Path, tmp_path: Path) -> None:
    dm = make_datamodule(manifest)
    model = make_tagger("late", ngram_buckets=512)
    t = trainer(tmp_path, max_steps=1, limit_val_batches=0, num_sanity_val_steps=0)
    t.fit(model, dm)
    t.save_checkpoint(tmp_path / "m.ckpt")
    ckpt = torch.load(tmp_path / "m.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["vocabularies"] == dm.vocabularies
    assert ckpt["ProductDataModule"]["vocabularies"] == dm.vocabularies  # the data module's own state
    # A fresh task sized from the checkpoint alone gives the same outputs.
    fresh = make_tagger("late", seed=1, ngram_buckets=512)
    fresh.on_load_checkpoint(ckpt)
    assert fresh.ngram_head is not None and ckpt["state_dict"]["ngram_head.table.weight"].abs().sum() > 0
    fresh.load_state_dict(ckpt["state_dict"])
    batch = next(iter(dm.loader("val")))
    model.eval(), fresh.eval()
    with torch.no_grad():
        a, b = model(batch), fresh(batch)
    for k in a:
        assert torch.equal(a[k], b[k])


def test_ngram_head_reads_only_real_tokens() -> None:
    """Padding, special tokens and absent texts add nothing; each product sums its own unigrams and bigrams."""
    head = NgramHead({"a": 3, "tags/t": 2}, buckets=97, ngrams=2, ignore_ids=[101, 102])
    torch.nn.init.normal_(head.table.weight)
    ids = torch.tensor([[101, 7, 8, 102, 0, 0], [101, 7, 102, 0, 0, 0]])
    mask = (ids > 0).long()
    rows = head.ngram_ids(ids, mask)
    assert rows.shape == (2, 6 + 5) and rows.min() >= 0 and rows.max() < 97
    assert (rows[0] > 0).sum() == 3 and (rows[1] > 0).sum() == 1  # "7", "8", "7 8" / "7"
    assert rows[0, 1] == rows[1, 1]  # the same token hashes to the same row in every product
    present = torch.tensor([True, True])
    out = head(ids, mask, present)
    assert set(out) == {"a", "tags/t"} and out["a"].shape == (2, 3) and out["tags/t"].shape == (2, 2)
    other_padding = ids.masked_fill(mask == 0, 555)  # what sits under the mask never counts
    for key, value in head(other_padding, mask, present).items():
        assert torch.equal(value, out[key])
    expected = head.table.weight[rows[0][rows[0] > 0]].sum(0) / 3**0.5  # L2-normalised binary features
    assert torch.allclose(torch.cat([out["a"][0], out["tags/t"][0]]), expected, atol=1e-6)
    absent = head(ids, mask, torch.tensor([True, False]))
    assert torch.equal(absent["a"][0], out["a"][0]) and not absent["a"][1].any()
    with pytest.raises(ValueError, match="buckets"):
        NgramHead({"a": 2}, buckets=1)
    for bad in ({"ngram_buckets": 1}, {"ngram_buckets": 64, "ngram_order": 9}):  # a config mistake: one clear line
        with pytest.raises(UserError, match="model.ngram_buckets"):
            make_tagger(**bad)


def test_optimizer_groups_follow_the_lr_scales(manifest: Path) -> None:
    dm = make_datamodule(manifest)
    model = ready(make_tagger("late", ngram_buckets=64, encoder_lr_scale=0.1, ngram_lr_scale=5.0), dm)
    groups = model.configure_optimizers().param_groups
    lr = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert groups[0]["lr"] == pytest.approx(3e-3)  # the new layers, at the optimizer's own rate, come first
    assert [lr[id(p)] for p in model.heads.parameters()] == pytest.approx([3e-3] * len(list(model.heads.parameters())))
    assert [lr[id(p)] for p in model.text.parameters()] == pytest.approx([3e-4] * len(list(model.text.parameters())))
    assert lr[id(model.ngram_head.table.weight)] == pytest.approx(1.5e-2)
    assert len(lr) == sum(p.requires_grad for p in model.parameters())


# -------------------------------------------------------------------------------------------- missing modality
def test_missing_modality_ignores_the_absent_input(manifest: Path) -> None:
    dm = make_datamodule(manifest)
    model = ready(make_tagger("early", ngram_buckets=512), dm).eval()
    torch.nn.init.normal_(model.ngram_head.table.weight)  # the text's n-grams count, unless the text is absent
    batch = next(iter(dm.loader("val")))
    n = len(batch["ids"])
    no_image = {**batch, "has_image": torch.zeros(n, dtype=torch.bool)}
    no_text = {**batch, "has_text": torch.zeros(n, dtype=torch.bool)}
    with torch.no_grad():
        full = model(batch)
        a = model(no_image)
        a2 = model({**no_image, "pixel_values": torch.randn_like(batch["pixel_values"])})
        b = model(no_text)
        b2 = model({**no_text, "input_ids": torch.randint_like(batch["input_ids"], 1000, 2000)})
    for name in ATTRIBUTES:
        assert torch.equal(a[name], a2[name])  # the photo is not looked at
        assert torch.equal(b[name], b2[name])  # nor the text
        assert not torch.allclose(a[name], full[name])
        assert not torch.allclose(b[name], full[name])


def test_predict_with_missing_photo_or_title(make_manifest: Callable[..., Path], tmp_path: Path) -> None:
    def edit(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[1, "image"] = ""
        df.loc[2, "title"] = ""
        df.loc[3, ["image", "title"]] = ["", "NA"]  # neither: still a prediction (from the stand-ins)
        return df

    path = make_manifest(n=24, splits=["train", "train", "train", "test"], edit=edit)
    dm = make_datamodule(path, predict_split="all")
    model = make_tagger("cross_attention")
    out = trainer(tmp_path).predict(model, datamodule=dm)
    ids = [i for batch in out for i in batch["ids"]]
    expected = pd.read_csv(path, dtype=str).id.tolist()
    assert sorted(ids) == sorted(expected) and len(ids) == len(expected)  # every product, once
    for batch in out:
        for name in ATTRIBUTES:
            p = batch["probs"][name]
            assert torch.isfinite(p).all()
            torch.testing.assert_close(p.sum(-1), torch.ones(len(batch["ids"])))
        rows = model.decode(batch["probs"], top_k=2)
        assert all(r["gender"] in dm.vocabularies["gender"] for r in rows)
        assert all(len(r["gender_top"]) == 2 for r in rows)


def test_modality_dropout_never_hides_both() -> None:
    model = make_tagger("late", modality_dropout=1.0)
    torch.manual_seed(0)
    ones = torch.ones(2000, dtype=torch.bool)
    img, txt = model._drop_modalities(ones, ones)
    assert (img | txt).all()
    assert 0.4 < (~img).float().mean() < 0.6 and 0.4 < (~txt).float().mean() < 0.6
    img, txt = model._drop_modalities(ones, torch.zeros_like(ones))  # no text: the photo is always kept
    assert img.all()


# ------------------------------------------------------------------------------------------------- loss masking
def test_unknown_labels_are_masked_out_of_the_loss() -> None:
    model = make_tagger("late")
    model.build_heads({"a": ["x", "y", "z"], "b": ["u", "v"]}, {"t": ["p", "q"]})
    torch.manual_seed(0)
    logits = {"a": torch.randn(4, 3), "b": torch.randn(4, 2), "tags/t": torch.randn(4, 2)}
    labels = torch.tensor([[0, IGNORE_INDEX], [2, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX], [1, IGNORE_INDEX]])
    tags = torch.tensor([[1.0, 0.0], [IGNORE_INDEX, IGNORE_INDEX], [0.0, 1.0], [1.0, 1.0]])
    loss = model.loss(logits, {"labels": labels, "tags": {"t": tags}})
    ce = torch.nn.functional.cross_entropy(logits["a"][[0, 1, 3]], torch.tensor([0, 2, 1]))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits["tags/t"][[0, 2, 3]], tags[[0, 2, 3]])
    torch.testing.assert_close(loss, (ce + bce) / 2)  # head "b" has no known label: left out, not a zero
    all_unknown = {"labels": torch.full((4, 2), IGNORE_INDEX), "tags": {"t": torch.full((4, 2), float(IGNORE_INDEX))}}
    assert model.loss(logits, all_unknown).item() == 0.0


def test_logit_adjustment_adds_tau_log_prior_in_the_loss_only(manifest: Path, tmp_path: Path) -> None:
    dm = make_datamodule(manifest)
    model = make_tagger("late", logit_adjustment=1.5)
    t = trainer(tmp_path, max_steps=1, limit_val_batches=0, num_sanity_val_steps=0)
    t.fit(model, dm)
    train = pd.read_csv(manifest).query("split == 'train'")
    for a in ATTRIBUTES:  # the training split's counts, in vocabulary order
        assert model.label_counts[a] == [int((train[a] == v).sum()) for v in dm.vocabularies[a]]
    batch = next(iter(dm.loader("val")))
    model.eval()
    with torch.no_grad():
        logits = model(batch)
    known = (batch["labels"] != IGNORE_INDEX).all(1)
    want = []
    for i, a in enumerate(ATTRIBUTES):
        prior = torch.tensor(model.label_counts[a], dtype=torch.float) / sum(model.label_counts[a])
        want.append(torch.nn.functional.cross_entropy(logits[a][known] + 1.5 * prior.log(), batch["labels"][known, i]))
    batch_known = {**batch, "labels": batch["labels"][known]}
    got = model.loss({k: v[known] for k, v in logits.items()}, batch_known)
    torch.testing.assert_close(got, torch.stack(want).mean())
    t.save_checkpoint(tmp_path / "m.ckpt")  # the counts travel with the checkpoint; predictions read raw logits
    ckpt = torch.load(tmp_path / "m.ckpt", map_location="cpu", weights_only=True)
    fresh = make_tagger("late", seed=1, logit_adjustment=1.5)
    fresh.on_load_checkpoint(ckpt)
    assert fresh.label_counts == model.label_counts
    probs = model.predict_step(batch, 0)["probs"]
    torch.testing.assert_close(probs[ATTRIBUTES[0]], logits[ATTRIBUTES[0]].softmax(-1))
    with pytest.raises(UserError, match="logit_adjustment=-1"):
        make_tagger("late", logit_adjustment=-1)


# ----------------------------------------------------------------------------------------------------- metrics
def test_tagging_metrics_values() -> None:
    metrics = TaggingMetrics({"a": ["x", "y", "z"]}, {"t": ["p", "q", "r"]})
    logits = {
        "a": torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [5.0, 0, 0], [0, 5.0, 0]]),
        "tags/t": torch.tensor([[5.0, -5, -5], [-5, 5, -5], [5, 5, -5], [-5, -5, 5], [0, 0, 0]]),
    }
    batch = {
        "labels": torch.tensor([[0], [1], [2], [1], [IGNORE_INDEX]]),  # one wrong, one unknown
        "tags": {"t": torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [IGNORE_INDEX] * 3])},
    }
    metrics.update(logits, batch)
    out = metrics.compute_and_reset("val")
    assert out["val/a/acc"].item() == pytest.approx(0.75)
    assert out["val/mean_acc"].item() == pytest.approx(0.75)
    # Per-class F1: x = 2/3 (one false positive), y = 2/3 (one false negative), z = 1.
    assert out["val/a/macro_f1"].item() == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert out["val/t/mAP"].item() == pytest.approx(1.0)
    assert out["val/t/f1"].item() == pytest.approx(1.0)
    assert metrics.compute_and_reset("val") == {}  # reset, and nothing is reported without updates


def test_multilabel_tag_columns_train_and_report_map_f1(make_manifest: Callable[..., Path], tmp_path: Path) -> None:
    vocab = ["cotton", "slim fit", "leather", "round neck"]

    def edit(df: pd.DataFrame) -> pd.DataFrame:
        # Tags that follow the gender, so they are learnable; one unknown cell.
        df["tags"] = [f"{vocab[i % 2]}|{vocab[2 + (g == 'Men')]}" for i, g in enumerate(df["gender"])]
        df.loc[5, "tags"] = "NA"
        return df

    path = make_manifest(n=48, splits=["train", "train", "train", "val"], edit=edit)
    dm = make_datamodule(path, tag_columns=["tags"])
    assert dm.tag_vocabularies == {"tags": sorted(vocab)}
    model = make_tagger("early")
    t = trainer(tmp_path, max_epochs=3, num_sanity_val_steps=0)
    t.fit(model, dm)
    metrics = {k: float(v) for k, v in t.callback_metrics.items()}
    for key in ("val/tags/mAP", "val/tags/f1", "val/gender/acc", "val/mean_macro_f1"):
        assert key in metrics and 0.0 <= metrics[key] <= 1.0, key
    assert metrics["val/tags/mAP"] > 0.25  # better than nothing after 9 steps; the exact value is not the point
    assert "tags/tags" in model.predict_step(next(iter(dm.loader("val"))), 0)["probs"]


def test_test_stage_writes_confusion_matrices_and_skip_report(
    make_manifest: Callable[..., Path], tmp_path: Path
) -> None:
    images = tmp_path / "images"
    shutil.copytree(SAMPLE_IMAGES, images, ignore=lambda d, names: [n for n in names if not n.startswith("1")])

    def edit(df: pd.DataFrame) -> pd.DataFrame:
        df = df[df["image"].str.startswith("1")].reset_index(drop=True)
        df.loc[0, "image"] = "broken.jpg"  # a corrupt photo in training: skipped and reported
        df.loc[len(df) - 1, "image"] = "broken.jpg"  # ...and one in test
        return df

    (images / "broken.jpg").write_bytes(b"not a jpeg")
    path = make_manifest(n=64, splits=["train", "train", "test"], edit=edit)
    dm = make_datamodule(path, image_root=str(images), on_bad_sample="skip")
    model = make_tagger("late")
    t = trainer(tmp_path, max_steps=2, limit_val_batches=0, num_sanity_val_steps=0, logger=CSVLogger(tmp_path, "logs"))
    t.fit(model, dm)
    results = t.test(model, datamodule=dm)[0]
    assert 0.0 <= results["test/mean_acc"] <= 1.0 and "test/gender/macro_f1" in results
    log_dir = Path(t.log_dir)
    for name in ATTRIBUTES:
        png = log_dir / "confusion" / f"{name}.png"
        with Image.open(png) as img:
            assert img.format == "PNG" and img.size[0] >= 300
    metrics_csv = pd.read_csv(log_dir / "metrics.csv")
    assert "test/mean_acc" in metrics_csv.columns
    report = json.loads((log_dir / "data_report.json").read_text())
    skipped = {(s["id"], s["row"]) for s in report["skipped"]}
    df = pd.read_csv(path, dtype=str)
    assert skipped == {(df.id[0], 0), (df.id[len(df) - 1], len(df) - 1)}
    assert all("broken.jpg" in s["reason"] for s in report["skipped"])
