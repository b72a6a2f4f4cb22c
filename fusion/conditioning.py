"""Conditioning a causal language model on an image: the contract, and the early, cross-attention and late families.

Each block turns vision :class:`Features` into an :class:`LMCondition` that the captioning task hands to the
language model; its :attr:`LMConditioning.kind` says which part of the LM it feeds, so a caller (the task, an
export) dispatches on a type instead of probing attributes. A config picks one by ``class_path``; all take
``(vision_dim, lm_dim)`` first:

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
from enum import Enum
from typing import Any

import torch
from torch import Tensor, nn

from encoders.types import Features
from fusion.image_tokens import ImageTokens
from fusion.layers import MLP

__all__ = [
    "ConditioningKind",
    "CrossAttentionConditioning",
    "ImageTokens",
    "LMCondition",
    "LMConditioning",
    "LateConditioning",
    "PrefixConditioning",
]


class ConditioningKind(str, Enum):
    """How a conditioning feeds the language model; the value names the tensor it hands over.

    Attributes:
        PREFIX: embeddings ``(B, P, D)`` with mask, placed before the text tokens (:attr:`LMCondition.prefix`).
        CROSS_ATTENTION: memory ``(B, N, D)`` with mask for the LM's cross-attention layers
            (:attr:`LMCondition.encoder`).
        IMAGE_VECTOR: a pooled vector ``(B, D)`` fused into the LM's last hidden states (:attr:`LMCondition.vector`,
            applied by :attr:`LMCondition.hidden`).
    """

    PREFIX = "prefix"
    CROSS_ATTENTION = "encoder_states"
    IMAGE_VECTOR = "image_vector"

    @property
    def tensor_names(self) -> tuple[str, ...]:
        """Names of what :meth:`LMCondition.tensors` returns: the tokens and their mask, or the vector alone."""
        return (self.value,) if self is ConditioningKind.IMAGE_VECTOR else (self.value, f"{self.value}_mask")


@dataclass
class LMCondition:
    """What the language model receives from the image; unused parts are None.

    Attributes:
        prefix: ``(B, P, D)`` embeddings (with mask) placed before the text tokens.
        encoder: ``(B, N, D)`` states (with mask) for the LM's cross-attention layers.
        hidden: rewrites the LM's last hidden states ``(B', T, D)`` before its output layer, where ``B'`` is a
            multiple of ``B`` (items repeated consecutively, as ``generate`` does for beams).
        vector: ``(B, D)`` the image vector ``hidden`` fuses in: a function cannot leave an exported graph, a
            tensor can.
    """

    prefix: Features | None = None
    encoder: Features | None = None
    hidden: Callable[[Tensor], Tensor] | None = None
    vector: Tensor | None = None

    def tensors(self, kind: ConditioningKind) -> tuple[Tensor, ...]:
        """The part ``kind`` names as plain tensors, in the order of :attr:`ConditioningKind.tensor_names`.

        Raises:
            ValueError: the condition lacks that part (its block declares a kind it does not produce).
        """
        if kind is ConditioningKind.IMAGE_VECTOR:
            if self.vector is None:
                raise ValueError("an image-vector conditioning returned no vector")
            return (self.vector,)
        part = self.prefix if kind is ConditioningKind.PREFIX else self.encoder
        if part is None:
            raise ValueError(f"a {kind.name.lower()} conditioning returned no {kind.value}")
        return part.tokens, part.mask


class LMConditioning(nn.Module, ABC):
    """Maps vision features to an :class:`LMCondition` for a language model of width ``lm_dim``.

    Every family declares its :attr:`kind` and fills the matching part of the condition (the shared contract test
    holds each family to it): prefix tokens, cross-attention memory, or an image vector.

    Args:
        vision_dim: width ``Dv`` of the vision tokens and pooled vector.
        lm_dim: hidden width ``D`` of the language model.
    """

    def __init__(self, vision_dim: int, lm_dim: int) -> None:
        super().__init__()
        self.vision_dim, self.lm_dim = vision_dim, lm_dim

    @property
    @abstractmethod
    def kind(self) -> ConditioningKind:
        """How this family feeds the language model (a class attribute in each family)."""

    @property
    def needs_cross_attention(self) -> bool:
        """Whether the language model must have cross-attention layers to read this condition."""
        return self.kind is ConditioningKind.CROSS_ATTENTION

    @abstractmethod
    def forward(self, vision: Features) -> LMCondition:
        """Condition on ``vision`` (tokens ``(B, N, Dv)``, mask ``(B, N)``, pooled ``(B, Dv)``).

        Returns:
            a condition whose part named by :attr:`kind` is set; its masked tokens are zero, and a masked vision
            position never changes it.
        """


def _load_old_names(module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
    """Checkpoints written before :class:`ImageTokens` name its layers ``mlp.`` and ``norm.`` (an MLP and a
    LayerNorm, then the defaults)."""
    if any(k.startswith(prefix + "mlp.") for k in state_dict) and not isinstance(module.image.project, MLP):
        raise ValueError(
            f"{type(module).__name__}: this checkpoint was written with an MLP projection and a LayerNorm (the former "
            "defaults); build the fusion with projection: mlp, norm: true to load it"
        )
    for old, new in (("mlp.", "image.project."), ("norm.", "image.norm.")):
        for key in [k for k in state_dict if k.startswith(prefix + old)]:
            state_dict[prefix + new + key[len(prefix + old) :]] = state_dict.pop(key)


class _ImageTokensConditioning(LMConditioning):
    """Shared constructor of the early and cross-attention families: their image tokens come from
    :class:`ImageTokens`.

    Args:
        vision_dim: ``Dv``.
        lm_dim: ``D``.
        hidden_dim: MLP hidden width (default ``D``).
        dropout: inside the MLP (and resampler).
        **options: further :class:`ImageTokens` settings (``projection``, ``norm``, ``use_pooled``, ``use_tokens``,
            ``queries``...).
    """

    def __init__(
        self, vision_dim: int, lm_dim: int, hidden_dim: int | None = None, dropout: float = 0.0, **options: Any
    ) -> None:
        super().__init__(vision_dim, lm_dim)
        self.image = ImageTokens(vision_dim, lm_dim, hidden_dim, dropout, **options)
        self.register_load_state_dict_pre_hook(_load_old_names)


class PrefixConditioning(_ImageTokensConditioning):
    """Early fusion: image tokens (:class:`ImageTokens`: by default ``[pooled; tokens]`` through one Linear)
    become ``P`` prefix embeddings of width ``D`` before the text (ClipCap / LLaVA); ``use_tokens=False`` keeps the
    pooled vector alone (one prefix token)."""

    kind = ConditioningKind.PREFIX

    def forward(self, vision: Features) -> LMCondition:
        return LMCondition(prefix=self.image(vision))


class CrossAttentionConditioning(_ImageTokensConditioning):
    """Cross-attention fusion: image tokens (:class:`ImageTokens`) become the LM's ``encoder_hidden_states``.

    By default the grid tokens alone (``use_pooled=False``): the pooled vector as an extra key lowered CIDEr.
    """

    kind = ConditioningKind.CROSS_ATTENTION

    def __init__(
        self, vision_dim: int, lm_dim: int, hidden_dim: int | None = None, dropout: float = 0.0, **options: Any
    ) -> None:
        super().__init__(vision_dim, lm_dim, hidden_dim, dropout, **{"use_pooled": False, **options})

    def forward(self, vision: Features) -> LMCondition:
        return LMCondition(encoder=self.image(vision))


class LateConditioning(LMConditioning):
    """Late fusion: ``h + sigmoid(Wg [h; v]) * v`` on the LM's last hidden states ``h``, ``v = MLP(pooled)``.

    The gate is per token and channel, so each step decides how much of the image it takes.

    Args:
        vision_dim: ``Dv``.
        lm_dim: ``D``.
        hidden_dim: MLP hidden width (default ``D``).
        dropout: inside the MLP.
    """

    kind = ConditioningKind.IMAGE_VECTOR

    def __init__(self, vision_dim: int, lm_dim: int, hidden_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__(vision_dim, lm_dim)
        self.mlp = MLP(vision_dim, hidden_dim or lm_dim, lm_dim, dropout)
        self.gate = nn.Linear(2 * lm_dim, lm_dim)

    def forward(self, vision: Features) -> LMCondition:
        vector = self.image_vector(vision)
        return LMCondition(hidden=lambda hidden: self.fuse(hidden, vector), vector=vector)

    def image_vector(self, vision: Features) -> Tensor:
        """``v = MLP(pooled)`` ``(B, D)``: what :meth:`fuse` adds to the hidden states."""
        return self.mlp(vision.pooled)

    def fuse(self, hidden: Tensor, vector: Tensor) -> Tensor:
        """Add the gated image vector ``(B, D)`` to hidden states ``(B', T, D)`` (``B'`` a multiple of ``B``)."""
        v = vector.repeat_interleave(hidden.shape[0] // vector.shape[0], dim=0).unsqueeze(1)  # (B', 1, D)
        v = v.expand(-1, hidden.shape[1], -1)
        g = torch.sigmoid(self.gate(torch.cat([hidden, v], dim=-1)))
        return hidden + g * v
