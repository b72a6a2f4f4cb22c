"""Teacher-forced caption training: the next-token loss and the two regularisers of a short fine-tune (word
dropout on the target given as input, and a warm-up that holds the language model's pretrained weights)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from encoders.language_model import CausalLM
from multimodal.data.dataset import IGNORE_INDEX
from multimodal.errors import UserError


class TeacherForcing:
    """The caption loss and its regularisers.

    Args:
        language_model: the captioner's causal LM (its tokenizer gives the dropped-word token).
        word_dropout: chance that each target token *given as input* is replaced by the tokenizer's mask (or
            unknown) token; the labels stay.
        label_smoothing: ``torch.nn.functional.cross_entropy``'s label smoothing.
        lm_warmup_steps: first optimizer steps during which the LM's pretrained weights get no update.
    """

    def __init__(
        self, language_model: CausalLM, word_dropout: float, label_smoothing: float, lm_warmup_steps: int
    ) -> None:
        tok = language_model.tokenizer
        specials = {language_model.eos_id, language_model.pad_id, language_model.bos_id}
        choices = [i for i in (tok.mask_token_id, tok.unk_token_id) if i is not None and i not in specials]
        if not 0 <= word_dropout < 1 or (word_dropout > 0 and not choices):
            raise UserError(
                f"model.word_dropout={word_dropout}: needs 0 <= p < 1 and a tokenizer with a mask or unknown "
                "token distinct from its begin/end/padding tokens"
            )
        if not 0 <= label_smoothing < 1:
            raise UserError(f"model.label_smoothing={label_smoothing}: needs 0 <= value < 1")
        if not isinstance(lm_warmup_steps, int) or lm_warmup_steps < 0:
            raise UserError(f"model.lm_warmup_steps={lm_warmup_steps!r}: needs a whole number >= 0")
        self.word_dropout, self.label_smoothing, self.lm_warmup_steps = word_dropout, label_smoothing, lm_warmup_steps
        self.dropped_word_id = choices[0] if word_dropout > 0 else None
        self.eos_id = language_model.eos_id

    def drop_words(self, input_ids: Tensor, labels: Tensor) -> Tensor:
        """``input_ids (B, T)`` with each target token (a label other than ``[eos]``) replaced by the mask
        token with chance ``word_dropout``; prompt, ``[bos]`` and padding are never touched."""
        if self.dropped_word_id is None:
            return input_ids
        target = (labels != IGNORE_INDEX) & (input_ids != self.eos_id)
        drop = target & (torch.rand(input_ids.shape, device=input_ids.device) < self.word_dropout)
        return input_ids.masked_fill(drop, self.dropped_word_id)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Next-token cross-entropy on target tokens only; ``logits (B, T', V)`` end where ``labels (B, T)`` end."""
        labels = F.pad(labels, (logits.shape[1] - labels.shape[1], 0), value=IGNORE_INDEX)
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
        if not (shift_labels != IGNORE_INDEX).any():
            return shift_logits.sum() * 0.0
        return F.cross_entropy(
            shift_logits.reshape(-1, shift_logits.shape[-1]),
            shift_labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            label_smoothing=self.label_smoothing,
        )

    def hold_language_model(self, step: int, language_model: CausalLM) -> None:
        """Before optimizer step ``step`` (0-based): while ``step < lm_warmup_steps``, drop the gradients of the
        ``language_model``'s pretrained weights so the optimizer leaves them (and their moments) untouched. The new
        conditioning layers so learn to address a fixed LM before the LM may learn to do without the image."""
        if step < self.lm_warmup_steps:
            for p in language_model.pretrained_parameters():
                p.grad = None
