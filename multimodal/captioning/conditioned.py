"""How vision features condition the language model: the conditioning block built for the two towers, and the
LM's inputs with an early-fusion image prefix in front of the text."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from encoders.language_model import CausalLM, InputTransform
from encoders.types import VisionEncoder
from fusion.base import FusionBlock
from fusion.block_conditioning import FusionBlockConditioning
from fusion.conditioning import LMCondition, LMConditioning
from multimodal.errors import UserError

# Typed loosely on purpose: a module of neither fusion family gets a one-line UserError, not a parser dump.
ConditioningFactory = Callable[[int, int], nn.Module]


def build_conditioning(fusion: ConditioningFactory, vision: VisionEncoder, language_model: CausalLM) -> LMConditioning:
    """The conditioning block ``fusion`` builds for these towers (adding cross-attention to the LM if it needs it).

    A :class:`~fusion.base.FusionBlock` (the family tagging and search use) is built with the LM's width as its text
    width and wrapped in :class:`~fusion.block_conditioning.FusionBlockConditioning` (learned queries play the text,
    its fused tokens become a prefix); anything else that is not an :class:`LMConditioning` is a one-line error."""
    conditioning = fusion(vision.output_dim, language_model.hidden_size)
    if isinstance(conditioning, FusionBlock):
        conditioning = FusionBlockConditioning(conditioning)
    if not isinstance(conditioning, LMConditioning):
        raise UserError(
            f"model.fusion: {type(conditioning).__name__} cannot condition a language model; use a fusion block "
            "(fusion.base.FusionBlock) or a conditioning (fusion.conditioning.PrefixConditioning, "
            "CrossAttentionConditioning or LateConditioning)"
        )
    if conditioning.needs_cross_attention:
        language_model.add_cross_attention()
    return conditioning


def prefixed_inputs(
    cond: LMCondition, ids: Tensor, mask: Tensor, pad_id: int
) -> tuple[Tensor, Tensor, InputTransform | None]:
    """Early fusion puts ``P`` placeholder columns before the ids ``(B, T)``; the returned input transform swaps
    their embeddings for the image prefix. Returns ids and mask ``(B, P+T)`` and the transform (None: no prefix)."""
    if cond.prefix is None:
        return ids, mask, None
    prefix = cond.prefix
    n, width = prefix.tokens.shape[:2]
    ids = torch.cat([ids.new_full((n, width), pad_id), ids], 1)
    mask = torch.cat([prefix.mask.to(mask.dtype), mask], 1)

    def put_prefix(input_ids: Tensor, embeds: Tensor) -> Tensor:
        # A one-token call is a cached generation step: the prefix already sits in the KV cache.
        if input_ids.shape[1] <= 1:
            return embeds
        tokens = prefix.tokens.repeat_interleave(input_ids.shape[0] // n, dim=0).to(embeds.dtype)  # (B', P, D)
        return torch.cat([tokens, embeds[:, width:]], 1)

    return ids, mask, put_prefix
