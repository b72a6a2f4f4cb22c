"""FiLM fusion: the text modulates every channel of the image tokens (Perez et al. 2018, "FiLM: Visual Reasoning
with a General Conditioning Layer")."""

from __future__ import annotations

from torch import nn

from encoders.types import Features
from fusion.base import FusionBlock
from fusion.layers import MLP, masked_mean, zero_padding


class FiLMFusion(FusionBlock):
    """Feature-wise linear modulation of the image tokens by the pooled text.

    The pooled text predicts a per-channel scale and shift ``(gamma, beta)``; each layer normalises the image
    tokens, modulates them, ``(1 + gamma) * x + beta``, and adds the result back through a GELU (FiLM's residual
    block, with LayerNorm in place of batch norm so that padding and batch size never matter). The scale is
    centred on one so a fresh block passes the image through. Pooled output is the masked mean of the output
    tokens, so the output has one token per image token.

    Args:
        vision_dim: input vision width ``Dv``.
        text_dim: input text width ``Dt``.
        dim: working and output width ``D``.
        layers: modulated residual blocks, each with its own ``(gamma, beta)``.
        hidden_dim: hidden width of the MLP that predicts ``(gamma, beta)`` (default ``D``).
        dropout: inside that MLP and on each residual branch.
    """

    def __init__(
        self,
        vision_dim: int,
        text_dim: int,
        dim: int = 256,
        layers: int = 1,
        hidden_dim: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(vision_dim, text_dim)
        if layers < 1:
            raise ValueError(f"FiLM fusion: layers must be positive, not {layers}")
        self.output_dim, self.layers = dim, layers
        self.vision_proj = nn.Linear(vision_dim, dim)
        self.film = MLP(text_dim, hidden_dim or dim, 2 * dim * layers, dropout)  # every layer's (gamma, beta)
        # No affine of their own: FiLM's (gamma, beta) are the affine.
        self.norms = nn.ModuleList(nn.LayerNorm(dim, elementwise_affine=False) for _ in range(layers))
        self.mix = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, vision: Features, text: Features) -> Features:
        x = self.vision_proj(vision.tokens)  # (B, Nv, D)
        params = self.film(text.pooled).unsqueeze(1).chunk(2 * self.layers, dim=-1)  # 2 L x (B, 1, D)
        for i, (norm, mix) in enumerate(zip(self.norms, self.mix, strict=True)):
            gamma, beta = params[2 * i], params[2 * i + 1]
            x = x + self.drop(mix(nn.functional.gelu((1 + gamma) * norm(x) + beta)))
        tokens = zero_padding(self.norm(x), vision.mask)  # (B, Nv, D)
        return Features(tokens=tokens, mask=vision.mask, pooled=masked_mean(tokens, vision.mask))
