"""Tagging quality's peers: TF-IDF + logistic regression on the product text (``peer``), and next to the same frozen
photo features the taggers read (``peer_image``). The text is every ``--text-columns`` column, joined as the taggers
join them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import say
from benchmarks.quality.towers import image_key
from multimodal.onnx.preprocess import join_texts
from multimodal.onnx.preprocess_export import SEPARATOR


def run_peer(
    args: argparse.Namespace, dm: Any, photos: dict[str, Any] | None = None
) -> tuple[dict[str, dict[str, str]], dict[str, Any]]:
    """TF-IDF (word 1-2 grams) + LogisticRegression on the text, one model per attribute; C chosen on val. With
    ``photos`` (record id -> pooled frozen photo vector, see :func:`photo_vectors`) the photo features sit next to
    the TF-IDF, their weight chosen on val with C (``peer_image``)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    name = "peer" if photos is None else "peer_image"
    train, val, test = dm.splits["train"], dm.splits["val"], dm.splits["test"]
    dense = _photo_features(photos, train, [*train, *val, *test]) if photos is not None else {}
    weights = [None] if photos is None else args.peer_image_weights
    preds: dict[str, dict[str, str]] = {r.id: {} for r in test}
    info: dict[str, Any] = {"chosen_C": {}, **({"chosen_image_weight": {}} if photos is not None else {})}
    for a in args.attributes:
        rows = [r for r in train if r.labels[a] is not None]
        y = [r.labels[a] for r in rows]
        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit([_text(r) for r in rows])
        if len(set(y)) == 1:  # LogisticRegression needs two classes
            for r in test:
                preds[r.id][a] = y[0]
            continue
        inputs = _Inputs(vec, dense)
        val_rows = [r for r in val if r.labels[a] is not None]
        f1, c, weight, clf = _best_model(args.peer_c, weights, inputs, rows, y, val_rows, a)
        info["chosen_C"][a] = c
        if photos is not None:
            info["chosen_image_weight"][a] = weight
        for r, label in zip(test, clf.predict(inputs(test, weight)), strict=True):
            preds[r.id][a] = str(label)
        chosen = f"C={c}" + ("" if weight is None else f", photo weight {weight}")
        say(f"{name}: {a}: {chosen} (val macro-F1 {f1:.3f})")
    return preds, info


def _text(record: Any) -> str:
    """The record's text columns joined as the taggers' text function joins them (a missing value left out)."""
    return join_texts({c: [t] for c, t in record.texts.items()}, None, SEPARATOR)[0]


def _photo_features(photos: dict[str, Any], train: list[Any], records: list[Any]) -> dict[str, Any]:
    """Photo vectors standardised on ``train``, L2-normalised; a product without a photo gets zeros + a flag."""
    import numpy as np

    width = len(next(iter(photos.values())))
    mean = np.mean([photos[r.id] for r in train if r.id in photos], 0)
    std = np.std([photos[r.id] for r in train if r.id in photos], 0) + 1e-6
    dense = {}
    for r in records:
        v = (photos[r.id] - mean) / std if r.id in photos else np.zeros(width)
        dense[r.id] = np.append(v / max(np.linalg.norm(v), 1e-6), 0.0 if r.id in photos else 1.0)
    return dense


class _Inputs:
    """The peer's input rows: TF-IDF of the text, with the photo features times ``weight`` beside it (not None)."""

    def __init__(self, vectorizer: Any, dense: dict[str, Any]) -> None:
        self.vectorizer, self.dense = vectorizer, dense

    def __call__(self, rows: list[Any], weight: float | None) -> Any:
        import numpy as np
        from scipy import sparse

        x = self.vectorizer.transform([_text(r) for r in rows])
        if weight is None:
            return x
        return sparse.hstack([x, sparse.csr_matrix(weight * np.stack([self.dense[r.id] for r in rows]))]).tocsr()


def _best_model(
    cs: list[float], weights: list[float | None], inputs: _Inputs, rows: list[Any], y: list[str], val: list[Any],
    attribute: str,
) -> tuple[float, float, float | None, Any]:  # fmt: skip
    """(val macro-F1, C, photo weight, fitted model) of the best C x weight on ``val`` (the first C without one)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    best: tuple[float, float, float | None, Any] | None = None
    for weight in weights:
        x = inputs(rows, weight)
        for c in cs:
            clf = LogisticRegression(C=c, max_iter=3000).fit(x, y)
            if not val:
                best = (0.0, c, weight, clf)
                break
            yv = [r.labels[attribute] for r in val]
            pv = clf.predict(inputs(val, weight))
            f1 = f1_score(yv, pv, labels=sorted(set(yv) | set(pv)), average="macro", zero_division=0)
            if best is None or f1 > best[0]:
                best = (f1, c, weight, clf)
    assert best is not None
    return best


def photo_vectors(dm: Any, image_root: Path, cache: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Record id -> the frozen photo tower's pooled vector (row 0 of the vision cache), for every readable photo."""
    from multimodal.data.images import load_image, resolve_image_path
    from multimodal.errors import BadSampleError

    out: dict[str, Any] = {}
    for r in [r for split in dm.splits.values() for r in split]:
        if r.image is None:
            continue
        try:
            key = image_key(load_image(resolve_image_path(image_root, r.image)))
        except BadSampleError:
            continue
        if key in cache:
            out[r.id] = cache[key][0].numpy()
    return out
