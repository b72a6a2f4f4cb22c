"""Caption quality: BLEU-4 (torchmetrics) and CIDEr-D (pycocoevalcap's pure-Python Cider scorer, no Java)."""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD = re.compile(r"[a-z0-9]+")


def caption_tokens(text: str) -> list[str]:
    """Lower-cased runs of letters and digits; punctuation splits words, so "men's" and "men ' s" agree.

    Stands in for the Java PTB tokenizer of the COCO toolkit.
    """
    return _WORD.findall(text.lower())


def normalise(text: str) -> str:
    """The caption as the scorers see it: tokens joined by single spaces."""
    return " ".join(caption_tokens(text))


def bleu4(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 of ``predictions`` against one or more references each (torchmetrics ``BLEUScore``)."""
    from torchmetrics.text import BLEUScore  # here: the torch-free consensus reranker imports this module

    if not predictions:
        return 0.0
    metric = BLEUScore(n_gram=4)
    return float(metric([normalise(p) for p in predictions], [[normalise(r) for r in refs] for refs in references]))


def cider(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr-D (pycocoevalcap ``Cider``; document frequencies from these references)."""
    if not predictions:
        return 0.0
    from pycocoevalcap.cider.cider import Cider

    gts = {i: [normalise(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [normalise(p)] for i, p in enumerate(predictions)}
    score, _ = Cider().compute_score(gts, res)
    return float(score)


def caption_scores(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict[str, float]:
    """``{"bleu4": ..., "cider": ..., "exact": ...}`` over pairs; a reference may be a string or a list of them."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    exact = sum(normalise(p) in {normalise(r) for r in rs} for p, rs in zip(predictions, refs, strict=True))
    return {
        "bleu4": bleu4(predictions, refs),
        "cider": cider(predictions, refs),
        "exact": exact / max(len(predictions), 1),
    }
