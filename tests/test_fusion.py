"""One contract for every fusion block and every captioning conditioning: shapes, padding masks honoured exactly,
gradients to the real tokens of each input it reads.

A conditioning is seen through what its language model reads (:func:`lm_view`): the prefix or the cross-attention
memory, or the LM's last hidden states once the image vector is fused in; it reads no text.

Every fusion block defined in a module of the ``fusion`` package is found (:func:`defined_blocks`) and held to the
contract twice: as itself (unless the table below already builds it) and wrapped as a captioning conditioning
(:class:`FusionBlockConditioning`). A new block needs no line here when it takes ``dim`` and ``dropout`` keywords.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable

import pytest
import torch
from torch import nn

import fusion
from encoders.types import Features
from fusion import (
    ConditioningKind,
    CrossAttentionConditioning,
    CrossAttentionFusion,
    EarlyFusion,
    FusionBlock,
    FusionBlockConditioning,
    LateConditioning,
    LateFusion,
    LMConditioning,
    PrefixConditioning,
)
from fusion.layers import masked_mean

DV, DT, DIM = 24, 16, 32  # vision width, text width, fused width (the LM's width for a conditioning)
B, NV, NT = 3, 5, 6
T_LM, QUERIES = 4, 3  # LM positions a late conditioning rewrites; resampler output length

BLOCKS: dict[str, Callable[[], nn.Module]] = {
    "early": lambda: EarlyFusion(DV, DT, dim=DIM, layers=2, heads=4, dropout=0.1),
    "early-mean": lambda: EarlyFusion(DV, DT, dim=DIM, layers=2, heads=4, dropout=0.1, pooling="mean"),
    "early-text": lambda: EarlyFusion(DV, DT, dim=DIM, layers=2, heads=4, dropout=0.1, pooling="text"),
    "late-concat": lambda: LateFusion(DV, DT, dim=DIM, mode="concat"),
    "late-gated": lambda: LateFusion(DV, DT, dim=DIM, mode="gated"),
    "late-bilinear": lambda: LateFusion(DV, DT, dim=DIM, mode="bilinear"),
    "cross": lambda: CrossAttentionFusion(DV, DT, dim=DIM, layers=2, heads=4, dropout=0.1),
    "cross-bidirectional": lambda: CrossAttentionFusion(DV, DT, dim=DIM, layers=2, heads=4, bidirectional=True),
    # Captioning's conditionings, each with dropout somewhere so the seeded-dropout test has something to seed.
    "condition-prefix": lambda: PrefixConditioning(DV, DIM, dropout=0.1, projection="mlp"),
    "condition-prefix-resampler": lambda: PrefixConditioning(DV, DIM, dropout=0.1, queries=QUERIES, heads=4),
    "condition-cross": lambda: CrossAttentionConditioning(DV, DIM, dropout=0.1, projection="mlp"),
    "condition-late": lambda: LateConditioning(DV, DIM, dropout=0.1),
    # A fusion block whose output width differs from the LM's: the wrapper projects its tokens.
    "condition-block-projected": lambda: FusionBlockConditioning(LateFusion(DV, DIM, dim=DT), queries=QUERIES),
}


def defined_blocks() -> list[type[FusionBlock]]:
    """Every concrete :class:`FusionBlock` class defined in a module of the ``fusion`` package."""
    found: list[type[FusionBlock]] = []
    for info in pkgutil.iter_modules(fusion.__path__):
        module = importlib.import_module(f"fusion.{info.name}")
        found += [
            c
            for c in vars(module).values()
            if isinstance(c, type) and issubclass(c, FusionBlock) and c.__module__ == module.__name__
        ]
    return sorted((c for c in found if not inspect.isabstract(c)), key=lambda c: c.__name__)


def default_block(cls: type[FusionBlock], vision_dim: int, text_dim: int) -> FusionBlock:
    """``cls(vision_dim, text_dim)`` with output width ``DIM`` and some dropout, where it takes those keywords."""
    params = inspect.signature(cls).parameters
    return cls(vision_dim, text_dim, **{k: v for k, v in {"dim": DIM, "dropout": 0.1}.items() if k in params})


TABLED = {type(make()) for make in BLOCKS.values()}
for _cls in defined_blocks():
    if _cls not in TABLED:
        BLOCKS[_cls.__name__] = lambda cls=_cls: default_block(cls, DV, DT)
    # The same block conditioning a captioner: its text width is the LM's width.
    BLOCKS[f"condition-block-{_cls.__name__}"] = lambda cls=_cls: FusionBlockConditioning(
        default_block(cls, DV, DIM), queries=QUERIES
    )

# Token count of the fused output, per block (a discovered block without an entry: its own count).
OUT_TOKENS = {"late-concat": 1, "late-gated": 1, "late-bilinear": 1, "cross": NT, "cross-bidirectional": NT + NV}
OUT_TOKENS |= {name: 1 + NV + NT for name in ("early", "early-mean", "early-text")}
OUT_TOKENS |= {"condition-prefix": 1 + NV, "condition-prefix-resampler": QUERIES, "condition-cross": NV}
OUT_TOKENS |= {"condition-late": T_LM, "condition-block-projected": 1, "condition-block-LateFusion": 1}
OUT_TOKENS |= {"condition-block-CrossAttentionFusion": QUERIES, "condition-block-EarlyFusion": 1 + NV + QUERIES}

V_MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
T_MASK = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)


def features(tokens: torch.Tensor, mask: torch.Tensor) -> Features:
    """Encoder-like features: the pooled vector is the masked mean, so it too ignores padding."""
    return Features(tokens=tokens, mask=mask, pooled=masked_mean(tokens, mask))


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, NV, DV, generator=g), torch.randn(B, NT, DT, generator=g)


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return BLOCKS[name]()


def lm_view(block: LMConditioning, vision: Features, items: slice) -> Features:
    """What the language model reads of a conditioning: its prefix or cross-attention memory, or (late) the LM's
    last hidden states ``(B, T_LM, D)`` after the image vector is fused in, every position real."""
    cond = block(vision)
    if block.kind is ConditioningKind.PREFIX:
        assert cond.prefix is not None and cond.encoder is None and cond.hidden is None
        return cond.prefix
    if block.kind is ConditioningKind.CROSS_ATTENTION:
        assert cond.encoder is not None and cond.prefix is None and cond.hidden is None
        return cond.encoder
    assert cond.hidden is not None and cond.prefix is None and cond.encoder is None
    g = torch.Generator().manual_seed(7)
    hidden = cond.hidden(torch.randn(B, T_LM, DIM, generator=g)[items])  # (B, T_LM, D)
    return Features(tokens=hidden, mask=torch.ones(hidden.shape[:2], dtype=torch.bool), pooled=hidden.mean(1))


def run(block: nn.Module, v: torch.Tensor, t: torch.Tensor, items: slice = slice(None)) -> Features:
    """``block`` on products ``items`` of the vision and text tokens (with their masks)."""
    vision, text = features(v[items], V_MASK[items]), features(t[items], T_MASK[items])
    if isinstance(block, FusionBlock):
        return block(vision, text)
    assert isinstance(block, LMConditioning)
    return lm_view(block, vision, items)


def width(block: nn.Module) -> int:
    """The output width: a fusion block's ``output_dim``, a conditioning's ``lm_dim``."""
    return block.output_dim if isinstance(block, FusionBlock) else block.lm_dim


def reads_text(name: str) -> bool:
    """Fusion blocks read text; a conditioning reads the image only."""
    return not name.startswith("condition-")


def poison(x: torch.Tensor, mask: torch.Tensor, seed: int) -> torch.Tensor:
    """``x`` with every padded position replaced by large random values."""
    g = torch.Generator().manual_seed(seed)
    noise = 100 * torch.randn(x.shape, generator=g)
    return torch.where(mask[..., None], x, noise)


@pytest.fixture(params=list(BLOCKS))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_shapes_and_output_dim(name: str) -> None:
    block = build(name).eval()
    v, t = inputs()
    with torch.no_grad():
        out = run(block, v, t)
    assert isinstance(out, Features)
    assert width(block) == DIM
    n_out = OUT_TOKENS.get(name, out.tokens.shape[1])  # a discovered block's token count is its own
    assert out.tokens.shape == (B, n_out, DIM)
    assert out.mask.shape == (B, n_out) and out.mask.dtype == torch.bool
    assert out.pooled.shape == (B, DIM)
    assert torch.isfinite(out.tokens).all() and torch.isfinite(out.pooled).all()
    # Masked output tokens are zero; every item has at least one real output token.
    assert (out.tokens[~out.mask] == 0).all()
    assert out.mask.any(1).all()
    # Items are independent: one product encoded alone gives the same result as in the batch.
    with torch.no_grad():
        alone = run(block, v, t, items=slice(1, 2))
    torch.testing.assert_close(alone.pooled[0], out.pooled[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_padded_positions_never_change_any_output(name: str, grad: bool) -> None:
    block = build(name).eval()
    v, t = inputs()
    with torch.set_grad_enabled(grad):
        ref = run(block, v, t)
        text_poisoned = run(block, v, poison(t, T_MASK, seed=1))
        vision_poisoned = run(block, poison(v, V_MASK, seed=2), t)
    for out in (text_poisoned, vision_poisoned):
        assert torch.equal(out.tokens, ref.tokens)
        assert torch.equal(out.mask, ref.mask)
        assert torch.equal(out.pooled, ref.pooled)


def test_real_positions_do_change_the_output(name: str) -> None:
    """The padding test is not vacuous: the same change to a real token of either modality shows up (text: only
    where the block reads it)."""
    block = build(name).eval()
    v, t = inputs()
    with torch.no_grad():
        ref = run(block, v, t)
        v2, t2 = v.clone(), t.clone()
        v2[1, 0] += 3.0  # a real vision token of product 1
        t2[2, 1] += 3.0  # a real text token of product 2
        out_v, out_t = run(block, v2, t), run(block, v, t2)
    assert not torch.allclose(out_v.pooled[1], ref.pooled[1])
    if reads_text(name):
        assert not torch.allclose(out_t.pooled[2], ref.pooled[2])
    else:
        assert torch.equal(out_t.pooled, ref.pooled)
    torch.testing.assert_close(out_v.pooled[0], ref.pooled[0])  # other products untouched


def test_gradients_reach_only_the_real_tokens_of_each_input_read(name: str) -> None:
    block = build(name).eval()  # no dropout, so the gradient is deterministic
    v, t = inputs()
    v.requires_grad_(True)
    t.requires_grad_(True)
    out = run(block, v, t)
    # A random projection: the plain sum of a LayerNorm output is constant and would have zero gradient.
    g = torch.Generator().manual_seed(5)
    w_pooled = torch.randn(out.pooled.shape, generator=g)
    w_tokens = torch.randn(out.tokens.shape, generator=g)
    ((out.pooled * w_pooled).sum() + (out.tokens * w_tokens).sum()).backward()
    if not reads_text(name):
        assert t.grad is None, "a conditioning's output depends on the text"
    for x, mask in ((v, V_MASK), (t, T_MASK)) if reads_text(name) else ((v, V_MASK),):
        assert x.grad is not None
        norms = x.grad.norm(dim=-1)  # (B, N)
        assert (norms[mask] > 0).all(), "a real token got no gradient"
        assert (norms[~mask] == 0).all(), "a padded token got a gradient"
    missing = [n for n, p in block.named_parameters() if p.grad is None]
    assert not missing, f"parameters outside the graph (DDP would fail): {missing}"


def test_training_mode_dropout_is_seeded(name: str) -> None:
    block = build(name).train()  # every block here has dropout > 0
    v, t = inputs()
    torch.manual_seed(0)
    a = run(block, v, t)
    torch.manual_seed(0)
    b = run(block, v, t)
    torch.manual_seed(1)
    c = run(block, v, t)
    assert torch.equal(a.pooled, b.pooled)
    assert not torch.equal(a.pooled, c.pooled)


def test_every_fusion_block_is_discovered_and_wrapped() -> None:
    """Discovery is not vacuous: the three blocks are found, and each runs as a captioning conditioning too."""
    found = defined_blocks()
    assert {EarlyFusion, LateFusion, CrossAttentionFusion} <= set(found)
    for cls in found:
        wrapped = build(f"condition-block-{cls.__name__}")
        assert isinstance(wrapped, FusionBlockConditioning) and isinstance(wrapped.block, cls)
        assert wrapped.kind is ConditioningKind.PREFIX and not wrapped.needs_cross_attention
    assert isinstance(build("condition-block-projected").project, nn.Linear)
    with pytest.raises(ValueError, match="queries must be positive"):
        FusionBlockConditioning(LateFusion(DV, DIM), queries=0)


def test_late_fusion_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="outer"):
        LateFusion(DV, DT, mode="outer")  # type: ignore[arg-type]


def test_cross_attention_bidirectional_streams() -> None:
    """Uni-directional output holds the text stream only; bidirectional appends the image stream."""
    v, t = inputs()
    with torch.no_grad():
        uni = run(build("cross").eval(), v, t)
        bi = run(build("cross-bidirectional").eval(), v, t)
    assert torch.equal(uni.mask, T_MASK)
    assert torch.equal(bi.mask, torch.cat([T_MASK, V_MASK], dim=1))
    torch.testing.assert_close(bi.pooled, masked_mean(bi.tokens, bi.mask))


def test_early_fusion_pooled_is_cls_token() -> None:
    v, t = inputs()
    with torch.no_grad():
        out = run(build("early").eval(), v, t)
    assert torch.equal(out.pooled, out.tokens[:, 0])
    assert out.mask[:, 0].all()
    assert torch.equal(out.mask[:, 1:], torch.cat([V_MASK, T_MASK], dim=1))


def test_early_fusion_mean_and_text_pooling() -> None:
    """``mean`` averages every real output token; ``text`` only the text tokens' outputs."""
    v, t = inputs()
    with torch.no_grad():
        mean = run(build("early-mean").eval(), v, t)
        text = run(build("early-text").eval(), v, t)
    torch.testing.assert_close(mean.pooled, masked_mean(mean.tokens, mean.mask))
    torch.testing.assert_close(text.pooled, masked_mean(text.tokens[:, 1 + NV :], T_MASK))
    with pytest.raises(ValueError, match="pooling 'max'"):
        EarlyFusion(DV, DT, pooling="max")  # type: ignore[arg-type]
