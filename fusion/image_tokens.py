"""Vision features as tokens in a language model's width: what the early and cross-attention conditionings share."""

from __future__ import annotations

import torch
from torch import nn

from encoders.types import Features
from fusion.layers import MLP, CrossAttentionLayer, zero_padding


class ImageTokens(nn.Module):
    """Vision features -> ``(B, P, D)`` tokens for the language model.

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
