"""Fusion of vision with text: one contract for the tasks that read text, one for conditioning a language model.

``FusionBlock.forward(vision: Features, text: Features) -> Features`` (tagging, search):

- :class:`fusion.early.EarlyFusion`: project, add modality embeddings, concatenate, joint transformer.
- :class:`fusion.late.LateFusion`: combine pooled vectors (concat + MLP, gated, or bilinear).
- :class:`fusion.cross_attention.CrossAttentionFusion`: text tokens attend to image tokens (optionally both ways).

``LMConditioning.forward(vision: Features) -> LMCondition`` (captioning), whose ``kind`` (:class:`ConditioningKind`)
says how it feeds the language model: :class:`fusion.conditioning.PrefixConditioning` (prefix tokens),
:class:`fusion.conditioning.CrossAttentionConditioning` (cross-attention memory) or
:class:`fusion.conditioning.LateConditioning` (a pooled image vector). Any fusion block also conditions a language
model: :class:`fusion.block_conditioning.FusionBlockConditioning` fuses the image with learned query tokens in place
of the text and hands the fused tokens over as a prefix, so a new block is written once for every task.
"""

from fusion.base import FusionBlock
from fusion.block_conditioning import FusionBlockConditioning
from fusion.conditioning import (
    ConditioningKind,
    CrossAttentionConditioning,
    LateConditioning,
    LMCondition,
    LMConditioning,
    PrefixConditioning,
)
from fusion.cross_attention import CrossAttentionFusion
from fusion.early import EarlyFusion
from fusion.late import LateFusion

__all__ = [
    "ConditioningKind",
    "CrossAttentionConditioning",
    "CrossAttentionFusion",
    "EarlyFusion",
    "FusionBlock",
    "FusionBlockConditioning",
    "LMCondition",
    "LMConditioning",
    "LateConditioning",
    "LateFusion",
    "PrefixConditioning",
]
