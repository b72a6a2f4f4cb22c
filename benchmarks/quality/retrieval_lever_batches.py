"""Retrieval quality's training batches with the levers the data module applies in ``multimodal fit``: the benchmark
trains on cached features through its own loader of row indices, so it draws the query views and orders the
epochs itself, with the library's functions.

- Views (``query_views``): one view per product per step (:func:`multimodal.search.query_views.draw_view`, seeded,
  with the configured probability); the batch's ``view_input_ids`` point at the view's cached text row (the title's
  row when the draw keeps the title), with the ``view_columns`` it states and the products' ``attribute_codes`` that
  the multi-positive loss reads, as :class:`multimodal.search.query_views.ViewedQueryText` gives them.
- Hard negatives (``hard_negatives``): each epoch's order is a seeded shuffle regrouped by
  :func:`multimodal.search.hard_negatives.hard_negative_order`, about a quarter of a batch per kind of look-alike.

Without levers the loader is the plain shuffled one, so a retriever without levers trains as before.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from benchmarks.quality.retrieval_data import Encoded, batch_of
from multimodal.search.hard_negatives import hard_negative_order
from multimodal.search.query_views import QueryViews, attribute_code, draw_view
from multimodal.search.retriever import ProductRetriever


class LeverBatches:
    """The training collate: :func:`batch_of` of the rows, plus a drawn view per product when ``views`` is set.

    Args:
        data: the encoded catalogue, with its training products' views cached (``view_rows``).
        views: the retriever's view settings (None: no views).
        seed: seed of the draws (``random.Random``): the same seed, the same views step by step.
    """

    def __init__(self, data: Encoded, views: QueryViews | None, seed: int) -> None:
        self.data, self.views, self.rng = data, views, random.Random(seed)

    def __call__(self, rows: list[int]) -> dict[str, Any]:
        data = self.data
        batch = batch_of(rows, data.n, data.ids)
        if self.views is None:
            return batch
        columns = self.views.attribute_columns
        drawn = [draw_view(data.titles[r], data.records[r].texts, self.views, self.rng) for r in rows]
        missing = [v.text for v in drawn if v.kind != "query" and v.text not in data.view_rows]
        if missing:
            raise RuntimeError(f"query views drawn but not encoded (the views of other settings?): {missing[:3]}")
        idx = torch.tensor(
            [r if v.kind == "query" else data.view_rows[v.text] for r, v in zip(rows, drawn, strict=True)]
        )
        batch["view_input_ids"], batch["view_attention_mask"] = idx[:, None], torch.ones_like(idx)[:, None]
        stated = [[c in v.columns for c in columns] for v in drawn]
        batch["view_columns"] = torch.tensor(stated, dtype=torch.bool).reshape(len(rows), len(columns))
        codes = [[attribute_code(data.records[r].texts[c]) for c in columns] for r in rows]
        batch["attribute_codes"] = torch.tensor(codes, dtype=torch.long).reshape(len(rows), len(columns))
        return batch


class HardNegativeOrder(Sampler[int]):
    """Positions of the training rows, epoch by epoch: a shuffle seeded by ``(seed, epoch)`` regrouped by
    :func:`hard_negative_order` (each ``__iter__`` is the next epoch).

    Args:
        same: each training product's lowercased ``same`` value (None: unknown).
        differ: its ``differ`` value.
        per: look-alikes of each kind placed after an item.
        seed: seed of the shuffles.
    """

    def __init__(self, same: list[str | None], differ: list[str | None], per: int, seed: int) -> None:
        self.same, self.differ, self.per, self.seed, self.epoch = same, differ, per, seed, 0

    def __len__(self) -> int:
        return len(self.same)

    def __iter__(self) -> Iterator[int]:
        shuffled = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.same)).tolist()
        self.epoch += 1
        return iter(hard_negative_order(self.same, self.differ, shuffled, self.per))


def training_loader(model: ProductRetriever, data: Encoded, rows: list[int], batch_size: int, seed: int) -> DataLoader:
    """The loader of ``rows`` (training products) with the levers ``model`` was built with; the plain shuffled loader
    (torch's seeded shuffle) when it has none."""
    collate = LeverBatches(data, model.query_views, seed)
    if model.hard_negatives is None:
        return DataLoader(rows, batch_size=batch_size, shuffle=True, drop_last=True, collate_fn=collate)
    same, differ = model.hard_negatives.values([data.records[r] for r in rows])
    order = HardNegativeOrder(same, differ, max(1, batch_size // 4), seed)
    return DataLoader(rows, batch_size=batch_size, sampler=order, drop_last=True, collate_fn=collate)
