"""Scoring answers to questions about products: exact match per attribute (case and spacing aside) of a captioner's
answers, of a tagger's labels and of the most frequent training value, on the same test products; title CIDEr of a
captioner's captions. Every model is used through its Python API (``multimodal.load``), as users do."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from multimodal.captioning.metrics import caption_scores


def norm(text: Any) -> str:
    return " ".join(str(text).lower().split()) if text is not None and text == text else ""


def split_frames(manifest: str, image_root: str, columns: list[str]) -> dict[str, pd.DataFrame]:
    """The train and test products of the data module's split (a stable hash of the id), as DataFrames with
    absolute photo paths and the text ``columns``."""
    from multimodal.data.datamodule import ProductDataModule

    dm = ProductDataModule(manifest=manifest, image_root=image_root, text_columns=columns, on_bad_sample="skip")
    frames = {}
    for split in ("train", "test"):
        rows = [{"id": r.id, "image": str(Path(image_root, str(r.image)).resolve()), **r.texts}
                for r in dm.splits[split] if r.image is not None]  # fmt: skip
        frames[split] = pd.DataFrame(rows)
    return frames


def accuracy(predicted: list[Any], truth: list[Any]) -> float:
    pairs = [(norm(p), norm(t)) for p, t in zip(predicted, truth, strict=True) if norm(t)]
    return round(sum(p == t for p, t in pairs) / max(len(pairs), 1), 4)


def answers(ckpt: Path, test: pd.DataFrame, questions: dict[str, list[str]], context: list[str]) -> dict[str, Any]:
    """Accuracy of the captioner's answers per attribute: asked the first phrasing of each column's questions with
    the product's ``context`` columns (``with_context``) and with the photo alone (``photo_only``)."""
    import multimodal

    captioner = multimodal.load(ckpt)
    out: dict[str, Any] = {}
    for column, phrasings in questions.items():
        rows = test[test[column].map(norm) != ""]
        scores = {}
        for mode, frame in (("with_context", rows), ("photo_only", rows.drop(columns=context))):
            said = captioner.caption(frame.drop(columns=[column]), prompt=phrasings[0], max_new_tokens=8)
            scores[mode] = accuracy(list(said["caption"]), list(rows[column]))
            scores[f"{mode}_examples"] = [[q, a] for q, a in zip(said["caption"][:3], rows[column][:3], strict=True)]
        out[column] = {"products": len(rows), **scores}
    return out


def tagger_accuracy(ckpt: Path, test: pd.DataFrame, columns: list[str]) -> dict[str, float | None]:
    """The tagger's accuracy on each column it predicts (None for one it does not), on the same products."""
    import multimodal

    tagger = multimodal.load(ckpt)
    predicted = tagger.predict(test.drop(columns=[c for c in columns if c in test.columns and c != "title"]))
    return {c: accuracy(list(predicted[c]), list(test[c])) if c in predicted.columns else None for c in columns}


def majority_accuracy(train: pd.DataFrame, test: pd.DataFrame, columns: list[str]) -> dict[str, float]:
    """Always answering the most frequent training value of each column."""
    out = {}
    for c in columns:
        common = Counter(v for v in train[c].map(norm) if v).most_common(1)[0][0]
        out[c] = accuracy([common] * len(test), list(test[c]))
    return out


def title_scores(ckpt: Path, test: pd.DataFrame, target: str = "title") -> dict[str, float]:
    """CIDEr-D and BLEU-4 of the captioner's captions of the test photos (its own generation settings)."""
    import multimodal

    said = multimodal.load(ckpt).caption(test[["id", "image"]])
    scores = caption_scores(list(said["caption"]), list(test[target]))
    return {k: round(v, 4) for k, v in scores.items()}
