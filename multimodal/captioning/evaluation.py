"""Caption evaluation over an epoch: generated captions and their references gathered per stage, then scored."""

from __future__ import annotations

from collections.abc import Sequence

from multimodal.captioning.metrics import caption_scores


class CaptionEvaluation:
    """Generated captions and references of each stage (``val``, ``test``) until the stage's epoch ends."""

    def __init__(self) -> None:
        self._outputs: dict[str, tuple[list[str], list[str]]] = {}

    def add(self, stage: str, texts: Sequence[str], references: Sequence[str | None]) -> None:
        """Keep the captions of the items that have a reference."""
        preds, refs = self._outputs.setdefault(stage, ([], []))
        for text, ref in zip(texts, references, strict=True):
            if ref is not None:
                preds.append(text)
                refs.append(ref)

    def finish(self, stage: str, examples: int) -> tuple[dict[str, float], list[tuple[str, str]]] | None:
        """The stage's scores (:func:`caption_scores`) and its first ``examples`` (caption, reference) pairs, and
        forget them; None when no caption had a reference."""
        preds, refs = self._outputs.pop(stage, ([], []))
        if not preds:
            return None
        return caption_scores(preds, refs), list(zip(preds, refs, strict=True))[:examples]
