"""Late fusion: combine the pooled vision and text vectors."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from encoders.types import Features
from fusion.base import FusionBlock
from fusion.layers import MLP

LateMode = Literal["concat", "gated", "bilinear"]


class LateFusion(FusionBlock):
    """Combine pooled vectors into one ``(B, D)`` vector (returned as a single token too).

    Modes:
        concat: ``MLP([v; t])``.
        gated: ``g * Wv v + (1 - g) * Wt t`` with ``g = sigmoid(Wg [v; t])`` per channel (gated multimodal unit).
        bilinear: low-rank bilinear pooling ``Wo ((Wv v) * (Wt t))`` plus both projections.

    Args:
        vision_dim: input vision width ``Dv``.
        text_dim: input text width ``Dt``.
        dim: output width ``D``.
        mode: ``concat``, ``gated`` or ``bilinear``.
        dropout: dropout before the output layer.
    """

    def __init__(
        self, vision_dim: int, text_dim: int, dim: int = 256, mode: LateMode = "concat", dropout: float = 0.1
    ) -> None:
        super().__init__(vision_dim, text_dim)
        if mode not in ("concat", "gated", "bilinear"):
            raise ValueError(f"unknown late fusion mode '{mode}' (choose concat, gated or bilinear)")
        self.mode = mode
        self.output_dim = dim
        if mode == "concat":
            self.mlp = MLP(vision_dim + text_dim, dim, dim, dropout)
        else:
            self.vision_proj = nn.Linear(vision_dim, dim)
            self.text_proj = nn.Linear(text_dim, dim)
            self.gate = nn.Linear(vision_dim + text_dim, dim) if mode == "gated" else None
            self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, vision: Features, text: Features) -> Features:
        v, t = vision.pooled, text.pooled  # (B, Dv), (B, Dt)
        if self.mode == "concat":
            fused = self.mlp(torch.cat([v, t], dim=-1))
        else:
            pv, pt = self.vision_proj(v), self.text_proj(t)  # (B, D) each
            if self.gate is not None:
                g = torch.sigmoid(self.gate(torch.cat([v, t], dim=-1)))
                fused = self.out(g * pv + (1 - g) * pt)
            else:
                fused = self.out(pv * pt) + pv + pt
        fused = self.norm(fused)  # (B, D)
        mask = torch.ones(fused.shape[0], 1, dtype=torch.bool, device=fused.device)
        return Features(tokens=fused.unsqueeze(1), mask=mask, pooled=fused)
