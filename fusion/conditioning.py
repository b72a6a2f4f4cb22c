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
from typing import Any

import torch
from torch import Tensor, nn

from encoders.types import Features
from fusion.layers import MLP, CrossAttentionLayer, zero_padding


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


class ImageTokens(nn.Module):
    """Vision features -> ``(B, P, D)`` tokens for the language model: what the early and cross-attention families
    share.

    ``[pooled; tokens]`` (or either alone) are projected to ``D``, optionally summarised by a learned-query resampler
    (``queries`` learned vectors attend to the projected tokens through ``resampler_layers`` pre-norm blocks, as
    Flamingo's Perceiver resampler and BLIP-2's Q-Former do), then optionally layer-normalised.

    Args:
        vision_dim: ``Dv``.
        lm_dim: ``D``.
        hidden_dim: MLP hidden width (default ``D``).
        dropout: inside the MLP and the resampler.
        projection: ``"linear"`` (one Linear, as ``VisionEncoderDecoderModel``) or ``"mlp"`` (Linear, GELU, Linear).
            The single Linear without LayerNorm captions better (``docs/benchmarks.md``, caption quality).
        norm: LayerNorm the output.
        use_pooled: include the pooled vector as a token.
        use_tokens: include the image tokens (at least one of the two).
        queries: resampler output length ``P`` (0: no resampler, ``P`` is the number of input tokens).
        resampler_layers: blocks of the resampler.
        heads: attention heads of the resampler.
    """

    def __init__(
        self,
        vision_dim: int,
        lm_dim: int,
        hidden_dim: int | None = None,
        dropout: float = 0.0,
        projection: str = "linear",
        norm: bool = False,
        use_pooled: bool = True,
        use_tokens: bool = True,
        queries: int = 0,
        resampler_layers: int = 2,
        heads: int = 8,
    ) -> None:
        super().__init__()
        if not (use_pooled or use_tokens):
            raise ValueError("image tokens: use_pooled and use_tokens are both off; nothing would reach the LM")
        if projection == "mlp":
            self.project: nn.Module = MLP(vision_dim, hidden_dim or lm_dim, lm_dim, dropout)
        elif projection == "linear":
            self.project = nn.Linear(vision_dim, lm_dim)
        else:
            raise ValueError(f"image tokens: projection must be 'mlp' or 'linear', not {projection!r}")
        if queries < 0:
            raise ValueError(f"image tokens: queries must be 0 (no resampler) or positive, not {queries}")
        self.use_pooled, self.use_tokens = use_pooled, use_tokens
        self.queries = nn.Parameter(torch.randn(queries, lm_dim) * 0.02) if queries else None
        layers = resampler_layers if queries else 0
        self.resampler = nn.ModuleList(CrossAttentionLayer(lm_dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(lm_dim) if norm else nn.Identity()

    def forward(self, vision: Features) -> Features:
        """``(B, P, D)`` tokens with mask ``(B, P)``; ``pooled`` is the first token."""
        parts, masks = [], []
        if self.use_pooled:
            parts.append(vision.pooled.unsqueeze(1))  # (B, 1, Dv)
            masks.append(vision.mask.new_ones(vision.mask.shape[0], 1))
        if self.use_tokens:
            parts.append(vision.tokens)  # (B, N, Dv)
            masks.append(vision.mask)
        tokens, mask = self.project(torch.cat(parts, 1)), torch.cat(masks, 1)  # (B, P, D)
        if self.queries is not None:
            x = self.queries.unsqueeze(0).expand(tokens.shape[0], -1, -1)  # (B, Q, D)
            x_mask = mask.new_ones(x.shape[:2])
            for layer in self.resampler:
                x = layer(x, x_mask, tokens, mask)
            tokens, mask = x, x_mask
        tokens = zero_padding(self.norm(tokens), mask)
        return Features(tokens=tokens, mask=mask, pooled=tokens[:, 0])


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

    def forward(self, vision: Features) -> LMCondition:
        return LMCondition(prefix=self.image(vision))


class CrossAttentionConditioning(_ImageTokensConditioning):
    """Cross-attention fusion: image tokens (:class:`ImageTokens`) become the LM's ``encoder_hidden_states``.

    By default the grid tokens alone (``use_pooled=False``): the pooled vector as an extra key lowered CIDEr.
    """

    needs_cross_attention = True

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
