"""Retrieval quality's data: the frozen towers run once over every product, their outputs read back by row through
lookup encoders (so the retrievers train in minutes), and the batches that carry those rows."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from benchmarks.common import say
from benchmarks.quality.retrieval_cache import cached, key_of
from benchmarks.quality.retrieval_levers import view_texts
from benchmarks.quality.retrieval_queries import QuerySet, query_sets
from encoders.pretrained import EfficientNetLiteEncoder, MiniLMTextEncoder
from encoders.types import Features, ImageTransform, TextEncoder, VisionEncoder
from multimodal.data.datamodule import ProductDataModule
from multimodal.data.dataset import Collate
from multimodal.search.query_views import QueryViews


class CachedVision(VisionEncoder):
    """Frozen photo features looked up by row: ``pixel_values`` carries row indices ``(B,)``."""

    def __init__(self, tokens: Tensor, pooled: Tensor) -> None:
        super().__init__()
        self.tokens, self.pooled, self.output_dim = tokens, pooled, pooled.shape[1]

    def forward(self, pixel_values: Tensor) -> Features:
        idx = pixel_values.long()
        tokens = self.tokens[idx].float()
        return Features(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool), self.pooled[idx].float())

    def image_transform(self, train: bool) -> ImageTransform:
        raise NotImplementedError


class CachedText(TextEncoder):
    """Frozen text features looked up by row: ``input_ids`` carries row indices ``(B, 1)``.

    The rows past ``tokens`` (training query views: only their pooled vector is read) keep the pooled vector alone,
    given as their one token.
    """

    def __init__(self, tokens: Tensor, mask: Tensor, pooled: Tensor, tokenizer: Any) -> None:
        super().__init__()
        self.tokens, self.mask, self.pooled, self._tok = tokens, mask, pooled, tokenizer
        self.output_dim, self.max_length = pooled.shape[1], tokens.shape[1]

    @property
    def tokenizer(self) -> Any:
        return self._tok

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Features:
        idx = input_ids[:, 0].long()
        pooled = self.pooled[idx].float()
        listed = idx < len(self.tokens)
        if bool(listed.all()):
            return Features(self.tokens[idx].float(), self.mask[idx], pooled)
        tokens = torch.zeros(len(idx), self.max_length, self.output_dim)  # (B, T, D)
        mask = torch.zeros(len(idx), self.max_length, dtype=torch.bool)
        tokens[listed], mask[listed] = self.tokens[idx[listed]].float(), self.mask[idx[listed]]
        tokens[~listed, 0], mask[~listed, 0] = pooled[~listed], True
        return Features(tokens, mask, pooled)


@torch.inference_mode()
def encode_images(
    dm: ProductDataModule, vision: EfficientNetLiteEncoder, batch_size: int, workers: int
) -> tuple[Tensor, Tensor]:
    class Pre:  # the data module's preprocessing hooks, with the pretrained tower's eval transform
        def image_transform(self, train: bool) -> ImageTransform:
            return vision.image_transform(False)

        def text_fn(self) -> Any:
            return lambda texts: {}

    dm.attach(Pre())  # type: ignore[arg-type]
    loader = DataLoader(dm.dataset("all"), batch_size=batch_size, num_workers=workers, collate_fn=Collate(lambda t: {}))
    tokens, pooled = [], []
    for i, batch in enumerate(loader):
        f = vision(batch["pixel_values"])
        tokens.append(f.tokens.half())
        pooled.append(f.pooled)
        if i % 10 == 0:
            say(f"  photos {sum(len(p) for p in pooled)}/{len(loader.dataset)}")
    return torch.cat(tokens), torch.cat(pooled)


@torch.inference_mode()
def encode_texts(texts: Sequence[str], text: MiniLMTextEncoder, batch_size: int = 128) -> tuple[Tensor, Tensor, Tensor]:
    tokens, masks, pooled = [], [], []
    for start in range(0, len(texts), batch_size):
        enc = text.tokenize(list(texts[start : start + batch_size]))
        f = text(enc["input_ids"], enc["attention_mask"])
        pad = text.max_length - f.tokens.shape[1]
        tokens.append(torch.nn.functional.pad(f.tokens, (0, 0, 0, pad)))
        masks.append(torch.nn.functional.pad(f.mask, (0, pad), value=False))
        pooled.append(f.pooled)
    return torch.cat(tokens), torch.cat(masks), torch.cat(pooled)


@torch.inference_mode()
def encode_pooled(
    texts: Sequence[str], text: MiniLMTextEncoder, batch_size: int = 256, label: str = "query views"
) -> Tensor:
    """The pooled vectors ``(N, D)`` of ``texts`` alone (many short texts: their tokens are not kept); the progress
    lines name them ``label``."""
    pooled = []
    for start in range(0, len(texts), batch_size):
        enc = text.tokenize(list(texts[start : start + batch_size]))
        pooled.append(text(enc["input_ids"], enc["attention_mask"]).pooled)
        if start // batch_size % 50 == 0:
            say(f"  {label} {start + len(pooled[-1])}/{len(texts)}")
    return torch.cat(pooled) if pooled else torch.zeros(0, text.output_dim)


def batch_of(rows: list[int], n: int, ids: list[str]) -> dict[str, Any]:
    idx = torch.tensor(rows)
    ones = torch.ones(len(rows), 1, dtype=torch.long)
    return {
        "ids": [ids[r] for r in rows],
        "pixel_values": idx,
        "input_ids": idx[:, None],
        "attention_mask": ones,
        "product_input_ids": (idx + n)[:, None],
        "product_attention_mask": ones,
        "has_text": torch.ones(len(rows), dtype=torch.bool),
    }


def shopper_query(title: str, rng: Any, words: int = 3) -> str:
    """``words`` of a title's words chosen at random, in title order (the whole title when it is that short)."""
    parts = title.split()
    if len(parts) <= words:
        return title
    return " ".join(parts[i] for i in sorted(rng.choice(len(parts), size=words, replace=False).tolist()))


@dataclasses.dataclass
class Encoded:
    """The catalogue as the retrievers read it: products in split order (train, val, test), the frozen towers'
    outputs behind lookup encoders, the texts of every row (text rows: titles 0.., product texts n.., shopper
    queries 2n.., the whole-catalogue query sets' new queries 3n.., then the training products' query views, pooled
    only: ``view_rows`` maps a view's text to its row) and those query sets."""

    records: list[Any]
    split_rows: dict[str, list[int]]
    vision: CachedVision
    text: CachedText
    text_tower: MiniLMTextEncoder
    v_pooled: Tensor
    titles: list[str]
    shopper: list[str]
    query_sets: list[QuerySet]
    view_rows: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.records)

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.records]


def encode(args: argparse.Namespace, views: Sequence[QueryViews] = (), lever_columns: Sequence[str] = ()) -> Encoded:
    """Read the catalogue's split (capped by ``--max-train`` / ``--max-eval``) and run the frozen towers once.

    Args:
        args: the program's arguments.
        views: view settings whose views of every training product are encoded too.
        lever_columns: further text columns the training levers read.
    """
    data = Path(args.data)
    queried = [*args.category_columns, args.colour_column, *args.combination_columns]  # the query sets' columns
    columns = [args.query_column, *args.product_columns, *args.attributes, *queried, *lever_columns]
    columns = list(dict.fromkeys(columns))
    dm = ProductDataModule(str(data / "metadata.csv"), str(data / "images"), text_columns=columns,
                           on_bad_sample="error", batch_size=args.batch_size)  # fmt: skip
    for split, cap in {"train": args.max_train, "val": args.max_eval, "test": args.max_eval}.items():
        dm.splits[split] = dm.splits[split][:cap]  # a cap of None keeps them all
    records = [r for s in ("train", "val", "test") for r in dm.splits[s]]
    offsets = {"train": 0, "val": len(dm.splits["train"]), "test": len(dm.splits["train"]) + len(dm.splits["val"])}
    split_rows = {s: list(range(offsets[s], offsets[s] + len(dm.splits[s]))) for s in offsets}
    say(f"{len(records)} products: train {len(split_rows['train'])}, test {len(split_rows['test'])}")
    vision_tower = EfficientNetLiteEncoder(0, image_size=args.image_size, trainable=False).eval()
    text_tower = MiniLMTextEncoder(max_length=32, trainable=False).eval()
    photos_key = key_of(str(data.resolve()), [r.id for r in records], args.image_size)
    v_tokens, v_pooled = cached(args.cache, "photos", photos_key,
                                lambda: encode_images(dm, vision_tower, args.batch_size, args.workers))  # fmt: skip
    say("photos encoded")
    titles = [r.texts[args.query_column] or "" for r in records]
    product_texts = [". ".join(r.texts[c] for c in args.product_columns if r.texts[c]) for r in records]
    rng = np.random.default_rng(args.seed)
    shopper = [shopper_query(t, rng) for t in titles]
    sets, queries = query_sets(records, split_rows["test"], titles, shopper, args)
    texts = titles + product_texts + shopper + queries
    t_tokens, t_mask, t_pooled = cached(args.cache, "texts", key_of(texts), lambda: encode_texts(texts, text_tower))
    say(f"texts encoded ({len(queries)} whole-catalogue queries)")
    viewed = view_texts(records, split_rows["train"], titles, list(views))
    view_rows = {t: len(t_pooled) + i for i, t in enumerate(viewed)}
    if viewed:
        views_pooled = cached(args.cache, "views", key_of(viewed), lambda: encode_pooled(viewed, text_tower))
        t_pooled = torch.cat([t_pooled, views_pooled])
        say(f"{len(viewed)} query views of the training products encoded")
    text = CachedText(t_tokens, t_mask, t_pooled, text_tower.tokenizer)
    vision = CachedVision(v_tokens, v_pooled)
    return Encoded(records, split_rows, vision, text, text_tower, v_pooled, titles, shopper, sets, view_rows)
