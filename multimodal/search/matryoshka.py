"""Vectors cut to their first dimensions (Matryoshka): ``export --dim`` and ``index --dim`` keep the first ``dim``
dimensions of each product vector, L2-renormalised, and queries are cut the same way where they meet the index
(:func:`multimodal.search.query.query_vectors`). Memory and search time shrink to ``dim / full`` of the full width;
how much ranking quality the cut keeps depends on how the model was trained (a Matryoshka loss keeps most of it).

An export or index that was cut records ``dim`` (the width kept) and ``cut_from`` (the model's full width)."""

from __future__ import annotations

from typing import Any

import numpy as np

from multimodal.errors import UserError


def check_dim(dim: int, width: int, what: str) -> None:
    """A one-line error for a ``--dim`` below 1 or wider than ``width``, the width of ``what`` (named in it)."""
    if dim < 1:
        raise UserError(f"--dim {dim}: give the number of leading dimensions to keep, at least 1")
    if dim > width:
        raise UserError(f"--dim {dim} is larger than {what}'s vectors ({width} dimensions): give 1..{width}")


def cut(vectors: np.ndarray, dim: int) -> np.ndarray:
    """The first ``dim`` dimensions of ``vectors (N, E)``, each row L2-renormalised ``(N, dim)`` float32 (a row
    whose kept part is all zeros stays zeros)."""
    head = np.asarray(vectors, dtype=np.float32)[:, :dim]
    norms = np.linalg.norm(head, axis=1, keepdims=True)
    return np.ascontiguousarray(head / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def narrowed(vectors: np.ndarray, dim: int) -> np.ndarray:
    """``vectors (N, E)`` cut to their first ``dim`` dimensions (:func:`cut`) when they are wider, else as they are
    (bit for bit: a full-width vector is not renormalised again)."""
    return cut(vectors, dim) if vectors.ndim == 2 and 0 < dim < vectors.shape[1] else vectors


def full_width(info: dict[str, Any], dim: int) -> int:
    """The model's width behind vectors of width ``dim`` described by ``info`` (an index's or export's record)."""
    return int(info.get("cut_from") or dim)
