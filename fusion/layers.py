"""Layers shared by the fusion blocks (and by the captioning model's conditioning)."""

from __future__ import annotations

from torch import Tensor, nn


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``(B, N, D)`` tokens over the positions where the ``(B, N)`` bool mask is True -> ``(B, D)``."""
    m = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * m).sum(1) / m.sum(1).clamp(min=1.0)


def zero_padding(tokens: Tensor, mask: Tensor) -> Tensor:
    """Set padded positions of ``(B, N, D)`` tokens to zero so they carry nothing downstream."""
    return tokens.masked_fill(~mask.unsqueeze(-1), 0.0)


class MLP(nn.Sequential):
    """Linear -> GELU -> Dropout -> Linear."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim))


class CrossAttentionLayer(nn.Module):
    """Pre-norm block: optional self-attention, cross-attention to a context, feed-forward.

    Args:
        dim: token width (queries and context share it).
        heads: attention heads.
        dropout: dropout on attention weights and residual branches.
        self_attention: also let the queries attend to each other first.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, self_attention: bool = True) -> None:
        super().__init__()
        self.self_attn = (
            nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True) if self_attention else None
        )
        self.norm_self = nn.LayerNorm(dim) if self_attention else None
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_q = nn.LayerNorm(dim)
        self.norm_ctx = nn.LayerNorm(dim)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = MLP(dim, 4 * dim, dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, x_mask: Tensor, context: Tensor, context_mask: Tensor) -> Tensor:
        """Update queries ``x (B, N, D)`` (mask ``(B, N)``) from ``context (B, M, D)`` (mask ``(B, M)``)."""
        if self.self_attn is not None and self.norm_self is not None:
            h = self.norm_self(x)
            x = x + self.drop(self.self_attn(h, h, h, key_padding_mask=~x_mask, need_weights=False)[0])
        ctx = self.norm_ctx(context)
        h = self.norm_q(x)
        x = x + self.drop(self.cross_attn(h, ctx, ctx, key_padding_mask=~context_mask, need_weights=False)[0])
        x = x + self.drop(self.ff(self.norm_ff(x)))
        return zero_padding(x, x_mask)
