"""Conditioning a causal language model on an image: the early, cross-attention and late fusion families.

Each block turns vision :class:`Features` into an :class:`LMCondition` that the captioning task hands to the
language model. A config picks one by ``class_path``; all take ``(vision_dim, lm_dim)`` first:

- :class:`PrefixConditioning` (early): image tokens projected into the LM's input-embedding space and put before
  the text (ClipCap / LLaVA).
- :class:`CrossAttentionConditioning`: the LM's cross-attention layers attend to projected image tokens
  (VisionEncoderDecoder).
- :class:`LateConditioning`: the pooled image vector, gated per token and channel, is added to the LM's final hidden
  states right before its output layer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from encoders.types import Features
from fusion.layers import MLP, zero_padding


@dataclass
class LMCondition:
    """What the language model receives from the image; unused parts are None.

    Attributes:
        prefix: ``(B, P, D)`` embeddings (with mask) placed before the text tokens.
        encoder: ``(B, N, D)`` states (with mask) for the LM's cross-attention layers.
        hidden: rewrites the LM's last hidden states ``(B', T, D)`` before its output layer, where ``B'`` is a
            multiple of ``B`` (items repeated consecutively, as ``generate`` does for beams).
    """

    prefix: Features | None = None
    encoder: Features | None = None
    hidden: Callable[[Tensor], Tensor] | None = None


class LMConditioning(nn.Module, ABC):
    """Maps vision features to an :class:`LMCondition` for a language model of width ``lm_dim``.

    Args:
        vision_dim: width ``Dv`` of the vision tokens and pooled vector.
        lm_dim: hidden width ``D`` of the language model.
    """

    needs_cross_attention: bool = False

    def __init__(self, vision_dim: int, lm_dim: int) -> None:
        super().__init__()
        self.vision_dim, self.lm_dim = vision_dim, lm_dim

    @abstractmethod
    def forward(self, vision: Features) -> LMCondition:
        """Condition on ``vision`` (tokens ``(B, N, Dv)``, mask ``(B, N)``, pooled ``(B, Dv)``)."""


class PrefixConditioning(LMConditioning):
    """Early fusion: ``[pooled; tokens]`` through an MLP into ``1 + N`` prefix embeddings of width ``D``.

    Args:
        vision_dim: ``Dv``.
        lm_dim: ``D``.
        hidden_dim: MLP hidden width (default ``D``).
        dropout: inside the MLP.
        use_tokens: also pass the image tokens (else the pooled vector alone, one prefix token).
    """

    def __init__(
        self, vision_dim: int, lm_dim: int, hidden_dim: int | None = None, dropout: float = 0.0, use_tokens: bool = True
    ) -> None:
        super().__init__(vision_dim, lm_dim)
        self.use_tokens = use_tokens
        self.mlp = MLP(vision_dim, hidden_dim or lm_dim, lm_dim, dropout)
        self.norm = nn.LayerNorm(lm_dim)

    def forward(self, vision: Features) -> LMCondition:
        pooled = vision.pooled.unsqueeze(1)  # (B, 1, Dv)
        ones = vision.mask.new_ones(pooled.shape[:2])
        if self.use_tokens:
            tokens, mask = torch.cat([pooled, vision.tokens], 1), torch.cat([ones, vision.mask], 1)  # (B, 1+N, Dv)
        else:
            tokens, mask = pooled, ones
        prefix = zero_padding(self.norm(self.mlp(tokens)), mask)  # (B, P, D)
        return LMCondition(prefix=Features(tokens=prefix, mask=mask, pooled=prefix[:, 0]))


class CrossAttentionConditioning(LMConditioning):
    """Cross-attention fusion: image tokens projected to ``D`` become the LM's ``encoder_hidden_states``.

    Args:
        vision_dim: ``Dv``.
        lm_dim: ``D``.
        hidden_dim: MLP hidden width (default ``D``).
        dropout: inside the MLP.
    """

    needs_cross_attention = True

    def __init__(self, vision_dim: int, lm_dim: int, hidden_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__(vision_dim, lm_dim)
        self.mlp = MLP(vision_dim, hidden_dim or lm_dim, lm_dim, dropout)
        self.norm = nn.LayerNorm(lm_dim)

    def forward(self, vision: Features) -> LMCondition:
        pooled = vision.pooled.unsqueeze(1)
        tokens = torch.cat([pooled, vision.tokens], 1)  # (B, 1+N, Dv)
        mask = torch.cat([vision.mask.new_ones(pooled.shape[:2]), vision.mask], 1)
        states = zero_padding(self.norm(self.mlp(tokens)), mask)  # (B, 1+N, D)
        return LMCondition(encoder=Features(tokens=states, mask=mask, pooled=states[:, 0]))


class LateConditioning(LMConditioning):
    """Late fusion: ``h + sigmoid(Wg [h; v]) * v`` on the LM's last hidden states ``h``, ``v = MLP(pooled)``.

    The gate is per token and channel, so each step decides how much of the image it takes.

    Args:
        vision_dim: ``Dv``.
        lm_dim: ``D``.
        hidden_dim: MLP hidden width (default ``D``).
        dropout: inside the MLP.
    """

    def __init__(self, vision_dim: int, lm_dim: int, hidden_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__(vision_dim, lm_dim)
        self.mlp = MLP(vision_dim, hidden_dim or lm_dim, lm_dim, dropout)
        self.gate = nn.Linear(2 * lm_dim, lm_dim)

    def forward(self, vision: Features) -> LMCondition:
        vector = self.image_vector(vision)
        return LMCondition(hidden=lambda hidden: self.fuse(hidden, vector))

    def image_vector(self, vision: Features) -> Tensor:
        """``v = MLP(pooled)`` ``(B, D)``: what :meth:`fuse` adds to the hidden states."""
        return self.mlp(vision.pooled)

    def fuse(self, hidden: Tensor, vector: Tensor) -> Tensor:
        """Add the gated image vector ``(B, D)`` to hidden states ``(B', T, D)`` (``B'`` a multiple of ``B``)."""
        v = vector.repeat_interleave(hidden.shape[0] // vector.shape[0], dim=0).unsqueeze(1)  # (B', 1, D)
        v = v.expand(-1, hidden.shape[1], -1)
        g = torch.sigmoid(self.gate(torch.cat([hidden, v], dim=-1)))
        return hidden + g * v
