"""The retriever's contrastive losses: symmetric InfoNCE, its multi-positive form and Matryoshka prefixes.

- :func:`info_nce`: CLIP's symmetric loss, each query's own product its only positive.
- :func:`multi_positive_info_nce`: SupCon-style, the target spread evenly over every positive (products that share
  the attribute values a query states); equal to :func:`info_nce` when each row has only itself.
- :func:`matryoshka_loss`: a loss on the L2-renormalised first ``k`` dimensions, averaged over the listed widths
  (Matryoshka representation learning), so a prefix of a vector works alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from multimodal.errors import UserError

PairLoss = Callable[[Tensor, Tensor], Tensor]


def info_nce(a: Tensor, b: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE of matching rows of ``a (B, E)`` and ``b (B, E)`` (both L2-normalised)."""
    logits = logit_scale * a @ b.t()  # (B, B)
    target = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def multi_positive_info_nce(a: Tensor, b: Tensor, logit_scale: Tensor, positives: Tensor) -> Tensor:
    """Symmetric InfoNCE with several positives per row: cross-entropy against targets spread evenly over them.

    Args:
        a: queries ``(B, E)``, L2-normalised.
        b: products ``(B, E)``, L2-normalised.
        logit_scale: the inverse temperature.
        positives: ``(B, B)`` bool, ``[i, j]`` True when product ``j`` answers query ``i``; the diagonal must be True.
    """
    logits = logit_scale * a @ b.t()  # (B, B)
    target = positives.to(logits.dtype)
    by_query = F.cross_entropy(logits, target / target.sum(1, keepdim=True))
    by_product = F.cross_entropy(logits.t(), target.t() / target.sum(0).unsqueeze(1))
    return (by_query + by_product) / 2


def contrastive(a: Tensor, b: Tensor, logit_scale: Tensor, positives: Tensor | None = None) -> Tensor:
    """:func:`info_nce`, or :func:`multi_positive_info_nce` when ``positives (B, B)`` are given."""
    if positives is None:
        return info_nce(a, b, logit_scale)
    return multi_positive_info_nce(a, b, logit_scale, positives)


def shared_attribute_positives(codes: Tensor, stated: Tensor) -> Tensor:
    """Which products answer which query: itself, and any product with the same known value in every attribute
    column the query states.

    Args:
        codes: ``(B, A)`` codes of each product's attribute values (negative: unknown, equal to nothing).
        stated: ``(B, A)`` bool, the attribute columns each query states (none: only its own product).

    Returns:
        ``(B, B)`` bool, ``[i, j]`` True when product ``j`` is a positive of query ``i``.
    """
    same = (codes.unsqueeze(1) == codes.unsqueeze(0)) & (codes.unsqueeze(1) >= 0)  # (B, B, A): [i, j, a]
    agrees = (same | ~stated.unsqueeze(1)).all(-1) & stated.any(-1, keepdim=True)  # (B, B)
    return agrees | torch.eye(codes.shape[0], dtype=torch.bool, device=codes.device)


def matryoshka_widths(dims: Sequence[int] | None, embed_dim: int) -> list[int]:
    """The checked ``model.matryoshka_dims``, sorted: each width in ``[1, embed_dim)``."""
    bad = [k for k in dims or [] if not 1 <= int(k) < embed_dim]
    if bad:
        raise UserError(f"model.matryoshka_dims: widths {bad} are not in [1, embed_dim={embed_dim})")
    return sorted({int(k) for k in dims or []})


def matryoshka_loss(a: Tensor, b: Tensor, dims: Sequence[int], loss: PairLoss) -> Tensor:
    """Mean of ``loss`` over the L2-renormalised prefixes ``a[:, :k]``, ``b[:, :k]`` for each ``k`` in ``dims``."""
    terms = [loss(F.normalize(a[:, :k], dim=-1), F.normalize(b[:, :k], dim=-1)) for k in dims]
    return torch.stack(terms).mean()
