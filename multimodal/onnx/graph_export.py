"""One inference graph to ONNX: the export (dynamo exporter, dynamic batch and sequence axes), the parity check
against eager on two input shapes, and the optional dynamic-int8 copy."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from multimodal.errors import UserError

# Dynamic int8 on these op types: the matrix products (Conv stays fp32: ConvInteger is slower than fp32 Conv on
# CPUs here, benchmarks/inference_speed.py).
INT8_OPS = ["MatMul", "Gemm"]
TOLERANCE = 1e-4


def export_graph(graph: Any, model: Any, path: Path) -> None:
    """Write ``graph`` of ``model`` to ``path`` with the dynamo exporter; batch (and sequence) axes dynamic."""
    import torch

    from multimodal.onnx.graphs import SEQUENCE_INPUTS, example_inputs

    batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("seq", min=1)
    shapes = tuple({0: batch, 1: seq} if name in SEQUENCE_INPUTS or name.endswith("input_ids") or
                   name.endswith("attention_mask") else {0: batch} for name in graph.inputs)  # fmt: skip
    args = example_inputs(graph, model)
    import warnings

    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph.module.eval(),
            args,
            str(path),
            dynamo=True,
            input_names=list(graph.inputs),
            output_names=list(graph.outputs),
            dynamic_shapes=(shapes,) if _varargs(graph.module) else shapes,
            verbose=False,
            external_data=False,
        )


def _varargs(module: Any) -> bool:
    """Whether ``module.forward`` takes ``*args`` (its dynamic shapes are then one tuple)."""
    import inspect

    return any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(module.forward).parameters.values())


def parity(graph: Any, model: Any, path: Path) -> float:
    """Largest |ONNX Runtime - eager| over every output of ``graph`` on two input shapes (batch 2 and 3, two
    sequence lengths, padding and a missing modality in each)."""
    import numpy as np
    import torch

    from multimodal.onnx.graphs import example_inputs
    from multimodal.onnx.runtime import session

    sess = session(path)
    worst = 0.0
    for batch, seq in ((2, 8), (3, 5)):
        args = example_inputs(graph, model, batch, seq)
        with torch.no_grad():
            ref = graph.module(*args)
        out = sess.run(None, {n: a.numpy() for n, a in zip(graph.inputs, args, strict=True)})
        for r, o in zip(ref, out, strict=True):
            worst = max(worst, float(np.abs(r.float().numpy() - o.astype(np.float32)).max()))
    return worst


def quantize_int8(source: Path, target: Path, op_types: list[str] | None = None) -> None:
    """Dynamic int8 weights (activations quantized per batch at run time) of the graph at ``source``, on the
    op types ``op_types`` (default :data:`INT8_OPS`)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer logs every op it skips
    quantize_dynamic(source, target, weight_type=QuantType.QInt8, op_types_to_quantize=op_types or INT8_OPS)


def export_one(
    graph: Any, model: Any, work: Path, quantize: str | None, keep_fp32: bool, progress: bool
) -> dict[str, Any]:
    """Export, check and (with ``quantize``) quantize one graph into ``work``; returns its manifest entry."""
    from multimodal.onnx.runtime import output_widths, session

    start = time.perf_counter()
    path = work / f"{graph.name}.onnx"
    export_graph(graph, model, path)
    entry: dict[str, Any] = {
        "file": path.name,
        "inputs": list(graph.inputs),
        "outputs": list(graph.outputs),
        # the graph's own output widths: loading compares the label counts with them
        "widths": output_widths(session(path, 1)),
        "max_abs_diff": parity(graph, model, path),
    }
    if progress:
        print(f"exported {graph.name}: max |onnx - eager| {entry['max_abs_diff']:.2e}", file=sys.stderr)
    if entry["max_abs_diff"] > 1e-3:
        raise UserError(
            f"graph {graph.name}: ONNX Runtime differs from eager by {entry['max_abs_diff']:.2e} (> 1e-3); not written"
        )
    if quantize == "int8":
        int8 = work / f"{graph.name}.int8.onnx"
        quantize_int8(path, int8)
        entry["int8_file"] = int8.name
        if not keep_fp32:  # an int8-only export: the fp32 graph was only needed to quantize and check it
            path.unlink()
            del entry["file"]
    entry["export_s"] = round(time.perf_counter() - start, 1)
    return entry
