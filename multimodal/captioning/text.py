"""Text preparation for captioning: prompt and target columns -> the training and generation tensors."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from multimodal.data.dataset import IGNORE_INDEX

RETRIEVED = "_retrieved_titles"  # the prompt part holding the neighbours' titles (retrieval)
RETRIEVAL_PROMPT_END = " :"  # closes a retrieval prompt: without it, a caption often ended before it began


class CaptionText:
    """Text function for the collate (picklable): prompt and target columns -> training and prompt tensors.

    Training sequence (right-padded): ``[bos] prompt target [eos]``; ``caption_labels`` (the collate keeps
    ``labels`` for attributes) hold the target and ``[eos]`` only (-100 on ``[bos]``, the prompt and padding).
    Generation input (left-padded): ``[bos] prompt``.

    Args:
        tokenizer: Hugging Face tokenizer.
        target_column: the text column to learn to write.
        prompt_columns: known text columns placed before the target (missing values left out).
        prompt: fixed text placed first in every prompt (e.g. a question).
        max_length: tokens kept per sequence, special tokens included.
        bos_id: begin token id.
        eos_id: end token id.
        pad_id: padding id.
        separator: joins the prompt parts.
        prompt_length: prompt tokens kept (default: all that fit in ``max_length - 2``); the target gets the rest.
        prompt_end: text whose tokens close a non-empty prompt, after truncation, so the model knows where the
            target starts (a retrieval captioner's list of titles ends with it); "": none.
    """

    def __init__(
        self,
        tokenizer: Any,
        target_column: str,
        prompt_columns: list[str],
        prompt: str,
        max_length: int,
        bos_id: int,
        eos_id: int,
        pad_id: int,
        separator: str = ". ",
        prompt_length: int | None = None,
        prompt_end: str = "",
    ) -> None:
        self.tokenizer, self.target_column = tokenizer, target_column
        self.prompt_end = self._ids(prompt_end)
        self.prompt_length = max_length - 2 if prompt_length is None else min(prompt_length, max_length - 2)
        self.prompt_columns, self.prompt, self.separator = list(prompt_columns), prompt, separator
        self.max_length, self.bos_id, self.eos_id, self.pad_id = max_length, bos_id, eos_id, pad_id

    def prompt_texts(self, texts: dict[str, list[str | None]], n: int) -> list[str]:
        """The prompt of each of ``n`` items."""
        parts = [[self.prompt] * n if self.prompt else [None] * n] + [
            texts.get(c, [None] * n) for c in self.prompt_columns
        ]
        return [self.separator.join(p[i] for p in parts if p[i]) for i in range(n)]

    def __call__(self, texts: dict[str, list[str | None]]) -> dict[str, Any]:
        """The batch's tensors: ``input_ids``, ``attention_mask`` and ``caption_labels`` ``(B, T)`` (right-padded),
        ``prompt_ids`` and ``prompt_mask`` ``(B, P)`` (left-padded), ``references``, and the texts as given."""
        n = len(next(iter(texts.values()))) if texts else 0
        return self.encode(texts, self.prompt_texts(texts, n), list(texts.get(self.target_column, [None] * n)))

    def encode(self, texts: dict[str, list[str | None]], prompt_texts: list[str], targets: list[str | None]) -> dict:
        """The tensors of items with these prompts and targets (None: nothing to learn, a generation input)."""
        prompts = [self._ids(p)[: self.prompt_length] for p in prompt_texts]
        prompts = [[*p, *self.prompt_end] if p else p for p in prompts]
        seqs, labels = [], []
        for prompt, target in zip(prompts, targets, strict=True):
            room = max(self.max_length - 2 - len(prompt), 0)
            tgt = self._ids(target)[:room] + [self.eos_id] if target is not None else []
            seqs.append([self.bos_id, *prompt, *tgt])
            labels.append([IGNORE_INDEX] * (1 + len(prompt)) + tgt)
        out = {
            "input_ids": pad(seqs, self.pad_id, left=False),
            "caption_labels": pad(labels, IGNORE_INDEX, left=False),
            "prompt_ids": pad([[self.bos_id, *p] for p in prompts], self.pad_id, left=True),
            "references": list(targets),
            "texts": texts,  # as given, with the fixed prompt: a retrieval captioner re-encodes them with its
            "prompt": self.prompt,  # neighbours' titles
        }
        out["attention_mask"] = pad([[1] * len(s) for s in seqs], 0, left=False)
        out["prompt_mask"] = pad([[1] * (1 + len(p)) for p in prompts], 0, left=True)
        return out

    def _ids(self, text: str | None) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def pad(rows: list[list[int]], value: int, left: bool) -> Tensor:
    """Pad lists of ids into a ``(B, T)`` long tensor, on the left or the right."""
    width = max((len(r) for r in rows), default=0)
    return torch.tensor(
        [[value] * (width - len(r)) + r if left else r + [value] * (width - len(r)) for r in rows], dtype=torch.long
    )
