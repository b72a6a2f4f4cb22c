"""The tensors of questions about products (:mod:`multimodal.captioning.questions`): a collate text function that
asks every item one trained question, and the training batch extended with the questions asked."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from encoders.types import Features
from multimodal.captioning.questions import QuestionSettings
from multimodal.captioning.text import CaptionText

Texts = dict[str, list[str | None]]


class QuestionText:
    """Collate text function (picklable) for ``question``, a trained question about ``column``: each item's prompt
    is its context columns and the question; its reference (``references``) is its value of ``column``, when the
    input has it."""

    def __init__(self, text: CaptionText, settings: QuestionSettings, question: str, column: str) -> None:
        self.text, self.settings, self.question, self.column = text, settings, question, column

    def __call__(self, texts: Texts) -> dict[str, Any]:
        n = len(next(iter(texts.values()))) if texts else 0
        prompts = [self.settings.prompt(self.question, item(texts, i, self.settings.context_columns)) for i in range(n)]
        out = self.text.encode(texts, prompts, list(texts.get(self.column, [None] * n)))
        out["prompt"] = self.question  # a re-encoding of the batch (retrieval) asks the same question
        out["asked"] = self.column  # an answer is never reranked against titles
        return out


def item(texts: Texts, i: int, columns: tuple[str, ...]) -> dict[str, str | None]:
    """Item ``i``'s values of ``columns`` (None where the batch lacks a column)."""
    return {c: (texts.get(c) or [None] * (i + 1))[i] for c in columns}


def question_rows(settings: QuestionSettings, texts: Texts, uniforms: Tensor) -> list[tuple[int, str, str]]:
    """``(item, prompt, answer)`` of the items asked a question: a ``settings.share`` of them (drawn by
    ``uniforms (B, 3 + C)`` in [0, 1)), each about one of the attribute columns it has a value of, with each of the
    ``C`` context columns left out with probability ``context_dropout``."""
    n = uniforms.shape[0]
    rows = []
    for i, draw in enumerate(uniforms.tolist()):
        columns = [c for c in settings.templates if (texts.get(c) or [None] * n)[i]]
        if draw[0] >= settings.share or not columns:
            continue
        column = columns[min(int(draw[1] * len(columns)), len(columns) - 1)]
        phrasings = settings.templates[column]
        question = phrasings[min(int(draw[2] * len(phrasings)), len(phrasings) - 1)]
        keep = [u >= settings.context_dropout for u in draw[3:]]
        rows.append((i, settings.prompt(question, item(texts, i, settings.context_columns), keep), texts[column][i]))
    return rows


def extended_batch(
    text: CaptionText, settings: QuestionSettings, texts: Texts, uniforms: Tensor
) -> tuple[dict[str, Any], list[int]]:
    """Training tensors of every item writing its target as usual, followed by one more sequence for each item
    asked a question (:func:`question_rows`): the title is learnt as often as without questions. Also returns the
    item each sequence belongs to (for its photo features)."""
    n = uniforms.shape[0]
    asked = question_rows(settings, texts, uniforms)
    items = list(range(n)) + [i for i, _, _ in asked]
    prompts = text.prompt_texts(texts, n) + [p for _, p, _ in asked]
    targets = list(texts.get(text.target_column, [None] * n)) + [a for _, _, a in asked]
    every = {c: [values[i] for i in items] for c, values in texts.items()}
    return text.encode(every, prompts, targets), items


def with_questions(model: Any, batch: dict[str, Any], vision: Features) -> tuple[dict[str, Any], Features]:
    """A training batch of ``model`` (a captioner) and its photo features, extended with the questions asked
    (unchanged without ``model.questions``). The draws come from torch's generator: seeded runs and exact resume
    repeat them."""
    settings: QuestionSettings | None = model.questions
    if settings is None or not batch["ids"]:
        return batch, vision
    uniforms = torch.rand(len(batch["ids"]), 3 + len(settings.context_columns))
    encoded, items = extended_batch(model.caption_text(batch.get("prompt")), settings, batch["texts"], uniforms)
    device = batch["input_ids"].device
    moved = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in encoded.items()}
    return {**batch, **moved}, vision.take(torch.tensor(items, device=device))
