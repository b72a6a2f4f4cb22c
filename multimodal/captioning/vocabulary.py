"""Vocabulary trimming: generation computes logits only for the token ids the training targets use.

The sorted ids ``(K,)`` of every token of the training targets plus bos/eos/pad are found when fit starts and saved
in the checkpoint (about 2k of MiniLM's 30k ids on product titles); the output layer is then projected onto those
rows only, the costliest layer of a generation step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from encoders.language_model import CausalLM
from multimodal.captioning.settings import check_trim_vocabulary
from multimodal.errors import UserError


def target_token_ids(language_model: CausalLM, texts: list[str | None]) -> Tensor:
    """Sorted ids ``(K,)`` of every token of ``texts`` (as training tokenizes them) and of bos/eos/pad."""
    lm = language_model
    found = [i for row in lm.tokenizer([t for t in texts if t], add_special_tokens=False)["input_ids"] for i in row]
    return torch.unique(torch.tensor([*found, lm.bos_id, lm.eos_id, lm.pad_id], dtype=torch.long))


def checked_token_ids(ids: Any, vocabulary_size: int) -> Tensor:
    """A checkpoint's stored ids as a long tensor; a one-line error unless they are ids of the vocabulary."""
    if (
        not isinstance(ids, Tensor)
        or ids.ndim != 1
        or ids.numel() == 0
        or int(ids.min()) < 0
        or int(ids.max()) >= vocabulary_size
    ):
        raise UserError(f"the checkpoint's caption_token_ids are not token ids of a {vocabulary_size}-token vocabulary")
    return ids.long()


def output_token_ids(caption_token_ids: Tensor | None, trim_vocabulary: bool | None) -> Tensor | None:
    """The ids generation may write: ``caption_token_ids`` unless ``trim_vocabulary`` is False (None: when
    known); None means the whole vocabulary."""
    check_trim_vocabulary(trim_vocabulary)
    if trim_vocabulary and caption_token_ids is None:
        raise UserError(
            "trim_vocabulary: this captioner holds no training-target token ids (a checkpoint written before "
            "vocabulary trimming, or a model never fitted); generate with trim_vocabulary off"
        )
    return None if trim_vocabulary is False else caption_token_ids
