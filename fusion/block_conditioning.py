"""Any :class:`~fusion.base.FusionBlock` as a captioning conditioning: learned queries play the text.

A fusion block fuses vision with text, but a captioner's language model needs the image alone turned into something
it reads. :class:`FusionBlockConditioning` gives the block a learned set of query tokens in place of the text (the
Q-Former / Perceiver idea: learned queries fused with the image) and hands the fused tokens to the language model
as an early-fusion prefix. So one block written for tagging and search also conditions a captioner, with no second
implementation: ``ProductCaptioner``'s ``fusion`` may name any fusion block, and the task wraps it.
"""

from __future__ import annotations

import torch
from torch import nn

from encoders.types import Features
from fusion.base import FusionBlock
from fusion.conditioning import ConditioningKind, LMCondition, LMConditioning
from fusion.layers import zero_padding


class FusionBlockConditioning(LMConditioning):
    """A fusion block built as ``block(vision_dim, lm_dim)`` fuses the image with ``queries`` learned tokens of
    width ``lm_dim``; its fused tokens (projected to ``lm_dim`` when its ``output_dim`` differs) become the prefix.

    The prefix mask is the block's output mask (masked prefix tokens are zero), so whatever the block promises
    about padding (a masked vision position never changes an output) holds for what the language model reads.

    Args:
        block: the fusion block; its text width ``text_dim`` is the language model's width ``D``.
        queries: number of learned query tokens ``Q`` (the "text" the block reads).
    """

    kind = ConditioningKind.PREFIX

    def __init__(self, block: FusionBlock, queries: int = 8) -> None:
        super().__init__(block.vision_dim, block.text_dim)
        if queries < 1:
            raise ValueError(f"fusion block conditioning: queries must be positive, not {queries}")
        self.block = block
        # Small random queries, as the resampler of ImageTokens starts: distinct tokens, no large initial signal.
        self.queries = nn.Parameter(torch.randn(queries, block.text_dim) * 0.02)
        width = block.output_dim
        self.project: nn.Module = nn.Identity() if width == self.lm_dim else nn.Linear(width, self.lm_dim)

    def forward(self, vision: Features) -> LMCondition:
        """Fuse ``vision`` (tokens ``(B, N, Dv)``) with the queries ``(B, Q, D)``: prefix ``(B, P, D)`` with mask."""
        b = vision.tokens.shape[0]
        q = self.queries.unsqueeze(0).expand(b, -1, -1)  # (B, Q, D)
        text = Features(tokens=q, mask=vision.mask.new_ones(q.shape[:2]), pooled=q.mean(1))
        fused = self.block(vision, text)  # tokens (B, P, output_dim)
        tokens = zero_padding(self.project(fused.tokens), fused.mask)  # (B, P, D)
        return LMCondition(prefix=Features(tokens=tokens, mask=fused.mask, pooled=self.project(fused.pooled)))
