"""Consensus reranking as a post-processor of generation: beam search proposes several captions per photo, and the
one closest in CIDEr-D to the titles of the most similar catalogue photos is kept
(:mod:`multimodal.captioning.consensus`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from encoders.types import Features
from multimodal.captioning.consensus import CiderConsensus
from multimodal.captioning.retrieval import CaptionMemory
from multimodal.captioning.settings import RerankSettings
from multimodal.errors import UserError


def call_settings(value: Any, model: RerankSettings | None, memory: CaptionMemory | None) -> RerankSettings | None:
    """The reranking one caption call gets (:meth:`RerankSettings.for_call`); a one-line error without a memory."""
    settings = RerankSettings.for_call(value, model)
    if settings is not None and memory is None:
        raise UserError(
            "rerank: this captioner holds no caption memory to rerank against: fit it with model.rerank or "
            "model.retrieval set (the memory of the training photos and titles is saved in the checkpoint)"
        )
    return settings


def widen(options: dict[str, Any], settings: RerankSettings) -> dict[str, Any]:
    """``generate`` options that return ``candidates`` captions per item (beam search at least that wide unless
    sampling)."""
    n = settings.candidates
    widened = dict(options)
    if not widened.get("do_sample"):
        widened["num_beams"] = max(int(widened.get("num_beams") or 1), n)
    widened["num_return_sequences"] = n
    return widened


class ConsensusReranker:
    """Keeps one caption per item out of its candidates; caches the CIDEr-D scorer of the memory it last served
    (its document frequencies are the memory's titles, costly to count per call)."""

    def __init__(self) -> None:
        self._cached: tuple[CaptionMemory, CiderConsensus] | None = None

    def consensus(self, memory: CaptionMemory | None) -> CiderConsensus:
        """CIDEr-D scorer whose document frequencies are ``memory``'s titles (built once per memory)."""
        if memory is None:
            raise UserError("rerank: this captioner holds no caption memory")
        if self._cached is None or self._cached[0] is not memory:
            self._cached = (memory, CiderConsensus(memory.titles))
        return self._cached[1]

    def __call__(
        self,
        memory: CaptionMemory,
        vision: Features,
        texts: Sequence[str],
        scores: Sequence[float],
        settings: RerankSettings,
        exclude: list[str] | None = None,
        has_image: Tensor | None = None,
    ) -> tuple[list[str], list[float]]:
        """Per item, the best of its ``candidates`` consecutive ``texts`` (with ``scores``): the closest consensus
        with its neighbours' titles. ``exclude`` holds each item's product id (its own title is never a neighbour);
        items whose ``has_image`` is False have no neighbours and keep the best-scored candidate."""
        neighbours = memory.neighbours(vision, settings.k, exclude=exclude)
        present = [True] * len(neighbours) if has_image is None else [bool(h) for h in has_image.tolist()]
        titles = [[memory.titles[r] for r in rows] if on else [] for rows, on in zip(neighbours, present, strict=True)]
        return self.consensus(memory).pick(texts, scores, titles, settings.weight)
