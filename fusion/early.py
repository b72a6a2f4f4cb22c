"""Early fusion: both token sequences in one joint transformer."""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from encoders.types import Features
from fusion.base import FusionBlock
from fusion.layers import masked_mean, zero_padding

EarlyPooling = Literal["cls", "mean", "text"]


class EarlyFusion(FusionBlock):
    """Project vision and text tokens to one width, add modality embeddings, prepend a [CLS] token,
    concatenate and run a joint transformer. Pooled output per ``pooling``.

    Args:
        vision_dim: input vision width ``Dv``.
        text_dim: input text width ``Dt``.
        dim: joint width ``D`` (the output width).
        layers: joint transformer layers.
        heads: attention heads.
        dropout: dropout inside the transformer.
        pooling: the pooled vector: ``cls`` (the [CLS] token's output), ``mean`` (mean of every real output
            token, [CLS] included) or ``text`` (mean of the text tokens' outputs).
    """

    def __init__(
        self,
        vision_dim: int,
        text_dim: int,
        dim: int = 256,
        layers: int = 2,
        heads: int = 4,
        dropout: float = 0.1,
        pooling: EarlyPooling = "cls",
    ) -> None:
        super().__init__(vision_dim, text_dim)
        if pooling not in get_args(EarlyPooling):
            raise ValueError(f"unknown early fusion pooling '{pooling}' (choose cls, mean or text)")
        self.pooling = pooling
        self.output_dim = dim
        self.vision_proj = nn.Linear(vision_dim, dim)
        self.text_proj = nn.Linear(text_dim, dim)
        self.modality = nn.Parameter(torch.zeros(2, dim))  # [vision, text] type embeddings
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.modality, std=0.02)
        nn.init.normal_(self.cls, std=0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, vision: Features, text: Features) -> Features:
        b = vision.tokens.shape[0]
        v = self.vision_proj(vision.tokens) + self.modality[0]  # (B, Nv, D)
        t = self.text_proj(text.tokens) + self.modality[1]  # (B, Nt, D)
        cls = self.cls.expand(b, -1, -1)  # (B, 1, D)
        x = torch.cat([cls, v, t], dim=1)  # (B, 1+Nv+Nt, D)
        mask = torch.cat([vision.mask.new_ones(b, 1), vision.mask, text.mask], dim=1)
        x = self.norm(self.encoder(x, src_key_padding_mask=~mask))
        x = zero_padding(x, mask)
        if self.pooling == "cls":
            pooled = x[:, 0]
        elif self.pooling == "mean":
            pooled = masked_mean(x, mask)
        else:
            n_text = t.shape[1]
            pooled = masked_mean(x[:, -n_text:], mask[:, -n_text:])
        return Features(tokens=x, mask=mask, pooled=pooled)
