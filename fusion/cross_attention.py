"""Cross-attention fusion: text tokens attend to image tokens, optionally in both directions."""

from __future__ import annotations

import torch
from torch import nn

from encoders.types import Features
from fusion.base import FusionBlock
from fusion.layers import CrossAttentionLayer, masked_mean, zero_padding


class CrossAttentionFusion(FusionBlock):
    """N layers in which text tokens self-attend and cross-attend to image tokens (ALBEF / BLIP style).

    With ``bidirectional=True`` image tokens also attend to the text in every layer, and the output holds both
    streams (text tokens, then image tokens). Pooled output is the masked mean of the output tokens.

    Args:
        vision_dim: input vision width ``Dv``.
        text_dim: input text width ``Dt``.
        dim: working and output width ``D``.
        layers: number of layers.
        heads: attention heads.
        dropout: dropout in attention and feed-forward.
        bidirectional: image tokens attend to text too.
    """

    def __init__(
        self,
        vision_dim: int,
        text_dim: int,
        dim: int = 256,
        layers: int = 2,
        heads: int = 4,
        dropout: float = 0.1,
        bidirectional: bool = False,
    ) -> None:
        super().__init__(vision_dim, text_dim)
        self.output_dim = dim
        self.vision_proj = nn.Linear(vision_dim, dim)
        self.text_proj = nn.Linear(text_dim, dim)
        self.text_layers = nn.ModuleList(CrossAttentionLayer(dim, heads, dropout) for _ in range(layers))
        self.vision_layers = (
            nn.ModuleList(CrossAttentionLayer(dim, heads, dropout) for _ in range(layers)) if bidirectional else None
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, vision: Features, text: Features) -> Features:
        v = zero_padding(self.vision_proj(vision.tokens), vision.mask)  # (B, Nv, D)
        t = zero_padding(self.text_proj(text.tokens), text.mask)  # (B, Nt, D)
        for i, text_layer in enumerate(self.text_layers):
            t_next = text_layer(t, text.mask, v, vision.mask)
            if self.vision_layers is not None:
                v = self.vision_layers[i](v, vision.mask, t, text.mask)
            t = t_next
        if self.vision_layers is not None:
            tokens = torch.cat([t, v], dim=1)
            mask = torch.cat([text.mask, vision.mask], dim=1)
        else:
            tokens, mask = t, text.mask
        tokens = zero_padding(self.norm(tokens), mask)
        return Features(tokens=tokens, mask=mask, pooled=masked_mean(tokens, mask))
