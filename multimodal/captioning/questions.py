"""Questions about a product photo as a captioning mode: "What colour is it?" -> "Blue".

A captioner given ``model.questions`` learns, besides its target column (the title), to answer questions about the
catalogue's attribute columns: in training a share of the items is also asked one of the configured questions about
one of those columns (one more sequence in the batch) and learns to write the product's value. Which columns and
which questions is configuration (``templates``: column -> question phrasings); nothing here names a column.
``context_columns`` (e.g. the title) are given before the question, each left out at random in training so that a
photo alone is answered too.

At generation, a prompt that is one of the trained questions (compared without case and punctuation) is asked with
the item's context; any other question is a one-line error listing the questions the model answers. Imports no
torch: the torch-free runtime builds the same prompts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from multimodal.errors import UserError

SEPARATOR = ". "


def normalized(question: str) -> str:
    """Lower case, words only: "What colour is it?" and "what colour is it" ask the same."""
    return " ".join(re.findall(r"\w+", question.lower()))


@dataclass(frozen=True)
class QuestionSettings:
    """``model.questions`` of a captioner.

    Args:
        templates: attribute column -> the questions that ask for it (at least one each).
        share: fraction of the training items also asked a question (besides writing the target column).
        context_columns: text columns written before the question (those the product has).
        context_dropout: chance that each context column is left out of a training question.
    """

    templates: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    share: float = 0.5
    context_columns: tuple[str, ...] = ()
    context_dropout: float = 0.5

    @classmethod
    def parse(cls, value: Any) -> QuestionSettings | None:
        """None, or a mapping with ``templates`` ({column: [questions]}) and optionally ``share``,
        ``context_columns`` and ``context_dropout``; anything else is a one-line error."""
        if value is None or value is False:
            return None
        keys = {"templates", "share", "context_columns", "context_dropout"}
        example = "{templates: {colour: ['What colour is it?']}, share: 0.5}"
        if not isinstance(value, Mapping) or set(value) - keys or not value.get("templates"):
            raise UserError(f"model.questions={value!r}: give null or a mapping with templates (and share, "
                            f"context_columns, context_dropout), e.g. {example}")  # fmt: skip
        templates = value["templates"]
        if not isinstance(templates, Mapping) or not all(_questions(q) for q in templates.values()):
            raise UserError(f"model.questions.templates={templates!r}: map each column to a list of questions")
        settings = cls(
            templates={str(c): tuple(q) for c, q in templates.items()},
            share=value.get("share", 0.5),
            context_columns=tuple(value.get("context_columns") or ()),
            context_dropout=value.get("context_dropout", 0.5),
        )
        for name in ("share", "context_dropout"):
            number = getattr(settings, name)
            if isinstance(number, bool) or not isinstance(number, int | float) or not 0 <= number <= 1:
                raise UserError(f"model.questions.{name}={number!r}: needs a number between 0 and 1")
        settings.check_unambiguous()
        return settings

    def check_unambiguous(self) -> None:
        """One question, one column: the same phrasing for two columns is a one-line error."""
        seen: dict[str, str] = {}
        for column, questions in self.templates.items():
            for q in questions:
                if seen.setdefault(normalized(q), column) != column:
                    raise UserError(f"model.questions: {q!r} asks for both {seen[normalized(q)]} and {column}")

    def state(self) -> dict[str, Any]:
        """Plain values (checkpoints, the torch-free export)."""
        return {"templates": {c: list(q) for c, q in self.templates.items()}, "share": self.share,
                "context_columns": list(self.context_columns), "context_dropout": self.context_dropout}  # fmt: skip

    @property
    def columns(self) -> list[str]:
        """The attribute columns answered, then the context columns: text columns the data must carry."""
        return [*self.templates, *(c for c in self.context_columns if c not in self.templates)]

    def column_of(self, question: str) -> str | None:
        """The column a trained question asks for (None: not one of them)."""
        wanted = normalized(question)
        return next((c for c, qs in self.templates.items() if any(normalized(q) == wanted for q in qs)), None)

    def examples(self) -> str:
        """The first question of each column, for messages."""
        return "; ".join(f"{qs[0]!r} ({c})" for c, qs in self.templates.items())

    def prompt(self, question: str, texts: Mapping[str, str | None], keep: Sequence[bool] | None = None) -> str:
        """``context. question``: the product's context columns it has (those ``keep`` leaves in), then the
        question."""
        keep = keep if keep is not None else [True] * len(self.context_columns)
        parts = [texts.get(c) for c, k in zip(self.context_columns, keep, strict=True) if k]
        return SEPARATOR.join([*(p for p in parts if p), question])


def _questions(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and bool(value)
        and all(isinstance(q, str) and q.strip() for q in value)
    )


def check_question(prompt: str | None, settings: QuestionSettings | None, trained_prompt: str) -> str | None:
    """The column ``prompt`` asks for when it is a trained question; None for a prompt that is not a question
    (a fixed text before the caption). A question the captioner was not trained to answer is a one-line error."""
    if prompt is None or not prompt.strip().endswith("?") or normalized(prompt) == normalized(trained_prompt):
        return None
    column = settings.column_of(prompt) if settings is not None else None
    if column is not None:
        return column
    if settings is None:
        raise UserError(f"this captioner was trained to write its target column, not to answer questions: {prompt!r} "
                        "would get a title, not an answer (train it with model.questions)")  # fmt: skip
    raise UserError(f"this captioner was not trained to answer {prompt!r}; it answers {settings.examples()}")
