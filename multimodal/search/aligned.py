"""Starting a retriever from a pretrained pair (CLIP, SigLIP): its similarities are the pair's own before training.

Towers built from one contrastive model declare its joint space (:class:`encoders.pair.AlignedTower`). When the
retriever's two towers declare the same space and their width is its ``embed_dim``, its projections start as the
identity and its temperature as the pair's, so text-photo and photo-photo similarities, searches and zero-shot
tags equal the pair's own until training moves them. Otherwise the retriever starts as it always does (random
projections), and a pair whose width differs from ``embed_dim`` gets a warning saying so.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from encoders.pair import AlignedSpace, AlignedTower


def shared_space(vision: nn.Module, text: nn.Module) -> AlignedSpace | None:
    """The joint space both towers declare, or None when they are not one pretrained pair."""
    if not isinstance(vision, AlignedTower) or not isinstance(text, AlignedTower):
        return None
    space = vision.aligned_space
    if space is None or text.aligned_space is None or text.aligned_space.name != space.name:
        return None
    return space


def align_projections(retriever: nn.Module) -> bool:
    """Make a :class:`multimodal.search.retriever.ProductRetriever` start from its towers' pretrained pair:
    ``text_proj`` and ``image_proj`` the identity, ``logit_scale`` the pair's (its requires_grad kept). Returns
    whether it did. The product projection of ``fused`` products is left as built (its input is the fusion's).
    """
    space = shared_space(retriever.vision, retriever.text)
    if space is None:
        return False
    dims = {retriever.vision.output_dim, retriever.text.output_dim}
    if dims != {retriever.embed_dim}:
        warnings.warn(
            f"the towers are one pretrained pair ({space.name}, width {sorted(dims)}) but model.embed_dim is "
            f"{retriever.embed_dim}: the projections start random; set embed_dim to the pair's width to keep its space",
            stacklevel=2,
        )
        return False
    with torch.no_grad():
        for projection in (retriever.text_proj, retriever.image_proj):
            projection.weight.copy_(torch.eye(retriever.embed_dim, dtype=projection.weight.dtype))
        retriever.logit_scale.fill_(space.logit_scale)
    return True
