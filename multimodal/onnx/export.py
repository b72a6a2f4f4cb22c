"""``multimodal export-model``: a checkpoint's inference graphs as ONNX, in a folder that runs without it.

    model_onnx/
      model.json           task, columns the model reads, label vocabularies, tokenizer length, image transform
                           settings, every graph (file, inputs, outputs, the width of every output, max
                           |ONNX - eager| measured at export), the SHA-256 of every other file of the folder
                           (``files``), the source checkpoint's path and SHA-256
      tokenizer/           the Hugging Face tokenizer (save_pretrained)
      <graph>.onnx         one file a graph (torch.onnx.export, dynamo exporter; dynamic batch and sequence axes)
      <graph>.int8.onnx    with --quantize int8: dynamic int8 weights (onnxruntime.quantization)

The folder is written beside its destination and renamed into place when complete; a folder that exists is
never overwritten: the same checkpoint and options are reused (once its files match their hashes), anything else
is a one-line error. Loading checks the files a run reads against ``files`` (:func:`check_files`) and the label
counts against the graphs' own output widths (:mod:`multimodal.onnx.runtime`); an export written before the
hashes were recorded loads with the width check alone. Which export ``--runtime onnx`` runs for a checkpoint is
decided in :mod:`multimodal.onnx.cache`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from multimodal.arguments import Parser
from multimodal.errors import UserError

MANIFEST = "model.json"
FORMAT_VERSION = 1
QUANTIZE = ("int8",)
# Dynamic int8 on these op types: the matrix products (Conv stays fp32: ConvInteger is slower than fp32 Conv on
# CPUs here, benchmarks/inference_speed.py).
INT8_OPS = ["MatMul", "Gemm"]
TOLERANCE = 1e-4


def is_onnx_export(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / MANIFEST).is_file()


def read_model_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path} cannot be read as an ONNX export manifest ({err})") from None
    if info.get("format") != "multimodal-onnx" or info.get("version") != FORMAT_VERSION:
        raise UserError(f"{path} is not an ONNX export of this project (format / version differ)")
    return info


def file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` but the manifest, by path relative to it (``/`` separated)."""
    from multimodal.loading import file_sha256

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in files}


def check_files(folder: str | Path, info: dict[str, Any], int8: bool | None = None) -> None:
    """Refuse an export whose files differ from the hashes recorded at export, naming the first such file.

    Args:
        folder: the export folder.
        info: its manifest.
        int8: check only the graphs of this precision (``None``: every graph); an export without recorded
            hashes (written before they were) passes.
    """
    from multimodal.loading import file_sha256

    skip = set()
    if int8 is not None:  # the graphs of the other precision are not read by this run
        skip = {g.get("file" if int8 else "int8_file") for g in info.get("graphs", {}).values()}
    for name, sha in (info.get("files") or {}).items():
        if name in skip:
            continue
        path = Path(folder) / name
        if not path.is_file():
            raise UserError(f"{path} is missing: the ONNX export {folder} was changed since the export")
        if file_sha256(path) != sha:
            raise UserError(f"{path} was changed since the export (its SHA-256 differs from {MANIFEST})")


def task_settings(model: Any) -> dict[str, Any]:
    """What the runtime needs of the task besides the graphs."""
    task = type(model).__name__
    if task == "ProductTagger":
        return {
            "vocabularies": model.vocabularies,
            "tag_vocabularies": model.tag_vocabularies,
            "tag_threshold": model.tag_threshold,
            "fused_dim": model.fusion.output_dim,
        }
    if task == "ProductRetriever":
        return {
            "embed_dim": model.embed_dim,
            "product": model.product,
            "reranker": model.reranker is not None,
            "query_columns": model.query_columns,
            "product_columns": model.product_columns,
        }
    return {}


def export_graph(graph: Any, model: Any, path: Path) -> None:
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


def export_model(
    ckpt_path: str | Path,
    out: str | Path,
    quantize: str | None = None,
    extra: tuple[str, ...] = (),
    progress: bool = True,
    keep_fp32: bool = True,
    link_cache: bool = False,
) -> dict[str, Any]:
    """Export the inference graphs of the checkpoint at ``ckpt_path`` to the folder ``out``; returns its manifest.

    Args:
        ckpt_path: a checkpoint written by ``multimodal fit``.
        out: the folder to create (an existing export of the same checkpoint and options is reused).
        quantize: ``"int8"`` adds dynamic-int8 copies of every graph.
        extra: towers alone to add (``"vision"``, ``"text"``).
        progress: one line on stderr per exported graph.
        keep_fp32: with ``quantize``, False keeps the int8 graphs alone (the fp32 ones are removed once quantized).
        link_cache: as ``multimodal export-model`` does: take the cache's export of the checkpoint when it has one
            with these options, and record ``out`` in the cache for ``--runtime onnx`` (:mod:`multimodal.onnx.cache`).
    """
    from multimodal.loading import file_sha256, load
    from multimodal.onnx import cache
    from multimodal.onnx.graphs import graphs_of

    if quantize not in (None, *QUANTIZE):
        raise UserError(f"--quantize {quantize}: choose from {', '.join(QUANTIZE)}")
    out = Path(out)
    sha = file_sha256(ckpt_path) if Path(ckpt_path).is_file() else None
    wanted = {"checkpoint_sha256": sha, "quantize": quantize, "extra": sorted(extra)}
    if out.exists():
        _check_existing(out, wanted, keep_fp32)
    elif not (link_cache and sha and keep_fp32 and cache.adopt(ckpt_path, sha, wanted, out)):
        loaded = load(ckpt_path)
        model = loaded.model.eval().cpu()
        graphs = graphs_of(model, extra)
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            info = _manifest(loaded, work, wanted, ckpt_path)
            for graph in graphs:
                info["graphs"][graph.name] = _export_one(graph, model, work, quantize, keep_fp32, progress)
            info["files"] = file_hashes(work)
            (work / MANIFEST).write_text(json.dumps(info, indent=2))
            work.rename(out)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    info = read_model_manifest(out)
    if link_cache:
        cache.record(out, info)
    return info


def _check_existing(out: Path, wanted: dict[str, Any], keep_fp32: bool) -> None:
    """Refuse an existing ``out`` unless it is an export of the same checkpoint and options with its files as
    exported (an existing folder is never overwritten)."""
    if not is_onnx_export(out):
        raise UserError(f"{out} exists and is not an ONNX export: choose a new --out (it is never overwritten)")
    info = read_model_manifest(out)
    has_fp32 = all("file" in g for g in info["graphs"].values())
    if {k: info.get(k) for k in wanted} != wanted or has_fp32 != keep_fp32:
        raise UserError(
            f"{out} holds an ONNX export of another checkpoint or other options: choose a new --out "
            "(an existing folder is never overwritten)"
        )
    check_files(out, info)


def _manifest(loaded: Any, work: Path, wanted: dict[str, Any], ckpt_path: str | Path) -> dict[str, Any]:
    """The manifest of an export of ``loaded`` (its graphs still to add); saves the tokenizer and any image
    processor under ``work``."""
    from multimodal.onnx.graphs import image_size
    from multimodal.onnx.transforms import describe_transform

    model = loaded.model
    text = getattr(model, "text", None) or getattr(model, "lm", None)
    text.tokenizer.save_pretrained(work / "tokenizer")
    info: dict[str, Any] = {
        "format": "multimodal-onnx",
        "version": FORMAT_VERSION,
        "task": loaded.task,
        **wanted,
        "checkpoint": str(Path(ckpt_path).resolve()),
        "columns": vars(loaded.columns) | {"texts": list(loaded.columns.texts)},
        "data": {k: loaded.data.get(k) for k in ("manifest", "image_root", "batch_size") if k in loaded.data},
        "max_length": int(text.max_length),
        "image_size": list(image_size(model)),
        "image_transform": describe_transform(model.image_transform(False), work),
        "settings": task_settings(model),
        "graphs": {},
    }
    info["columns"]["attributes"] = list(loaded.columns.attributes)
    info["columns"]["tags"] = list(loaded.columns.tags)
    return info


def _export_one(
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


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="multimodal export-model",
        description="Export a checkpoint's inference graphs to ONNX (with its tokenizer, image transform and label "
        "vocabularies), to run with `--runtime onnx` or from any ONNX Runtime.",
        epilog="example:\n  multimodal export-model --ckpt_path runs/tagging/.../best.ckpt --out model_onnx/ "
        "--quantize int8\n  multimodal predict --ckpt_path model_onnx/ --data.manifest new.csv --out tags.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ckpt_path", "--ckpt", required=True, help="checkpoint written by `multimodal fit`")
    p.add_argument("--out", required=True, help="folder to create (never overwritten)")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="export format")
    p.add_argument("--quantize", choices=QUANTIZE, default=None, help="also write dynamic-int8 graphs")
    p.add_argument("--towers", nargs="*", choices=("vision", "text"), default=[], help="also export these towers alone")
    return p


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    info = export_model(args.ckpt_path, args.out, args.quantize, tuple(args.towers), link_cache=True)
    graphs = {name: {"max_abs_diff": g["max_abs_diff"]} for name, g in info["graphs"].items()}
    print(json.dumps({"out": str(args.out), "task": info["task"], "quantize": info["quantize"], "graphs": graphs}))
