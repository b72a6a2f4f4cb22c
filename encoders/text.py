"""Hugging Face text models (encoder-only BERT family or decoder-only GPT-2 family) as text encoders."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from transformers import AutoConfig, AutoModel, AutoTokenizer

from encoders.freezing import Trainable, set_trainable
from encoders.hf_loading import load_pretrained
from encoders.types import Features, TextEncoder

Pooling = Literal["mean", "cls", "last", "max"]


def pool_tokens(tokens: Tensor, mask: Tensor, pooling: Pooling) -> Tensor:
    """Pool ``(B, T, D)`` tokens under a ``(B, T)`` bool mask into ``(B, D)``; padding never contributes.

    ``cls`` takes the first token (BERT), ``last`` the last real token (GPT-2, right padding).
    """
    if pooling == "cls":
        return tokens[:, 0]
    if pooling == "last":
        last = mask.long().sum(1).clamp(min=1) - 1  # (B,)
        return tokens[torch.arange(tokens.shape[0], device=tokens.device), last]
    m = mask.unsqueeze(-1)
    if pooling == "max":
        return tokens.masked_fill(~m, torch.finfo(tokens.dtype).min).amax(1)
    if pooling == "mean":
        return (tokens * m).sum(1) / m.sum(1).clamp(min=1)
    raise ValueError(f"unknown pooling '{pooling}' (choose mean, cls, last or max)")


class HFTextEncoder(TextEncoder):
    """Any Hugging Face ``AutoModel`` with its tokenizer, by hub id or local directory.

    Args:
        model_name_or_path: hub id or local directory holding the model and its tokenizer.
        pooling: ``mean`` (default), ``cls`` (BERT), ``last`` (decoder-only models) or ``max``.
        max_length: tokens kept per text.
        trainable: True, False, or N to train only the last N layers.
        model_kwargs: passed to ``AutoModel.from_pretrained``.
        config_overrides: architecture settings changed from the saved config (e.g. ``num_hidden_layers``).
        random_init: build the (possibly overridden) architecture with random weights, keeping the tokenizer;
            for tiny test models and training from scratch.
    """

    def __init__(
        self,
        model_name_or_path: str,
        pooling: Pooling = "mean",
        max_length: int = 32,
        trainable: Trainable = True,
        model_kwargs: dict[str, Any] | None = None,
        config_overrides: dict[str, Any] | None = None,
        random_init: bool = False,
    ) -> None:
        super().__init__()
        self.model_name_or_path = model_name_or_path
        if random_init:
            config = AutoConfig.from_pretrained(model_name_or_path, **(config_overrides or {}))
            self.model = AutoModel.from_config(config)
        else:
            kwargs = {**(config_overrides or {}), **(model_kwargs or {})}
            self.model = load_pretrained(AutoModel, model_name_or_path, **kwargs)
            self.weights_source = {"package": "transformers", "model": model_name_or_path}
            self.model.train()  # from_pretrained returns eval mode; Lightning keeps module modes as found
        # BERT's pooler head is never used here; left in place it would hold parameters without gradients (DDP).
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None
        self._tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
        if self._tokenizer.pad_token is None:  # GPT-2 family
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._tokenizer.padding_side = "right"
        self.output_dim: int = self.model.config.hidden_size
        self.pooling: Pooling = pooling
        pool_tokens(torch.zeros(1, 1, 1), torch.ones(1, 1, dtype=torch.bool), pooling)  # validate early
        self.max_length = max_length
        self.trainable = trainable
        set_trainable(self.model, trainable)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Features:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        tokens = out.last_hidden_state  # (B, T, D)
        mask = attention_mask.bool()
        return Features(tokens=tokens, mask=mask, pooled=pool_tokens(tokens, mask, self.pooling))
