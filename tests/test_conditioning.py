"""Captioning's conditioning contract beyond the shared fusion test: each family declares how it feeds the language
model (:class:`ConditioningKind`), fills that part of its :class:`LMCondition` alone, and hands it over as the
plain tensors an exported graph names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from encoders.types import Features
from fusion.block_conditioning import FusionBlockConditioning
from fusion.conditioning import (
    ConditioningKind,
    CrossAttentionConditioning,
    LateConditioning,
    LMCondition,
    LMConditioning,
    PrefixConditioning,
)
from fusion.layers import masked_mean

ROOT = Path(__file__).resolve().parents[1]
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


def test_a_captioner_conditioned_by_a_fusion_block_exports_its_prefix(tmp_path: Path) -> None:
    """``fusion:`` naming a fusion block (the tagging and search family) builds a captioner whose block is wrapped
    as a prefix conditioning (learned queries in place of the text); its vision graph exports with the prefix and
    runs on ONNX Runtime as in eager mode."""
    from multimodal.loading import build_model
    from multimodal.onnx.export import export_graph, parity
    from multimodal.onnx.graphs import graphs_of

    block = "fusion.cross_attention.CrossAttentionFusion"  # attention with masks: the hardest of the three to export
    config = yaml.safe_load((ROOT / "configs" / "captioning" / "tiny.yaml").read_text())
    config["model"]["init_args"]["fusion"] = {"class_path": block, "init_args": {"dim": 48, "dropout": 0.0}}
    model = build_model(config["model"], "tiny.yaml").eval()
    conditioning = model.conditioning
    assert isinstance(conditioning, FusionBlockConditioning) and conditioning.kind is ConditioningKind.PREFIX
    assert f"{type(conditioning.block).__module__}.{type(conditioning.block).__name__}" == block
    assert conditioning.block.text_dim == model.lm.hidden_size == 64  # the queries have the LM's width
    assert isinstance(conditioning.project, torch.nn.Linear)  # the block's width 48 is projected to 64
    (graph,) = graphs_of(model)
    assert graph.outputs == ("tokens", "mask", "pooled", "prefix", "prefix_mask")
    export_graph(graph, model, tmp_path / "caption_vision.onnx")
    assert parity(graph, model, tmp_path / "caption_vision.onnx") < 1e-4  # fp32 rounding
