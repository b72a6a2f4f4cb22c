"""Fusion blocks: one interface, ``FusionBlock.forward(vision: Features, text: Features) -> Features``.

- :class:`fusion.early.EarlyFusion`: project, add modality embeddings, concatenate, joint transformer.
- :class:`fusion.late.LateFusion`: combine pooled vectors (concat + MLP, gated, or bilinear).
- :class:`fusion.cross_attention.CrossAttentionFusion`: text tokens attend to image tokens (optionally both ways).
"""

from fusion.base import FusionBlock
from fusion.cross_attention import CrossAttentionFusion
from fusion.early import EarlyFusion
from fusion.late import LateFusion

__all__ = ["CrossAttentionFusion", "EarlyFusion", "FusionBlock", "LateFusion"]
