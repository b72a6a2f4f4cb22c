"""Exporting a captioner's decoder graphs (:mod:`multimodal.onnx.caption_decoder`) with dynamic batch, prompt,
cache and vocabulary axes, checked against eager on two input shapes and two vocabularies (as
:mod:`multimodal.onnx.graph_export` checks the other graphs), and what the decoding loop needs besides them."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from encoders.types import Features
from fusion.conditioning import ConditioningKind, LMConditioning
from multimodal.errors import UserError
from multimodal.onnx.caption_decoder import FIRST, STEP, DecoderFirst, DecoderStep, graph_names
from multimodal.onnx.caption_rerank import MEMORY, write_memory

TOLERANCE = 1e-3  # as graph_export: a graph further from eager than this is not written


def example_inputs(
    first: DecoderFirst, batch: int, seq: int, features: Features | None = None
) -> dict[str, tuple[Tensor, ...]]:
    """Inputs of both graphs: the conditioning of random photos (one absent; or of the rows of vision
    ``features``, cycled), left-padded prompts (one padded row), the first graph's presents as the step's past,
    and a vocabulary of every id."""
    captioner = first.captioner
    gen = torch.Generator().manual_seed(batch * 100 + seq)
    lm = captioner.lm
    from multimodal.onnx.graphs import image_size

    with torch.no_grad():
        if features is None:
            pixels = torch.randn(batch, 3, *image_size(captioner), generator=gen)
            has_image = torch.arange(batch) < batch - 1
            vision = captioner.encode_images(pixels, has_image)
        else:
            rows = torch.arange(batch) % features.tokens.shape[0]
            vision = Features(features.tokens[rows], features.mask[rows], features.pooled[rows])
        cond = captioner.conditioning(vision).tensors(first.kind)
        vocab = int(lm.tokenizer.vocab_size)
        ids = torch.randint(min(1000, vocab // 2), vocab, (batch, seq), generator=gen)
        ids[:, 0] = lm.bos_id
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[0, : seq // 2] = 0  # one left-padded row
        vocab_ids = torch.arange(vocab, dtype=torch.long)
        out = first(*cond, ids, mask, vocab_ids)
    full_mask = mask if first.kind is not ConditioningKind.PREFIX else torch.cat([cond[1].long(), mask], 1)
    step_mask = torch.cat([full_mask, torch.ones(batch, 1, dtype=torch.long)], 1)
    token = torch.randint(min(1000, vocab // 2), vocab, (batch, 1), generator=gen)
    step_cond = cond if first.kind is not ConditioningKind.PREFIX else ()
    past = out[1:]  # presents, then the cross-attention states
    return {FIRST: (*cond, ids, mask, vocab_ids), STEP: (token, step_mask, vocab_ids, *step_cond, *past)}


def _dynamic_shapes(names: tuple[str, ...]) -> tuple[dict[int, Any], ...]:
    batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("seq", min=1)
    past, vocab = torch.export.Dim("past", min=1), torch.export.Dim("vocab", min=1)
    shapes: list[dict[int, Any]] = []
    for name in names:
        if name == "vocab_ids":
            shapes.append({0: vocab})
        elif name.startswith("past."):
            shapes.append({0: batch, 2: past})
        elif name in ("input_ids", "attention_mask") and "past.0.key" in names:  # the step: one token, mask past+1
            shapes.append({0: batch} if name == "input_ids" else {0: batch, 1: past + 1})
        elif name in ("input_ids", "attention_mask"):
            shapes.append({0: batch, 1: seq})
        else:
            shapes.append({0: batch})
    return tuple(shapes)


def _export(module: nn.Module, args: tuple[Tensor, ...], names: tuple[tuple[str, ...], tuple[str, ...]],
            path: Path) -> None:  # fmt: skip
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), dynamo=True, input_names=list(names[0]),
                          output_names=list(names[1]), dynamic_shapes=(_dynamic_shapes(names[0]),), verbose=False,
                          external_data=False)  # fmt: skip


def decoder_parity(
    modules: dict[str, nn.Module], paths: dict[str, Path], names: dict[str, Any], features: Features | None = None
) -> float:
    """Largest |ONNX Runtime - eager| over every output of both graphs, on two batch and prompt sizes and two
    vocabularies (every id, and every third one)."""
    import numpy as np

    from multimodal.onnx.runtime import session

    worst = 0.0
    for batch, seq in ((2, 6), (3, 4)):
        examples = example_inputs(modules[FIRST], batch, seq, features)  # type: ignore[arg-type]
        for graph, args in examples.items():
            sess = session(paths[graph])
            for stride in (1, 3):
                chosen = tuple(
                    a[::stride] if n == "vocab_ids" else a for n, a in zip(names[graph][0], args, strict=True)
                )
                with torch.no_grad():
                    ref = modules[graph](*chosen)
                feed = {n: a.numpy() for n, a in zip(names[graph][0], chosen, strict=True)}
                real = _real_positions(modules[FIRST], dict(zip(names[graph][0], chosen, strict=True)))
                for name, r, o in zip(names[graph][1], ref, sess.run(None, feed), strict=True):
                    diff = np.abs(r.float().numpy() - o.astype(np.float32))
                    if name.startswith("present.") and graph == FIRST:
                        diff = diff * real[:, None, :, None]  # a padded position's state is never read
                    worst = max(worst, float(diff.max()))
    return worst


def _real_positions(first: nn.Module, feed: dict[str, Tensor]) -> Any:
    """``(B, S)`` 1 where the first graph's cache holds a real position (prefix and prompt), else 0."""
    mask = feed["attention_mask"]
    if "prefix_mask" in feed:
        mask = torch.cat([feed["prefix_mask"].long(), mask.long()], 1)
    return mask.float().numpy()


def export_decoder(model: nn.Module, work: Path, quantize: str | None = None, keep_fp32: bool = True,
                   progress: bool = True, features: Features | None = None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Export a captioner's ``decoder_first`` and ``decoder_step`` into ``work`` (other models: nothing); returns
    their manifest entries, as :func:`multimodal.onnx.graph_export.export_one` writes them. The examples traced
    and checked condition on random photos, or on the rows of vision ``features`` (a model without a vision tower,
    as the benchmarks build)."""
    if not isinstance(getattr(model, "conditioning", None), LMConditioning):
        return {}
    from multimodal.onnx.graph_export import quantize_int8

    start = time.perf_counter()
    first = DecoderFirst(model).eval()
    modules: dict[str, nn.Module] = {FIRST: first, STEP: DecoderStep(model).eval()}
    names = graph_names(first.kind, first.layers)
    paths = {graph: work / f"{graph}.onnx" for graph in modules}
    for graph, args in example_inputs(first, 2, 6, features).items():
        _export(modules[graph], args, names[graph], paths[graph])
    diff = decoder_parity(modules, paths, names, features)
    if progress:
        print(f"exported {FIRST}, {STEP}: max |onnx - eager| {diff:.2e}", file=sys.stderr)
    if diff > TOLERANCE:
        raise UserError(f"graphs {FIRST}, {STEP}: ONNX Runtime differs from eager by {diff:.2e} (> 1e-3); not written")
    if getattr(model, "memory", None) is not None:  # consensus reranking on ONNX Runtime reads it
        write_memory(model.memory, work)
    entries: dict[str, dict[str, Any]] = {}
    for graph, path in paths.items():
        entry: dict[str, Any] = {"file": path.name, "inputs": list(names[graph][0]),
                                 "outputs": list(names[graph][1]), "widths": {}, "max_abs_diff": diff}  # fmt: skip
        if quantize == "int8":
            quantize_int8(path, work / f"{graph}.int8.onnx")
            entry["int8_file"] = f"{graph}.int8.onnx"
            if not keep_fp32:
                path.unlink()
                del entry["file"]
        entries[graph] = entry
    for entry in entries.values():
        entry["export_s"] = round((time.perf_counter() - start) / len(entries), 1)
    return entries


def decoding_settings(captioner: nn.Module) -> dict[str, Any]:
    """What :class:`multimodal.onnx.decoding.CaptionDecoder` needs besides the graphs: special ids, vocabulary size,
    the training targets' ids (vocabulary trimming), the generation defaults and what the LM reads."""
    from dataclasses import asdict

    lm = captioner.lm
    ids = captioner.caption_token_ids
    return {
        "kind": captioner.conditioning.kind.value,
        "bos_id": lm.bos_id,
        "eos_id": lm.eos_id,
        "pad_id": lm.pad_id,
        "vocab_size": int(lm.get_output_layer().weight.shape[0]),
        "caption_token_ids": None if ids is None else [int(i) for i in ids.tolist()],
        "generation": dict(captioner.generation),
        "rerank": None if captioner.rerank is None else asdict(captioner.rerank),
        "memory": None if captioner.memory is None else MEMORY,  # written by export_decoder
    }
