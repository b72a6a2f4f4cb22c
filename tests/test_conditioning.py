"""Captioning's conditioning contract beyond the shared fusion test: each family declares how it feeds the language
model (:class:`ConditioningKind`), fills that part of its :class:`LMCondition` alone, and hands it over as the
plain tensors an exported graph names."""

from __future__ import annotations

import pytest
import torch

from encoders.types import Features
from fusion.conditioning import (
    ConditioningKind,
    CrossAttentionConditioning,
    LateConditioning,
    LMCondition,
    LMConditioning,
    PrefixConditioning,
)
from fusion.layers import masked_mean

DV, D, B, N = 12, 16, 2, 5
FAMILIES = {
    PrefixConditioning: ConditioningKind.PREFIX,
    CrossAttentionConditioning: ConditioningKind.CROSS_ATTENTION,
    LateConditioning: ConditioningKind.IMAGE_VECTOR,
}


def vision() -> Features:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(B, N, DV, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    return Features(tokens=tokens, mask=mask, pooled=masked_mean(tokens, mask))


@pytest.mark.parametrize("family", list(FAMILIES), ids=lambda f: f.__name__)
def test_each_family_declares_its_kind_and_hands_over_that_part(family: type[LMConditioning]) -> None:
    torch.manual_seed(0)
    block = family(DV, D).eval()
    kind = FAMILIES[family]
    assert block.kind is kind
    assert block.needs_cross_attention == (kind is ConditioningKind.CROSS_ATTENTION)
    with torch.no_grad():
        cond = block(vision())
        tensors = cond.tensors(kind)
    assert len(tensors) == len(kind.tensor_names)
    if kind is ConditioningKind.IMAGE_VECTOR:
        assert isinstance(block, LateConditioning)
        torch.testing.assert_close(tensors[0], block.image_vector(vision()))
        assert cond.hidden is not None
    else:
        part = cond.prefix if kind is ConditioningKind.PREFIX else cond.encoder
        assert part is not None and tensors == (part.tokens, part.mask)
    others = {ConditioningKind.PREFIX: cond.prefix, ConditioningKind.CROSS_ATTENTION: cond.encoder}
    assert all(value is None for k, value in others.items() if k is not kind)


def test_tensor_names_are_the_exported_graph_outputs() -> None:
    """Exported caption graphs name their outputs by these: changing one breaks every stored export."""
    assert ConditioningKind.PREFIX.tensor_names == ("prefix", "prefix_mask")
    assert ConditioningKind.CROSS_ATTENTION.tensor_names == ("encoder_states", "encoder_states_mask")
    assert ConditioningKind.IMAGE_VECTOR.tensor_names == ("image_vector",)


def test_a_condition_without_its_declared_part_is_refused() -> None:
    with pytest.raises(ValueError, match="prefix conditioning returned no prefix"):
        LMCondition().tensors(ConditioningKind.PREFIX)
    with pytest.raises(ValueError, match="image-vector conditioning returned no vector"):
        LMCondition(hidden=lambda h: h).tensors(ConditioningKind.IMAGE_VECTOR)


def test_a_family_must_declare_its_kind() -> None:
    class NoKind(LMConditioning):
        def forward(self, vision: Features) -> LMCondition:
            return LMCondition()

    with pytest.raises(TypeError, match="kind"):
        NoKind(DV, D)  # type: ignore[abstract]


def test_late_conditioning_fuses_each_item_into_its_repeated_rows() -> None:
    """``generate`` repeats each item for beams: the hidden states ``(k B, T, D)`` get item ``i``'s vector in rows
    ``k i .. k i + k - 1``."""
    torch.manual_seed(0)
    block = LateConditioning(DV, D).eval()
    hidden = torch.randn(B, 3, D)
    with torch.no_grad():
        cond = block(vision())
        assert cond.hidden is not None
        once, beams = cond.hidden(hidden), cond.hidden(hidden.repeat_interleave(2, dim=0))
    torch.testing.assert_close(beams, once.repeat_interleave(2, dim=0))
