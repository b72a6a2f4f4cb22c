"""The retriever's training levers: query views, multi-positive InfoNCE, hard-negative batches, Matryoshka, the
fused product vector's text skip."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import math
import random
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import SAMPLE_IMAGES, SAMPLE_MANIFEST, fit_tiny
from torch.nn import functional as F

from multimodal.data.records import ProductRecord
from multimodal.errors import UserError
from multimodal.lightning_cli import MultimodalCLI
from multimodal.resume import EpochShuffle
from multimodal.search.hard_negatives import HardNegatives, HardNegativeShuffle, hard_negative_order
from multimodal.search.losses import (
    info_nce,
    matryoshka_loss,
    matryoshka_widths,
    multi_positive_info_nce,
    shared_attribute_positives,
)
from multimodal.search.query_text import QueryAndProductText
from multimodal.search.query_views import QueryViews, ViewedQueryText, draw_view, product_views
from multimodal.search.retriever import ProductRetriever

TINY = "configs/retrieval/tiny.yaml"
COLUMNS = ["gender", "baseColour", "articleType"]
VIEWS = {"title_words": [2, 3], "attribute_columns": COLUMNS, "probability": 0.5}
PRODUCT = {"gender": "Women", "baseColour": None, "articleType": "Swimwear"}
# Every lever on, over the tiny config; the attribute columns reach the batch as text columns of the data.
LEVERS = ["--data.init_args.text_columns", json.dumps(["title", *COLUMNS]),
          "--model.init_args.query_columns", '["title"]', "--model.init_args.query_views", json.dumps(VIEWS),
          "--model.init_args.multi_positive", "true", "--model.init_args.matryoshka_dims", "[8, 16]",
          "--model.init_args.hard_negatives", '{"same": "articleType", "differ": "baseColour"}',
          "--model.init_args.text_skip", "true"]  # fmt: skip


def test_product_views_follow_the_configured_columns_and_order() -> None:
    views = QueryViews.parse(VIEWS)
    found = product_views("Nabaiji Women Cross-back Swimsuit", PRODUCT, views)
    phrases = [(v.text, v.columns) for v in found if v.kind == "attributes"]  # the unknown colour is left out
    assert phrases == [("women", ("gender",)), ("swimwear", ("articleType",)), ("women swimwear", tuple(COLUMNS[::2]))]
    words = [v.text for v in found if v.kind == "title_words"]
    assert len(words) == 6 + 4 and "nabaiji swimsuit" in words and "women cross-back swimsuit" in words
    draws = [draw_view("Nabaiji Women Cross-back Swimsuit", PRODUCT, views, random.Random(s)) for s in range(60)]
    assert draws == [
        draw_view("Nabaiji Women Cross-back Swimsuit", PRODUCT, views, random.Random(s)) for s in range(60)
    ]
    assert {d.kind for d in draws} == {"query", "title_words", "attributes"}
    assert {d.text for d in draws if d.kind != "query"} <= {v.text for v in found}


def test_bad_view_settings_are_one_line_errors() -> None:
    with pytest.raises(UserError, match=r"attribute_columns: \['colour'\] not among") as err:
        product_views("a b", PRODUCT, QueryViews.parse({"attribute_columns": ["colour"]}))
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="unknown key"):
        QueryViews.parse({"title_word": [2, 4]})
    with pytest.raises(UserError, match="min <= max"):
        QueryViews.parse({"title_words": [4, 2]})
    with pytest.raises(UserError, match="matryoshka_dims"):
        matryoshka_widths([16, 32], embed_dim=32)


def test_training_text_draws_views_deterministically() -> None:
    model = MultimodalCLI(args=["--config", TINY, *LEVERS], run=False).model
    texts = {
        "title": ["Nabaiji Women Cross-back Swimsuit", "Domyos Unisex Feather-light Jacket"],
        "gender": ["Women", "Unisex"],
        "baseColour": [None, "White"],
        "articleType": ["Swimwear", "Jackets"],
    }
    assert isinstance(model.eval().text_fn(), QueryAndProductText)
    assert not isinstance(model.text_fn(), ViewedQueryText)  # prediction and validation keep the real query
    fn = model.train().text_fn()
    assert isinstance(fn, ViewedQueryText)
    random.seed(0)
    first = fn(texts)
    random.seed(0)
    again = fn(texts)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert first["attribute_codes"].shape == first["view_columns"].shape == (2, 3)
    assert first["attribute_codes"][0, 1] < 0  # an unknown value has no code
    with pytest.raises(UserError, match="query_views.attribute_columns"):
        fn({"title": texts["title"], "gender": texts["gender"]})


def test_multi_positive_loss_is_info_nce_without_shared_attributes() -> None:
    g = torch.Generator().manual_seed(0)
    q, p = (F.normalize(torch.randn(6, 8, generator=g), dim=-1) for _ in range(2))
    codes = torch.arange(12).reshape(6, 2)  # no two products share a value
    positives = shared_attribute_positives(codes, torch.ones(6, 2, dtype=torch.bool))
    assert torch.equal(positives, torch.eye(6, dtype=torch.bool))
    scale = torch.tensor(10.0)
    assert torch.allclose(multi_positive_info_nce(q, p, scale, positives), info_nce(q, p, scale))


def test_multi_positive_loss_spreads_the_target_over_every_positive() -> None:
    codes = torch.tensor([[1, 5], [1, 6], [2, 5], [-1, 5]])
    stated = torch.tensor([[True, False], [False, False], [False, True], [True, True]])
    positives = shared_attribute_positives(codes, stated)
    expected = [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 1, 1], [0, 0, 0, 1]]  # an unknown value matches nothing
    assert positives.tolist() == [[bool(x) for x in row] for row in expected]
    g = torch.Generator().manual_seed(1)
    q, p = (F.normalize(torch.randn(4, 8, generator=g), dim=-1) for _ in range(2))
    logits = 5.0 * q @ p.t()
    target = positives.float()
    manual = (
        -((target * logits.log_softmax(1)).sum(1) / target.sum(1)).mean() / 2
        - ((target.t() * logits.t().log_softmax(1)).sum(1) / target.sum(0)).mean() / 2
    )
    assert torch.allclose(multi_positive_info_nce(q, p, torch.tensor(5.0), positives), manual)
    # a product that answers a query is no longer pushed away from it: the loss differs from one-hot InfoNCE
    assert not torch.allclose(manual, info_nce(q, p, torch.tensor(5.0)))


def test_matryoshka_loss_is_the_mean_over_prefixes() -> None:
    g = torch.Generator().manual_seed(2)
    q, p = (F.normalize(torch.randn(5, 16, generator=g), dim=-1) for _ in range(2))
    scale = torch.tensor(10.0)

    def loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return info_nce(a, b, scale)

    prefixes = [loss(F.normalize(q[:, :k], dim=-1), F.normalize(p[:, :k], dim=-1)) for k in (4, 8)]
    assert torch.allclose(matryoshka_loss(q, p, [4, 8], loss), torch.stack(prefixes).mean())


def test_hard_negative_order_groups_look_alikes() -> None:
    same = ["jeans", "jeans", "jeans", "shirt", "shirt", "watch"]
    differ = ["blue", "blue", "black", "blue", "white", None]
    # 0 is followed by jeans of another colour (2) and another blue thing (3); the rest have no look-alike left
    assert hard_negative_order(same, differ, [0, 1, 2, 3, 4, 5], per=1) == [0, 2, 3, 1, 4, 5]


def test_hard_negative_batches_meet_more_look_alikes(sample_df: pd.DataFrame) -> None:
    pairs = zip(sample_df["articleType"], sample_df["baseColour"], strict=True)
    records = [ProductRecord(i, str(i), [], {"articleType": t, "baseColour": c}) for i, (t, c) in enumerate(pairs)]
    shuffle = HardNegatives.parse({"same": "articleType", "differ": "baseColour"}).order(records, seed=0, batch_size=16)
    assert isinstance(shuffle, HardNegativeShuffle)
    order = [i for i, _ in shuffle]
    assert sorted(order) == list(range(len(records))) and order == [i for i, _ in shuffle]
    shuffle.skip = 32  # a resumed epoch goes on where the checkpoint stopped
    assert [i for i, _ in shuffle] == order[32:]

    def look_alikes(order: list[int]) -> int:
        batches = [order[k : k + 16] for k in range(0, len(order), 16)]
        t, c = sample_df["articleType"], sample_df["baseColour"]
        return sum(t[i] == t[j] and c[i] != c[j] for b in batches for i in b for j in b if i < j)

    assert look_alikes(order) > 2 * look_alikes([i for i, _ in EpochShuffle(len(records), 0)])
    with pytest.raises(UserError, match="hard_negatives: column 'colour' not among"):
        HardNegatives.parse({"same": "articleType", "differ": "colour"}).order(records, 0, 16)


def test_a_few_steps_with_matryoshka_log_the_prefix_loss() -> None:
    cli = MultimodalCLI(
        args=["--config", TINY, *LEVERS, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0"], run=False
    )
    cli.datamodule.attach(cli.model.train())
    batch = next(iter(cli.datamodule.loader("train", train=True)))
    assert batch["view_input_ids"].shape[0] == batch["input_ids"].shape[0] == 16
    assert not torch.equal(batch["view_input_ids"], batch["input_ids"])  # some queries are views
    cli.trainer.fit(cli.model, cli.datamodule)
    logged = cli.trainer.callback_metrics
    assert math.isfinite(float(logged["train/loss"])) and math.isfinite(float(logged["train/matryoshka"]))


def test_fit_with_every_lever_runs(tmp_path: Path) -> None:
    from multimodal.loading import load

    ckpt = fit_tiny("retriever", tmp_path / "run", SAMPLE_MANIFEST, SAMPLE_IMAGES, 2, *LEVERS)
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 2
    model = load(ckpt).model
    assert model.matryoshka_dims == [8, 16] and model.multi_positive
    assert not isinstance(model.text_fn(), ViewedQueryText)  # a loaded model embeds real queries


def test_text_skip_adds_the_product_texts_query_direction() -> None:
    from encoders.types import Features

    model = MultimodalCLI(args=["--config", TINY, "--model.init_args.text_skip", "true"], run=False).model.eval()
    g, dv, dt = torch.Generator().manual_seed(3), model.vision.output_dim, model.text.output_dim
    vision = Features(torch.randn(4, 5, dv, generator=g), torch.ones(4, 5, dtype=torch.bool), torch.randn(4, dv))
    text = Features(torch.randn(4, 6, dt, generator=g), torch.ones(4, 6, dtype=torch.bool), torch.randn(4, dt))
    with torch.no_grad():
        skip = model._product_vectors(vision, text, None)
        model.text_skip = False
        fused = model._product_vectors(vision, text, None)
        own = F.normalize(model.text_proj(text.pooled), dim=-1)  # the product text asked as a query
    assert torch.allclose(skip, F.normalize(fused + own, dim=-1), atol=1e-6)
    # a query that says what the product text says scores higher against the product than through the fusion alone
    assert bool(((skip * own).sum(-1) > (fused * own).sum(-1)).all())
    with pytest.raises(UserError, match="text_skip needs fused product vectors"):
        ProductRetriever(model.vision, model.text, embed_dim=32, product="image", text_skip=True)


def test_the_shopper_config_parses_with_its_levers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    import yaml

    from multimodal.cli import main

    monkeypatch.setattr(sys, "argv", ["multimodal"])
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", "configs/retrieval/shopper_queries.yaml", "--print_config"])
    assert info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    args = printed["model"]["init_args"]
    assert (args["product"], args["text_skip"], args["multi_positive"]) == ("fused", True, True)
    assert args["matryoshka_dims"] == [64, 128] and args["hard_negatives"] is None
    columns = printed["data"]["init_args"]["text_columns"]
    assert set(args["product_columns"]) | set(args["query_views"]["attribute_columns"]) <= set(columns)
