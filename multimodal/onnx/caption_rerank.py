"""Consensus reranking on ONNX Runtime, without torch: the caption memory as arrays searched with FAISS, the
candidates from :class:`~multimodal.onnx.decoding.CaptionDecoder`'s beam search, the pick by
:class:`~multimodal.captioning.consensus.CiderConsensus` (pure Python), as
:func:`multimodal.captioning.generation.generate_captions` does eagerly.

The export writes the memory the checkpoint holds (:func:`write_memory`): the FAISS index's rows (centred,
normalised photo keys), their mean, the titles, the product ids and the separator. A query's key is the vision
graph's grid tokens average-pooled to 2 x 2 (or its pooled vector), as
:func:`multimodal.captioning.retrieval.raw_keys` computes it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from multimodal.errors import UserError

MEMORY = "caption_memory.npz"
KEY_GRID = 2  # as multimodal.captioning.retrieval.KEY_GRID


def write_memory(memory: Any, folder: Path) -> str:
    """Save a :class:`~multimodal.captioning.retrieval.CaptionMemory` into ``folder``; returns the file name."""
    rows = memory.index.reconstruct_n(0, len(memory)).astype(np.float32)
    text = json.dumps({"titles": memory.titles, "ids": memory.ids, "separator": memory.separator})
    np.savez(folder / MEMORY, rows=rows, mean=memory.mean.numpy().astype(np.float32), text=np.array(text))
    return MEMORY


def raw_keys(tokens: np.ndarray, pooled: np.ndarray) -> np.ndarray:
    """``(N, K)`` float32: grid tokens ``(N, T, D)`` average-pooled to 2 x 2 and flattened channel-first (as
    ``adaptive_avg_pool2d(...).flatten(1)``), or ``pooled (N, D)`` when the tokens are not a square grid."""
    n, t, d = tokens.shape
    side = math.isqrt(t)
    if side * side != t or side < KEY_GRID:
        return pooled.astype(np.float32)
    grid = tokens.astype(np.float32).transpose(0, 2, 1).reshape(n, d, side, side)
    edges = [(i * side // KEY_GRID, -(-(i + 1) * side // KEY_GRID)) for i in range(KEY_GRID)]  # floor, ceil
    cells = [grid[:, :, r0:r1, c0:c1].mean((2, 3)) for r0, r1 in edges for c0, c1 in edges]  # (N, D) each
    return np.stack(cells, -1).reshape(n, d * KEY_GRID * KEY_GRID)


class MemoryIndex:
    """An exported caption memory: titles of the catalogue photos most like a query photo."""

    def __init__(self, path: str | Path) -> None:
        import faiss

        data = np.load(path)
        text = json.loads(str(data["text"]))
        self.titles: list[str] = text["titles"]
        self.ids: list[str] = text["ids"]
        self.mean = data["mean"]
        self.index = faiss.IndexFlatIP(data["rows"].shape[1])
        self.index.add(np.ascontiguousarray(data["rows"]))
        self._row = {i: r for r, i in enumerate(self.ids)}
        self._consensus: Any = None

    @property
    def consensus(self) -> Any:
        """The CIDEr-D scorer whose document frequencies are the memory's titles (built once: costly)."""
        from multimodal.captioning.consensus import CiderConsensus

        if self._consensus is None:
            self._consensus = CiderConsensus(self.titles)
        return self._consensus

    def neighbours(self, keys: np.ndarray, k: int, exclude: Sequence[str] | None = None) -> list[list[int]]:
        """Row ids of the ``k`` nearest photos of each query key, best first; ``exclude``: per query, a product
        id left out."""
        if keys.shape[1] != self.mean.shape[0]:
            raise UserError(f"caption memory: photo keys of width {keys.shape[1]} do not match {self.mean.shape[0]}")
        centred = keys - self.mean
        norms = np.maximum(np.linalg.norm(centred, axis=-1, keepdims=True), 1e-12)  # F.normalize's eps
        extra = 1 if exclude is not None else 0
        _, found = self.index.search(np.ascontiguousarray(centred / norms, np.float32), min(k + extra, len(self.ids)))
        out = []
        for q, row in enumerate(found.tolist()):
            own = self._row.get(str(exclude[q]), -1) if exclude is not None else -1
            out.append([i for i in row if i >= 0 and i != own][:k])
        return out


def widen(options: dict[str, Any], candidates: int) -> dict[str, Any]:
    """Beam search at least ``candidates`` wide returning ``candidates`` captions per item (as eager reranking)."""
    return {**options, "num_beams": max(int(options.get("num_beams") or 1), candidates),
            "num_return_sequences": candidates}  # fmt: skip


def pick(
    memory: MemoryIndex,
    settings: dict[str, Any],
    vision: dict[str, np.ndarray],
    texts: Sequence[str],
    scores: Sequence[float],
    exclude: Sequence[str] | None = None,
    has_image: np.ndarray | None = None,
) -> tuple[list[str], list[float]]:
    """Per item, the best of its ``candidates`` consecutive ``texts``: the closest CIDEr-D consensus with the
    titles of its ``k`` neighbours (+ ``weight`` x beam score). ``vision`` holds the vision graph's ``tokens`` and
    ``pooled``; items whose ``has_image`` is False keep the best-scored candidate."""
    rows = memory.neighbours(raw_keys(vision["tokens"], vision["pooled"]), int(settings["k"]), exclude)
    present = [True] * len(rows) if has_image is None else [bool(h) for h in has_image.tolist()]
    titles = [[memory.titles[r] for r in row] if on else [] for row, on in zip(rows, present, strict=True)]
    return memory.consensus.pick(texts, scores, titles, float(settings["weight"]))
