"""Consensus reranking of caption candidates (Devlin et al., 2015, "Exploring Nearest Neighbor Approaches for Image
Captioning"; minimum-Bayes-risk decoding with a CIDEr utility).

The captioner's beam search proposes several captions; the titles of the catalogue products whose photos look most
like this one (the :class:`~multimodal.captioning.retrieval.CaptionMemory`) are the consensus. Each candidate is
scored by its mean CIDEr-D similarity to those titles, plus ``weight`` times its beam score, and the best one is
kept. A candidate that uses the words the similar products' titles agree on (brand, product type, gender, colour)
wins over one the language model merely finds likely.

CIDEr-D here is the metric of Vedantam et al. (2015) as pycocoevalcap computes it: 1- to 4-gram term-frequency x
inverse-document-frequency vectors, clipped cosine per n-gram order, averaged, times a Gaussian length penalty
(sigma 6) and 10; the document frequencies come from the memory's titles (the catalogue), not from the references.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from multimodal.captioning.metrics import caption_tokens

ORDERS = 4  # n-gram orders 1..4
SIGMA = 6.0  # CIDEr-D's length penalty


@dataclass(frozen=True)
class _Vector:
    weights: tuple[dict[tuple[str, ...], float], ...]  # per n-gram order: n-gram -> tf x idf
    norms: tuple[float, ...]
    length: int


class CiderConsensus:
    """CIDEr-D similarity between captions, with document frequencies from ``corpus`` (one text per document).

    Example::

        consensus = CiderConsensus(catalogue_titles)
        best = consensus.choose(["nike men black shoes", "puma men shoes"], [-0.3, -0.2], neighbour_titles)
    """

    def __init__(self, corpus: Sequence[str]) -> None:
        frequency: Counter[tuple[str, ...]] = Counter()
        for text in corpus:
            frequency.update(set(_grams(caption_tokens(text))))
        self.frequency = frequency
        self.log_documents = math.log(max(len(corpus), 1))
        self._cache: dict[str, _Vector] = {}

    def vector(self, text: str) -> _Vector:
        found = self._cache.get(text)
        if found is not None:
            return found
        words = caption_tokens(text)
        weights: tuple[dict[tuple[str, ...], float], ...] = tuple({} for _ in range(ORDERS))
        for gram, count in _grams(words).items():
            idf = self.log_documents - math.log(max(1.0, self.frequency.get(gram, 0)))
            weights[len(gram) - 1][gram] = count * idf
        norms = tuple(math.sqrt(sum(w * w for w in order.values())) for order in weights)
        vector = _Vector(weights, norms, len(words))
        if len(self._cache) < 200_000:  # catalogue titles repeat across queries; bound the cache all the same
            self._cache[text] = vector
        return vector

    def similarity(self, candidate: str, reference: str) -> float:
        """CIDEr-D of ``candidate`` against one ``reference`` (0 when either has no words)."""
        a, b = self.vector(candidate), self.vector(reference)
        total = 0.0
        for n in range(ORDERS):
            if not a.norms[n] or not b.norms[n]:
                continue
            ref = b.weights[n]
            total += sum(min(w, ref.get(g, 0.0)) * ref.get(g, 0.0) for g, w in a.weights[n].items()) / (
                a.norms[n] * b.norms[n]
            )
        return 10.0 * total / ORDERS * math.exp(-((a.length - b.length) ** 2) / (2 * SIGMA**2))

    def consensus(self, candidate: str, references: Sequence[str]) -> float:
        """Mean CIDEr-D of ``candidate`` against ``references`` (0 without references)."""
        if not references:
            return 0.0
        return sum(self.similarity(candidate, r) for r in references) / len(references)

    def choose(
        self, candidates: Sequence[str], scores: Sequence[float], references: Sequence[str], weight: float = 0.0
    ) -> int:
        """Index of the candidate with the highest consensus with ``references`` + ``weight`` x its score; ties
        and empty candidates go to the earlier (better-scored) one, so without references the first candidate wins."""
        if not candidates:
            raise ValueError("no caption candidates to choose from")
        best, best_value = 0, -math.inf
        for i, (text, score) in enumerate(zip(candidates, scores, strict=True)):
            if not caption_tokens(text):
                continue
            value = self.consensus(text, references) + weight * float(score)
            if value > best_value + 1e-12:
                best, best_value = i, value
        return best

    def pick(
        self, texts: Sequence[str], scores: Sequence[float], references: Sequence[Sequence[str]], weight: float = 0.0
    ) -> tuple[list[str], list[float]]:
        """Per item, :meth:`choose` among its ``n`` consecutive candidates of ``texts`` / ``scores`` (``n`` =
        ``len(texts) // len(references)``) with its ``references``; returns the chosen texts and their scores."""
        n = len(texts) // max(len(references), 1)
        if n * len(references) != len(texts) or len(scores) != len(texts):
            raise ValueError(f"{len(texts)} candidates and {len(scores)} scores for {len(references)} items")
        chosen, kept = [], []
        for i, refs in enumerate(references):
            candidates, beam = texts[i * n : (i + 1) * n], scores[i * n : (i + 1) * n]
            best = self.choose(candidates, beam, refs, weight)
            chosen.append(candidates[best])
            kept.append(beam[best])
        return chosen, kept


def _grams(words: Sequence[str]) -> Counter[tuple[str, ...]]:
    counts: Counter[tuple[str, ...]] = Counter()
    for n in range(1, ORDERS + 1):
        for i in range(len(words) - n + 1):
            counts[tuple(words[i : i + n])] += 1
    return counts
