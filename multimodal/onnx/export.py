"""``multimodal export-model``: a checkpoint's inference graphs as ONNX, in a folder that runs without it.

    model_onnx/
      model.json           task, columns the model reads, label vocabularies, tokenizer length, image transform
                           settings, every graph (file, inputs, outputs, the width of every output, max
                           |ONNX - eager| measured at export), the SHA-256 of every other file of the folder
                           (``files``), the source checkpoint's path and SHA-256
      tokenizer/           the Hugging Face tokenizer (save_pretrained)
      tokenizer.json       the same tokenizer as a `tokenizers` JSON; with ``preprocess`` in model.json (image steps
                           as numbers, tokenizer settings, text template) the torch-free preprocessing reads it
                           (:mod:`multimodal.onnx.preprocess`)
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
import tempfile
from pathlib import Path
from typing import Any

from multimodal.arguments import Parser
from multimodal.errors import UserError
from multimodal.onnx.graph_export import (  # noqa: F401 - re-exported: the export's one import path
    INT8_OPS,
    TOLERANCE,
    export_graph,
    export_one,
    parity,
    quantize_int8,
)
from multimodal.onnx.manifest import (  # noqa: F401 - re-exported, as above
    FORMAT_VERSION,
    MANIFEST,
    check_files,
    file_hashes,
    is_onnx_export,
    read_model_manifest,
)

QUANTIZE = ("int8",)


def task_settings(model: Any) -> dict[str, Any]:
    """What the runtime needs of the task besides the graphs (as its task declares it)."""
    from multimodal.task import resolve, task_of

    task = task_of(type(model).__name__)
    if task is None or task.onnx is None or task.onnx.settings is None:
        return {}
    return resolve(task.onnx.settings)(model)


def tagger_settings(tagger: Any) -> dict[str, Any]:
    """A tagger's label vocabularies, tag threshold and fused width."""
    return {
        "vocabularies": tagger.vocabularies,
        "tag_vocabularies": tagger.tag_vocabularies,
        "tag_threshold": tagger.tag_threshold,
        "fused_dim": tagger.fusion.output_dim,
    }


def retriever_settings(retriever: Any) -> dict[str, Any]:
    """A retriever's vector width, product kind, re-ranker presence and text columns."""
    return {
        "embed_dim": retriever.embed_dim,
        "product": retriever.product,
        "reranker": retriever.reranker is not None,
        "query_columns": retriever.query_columns,
        "product_columns": retriever.product_columns,
    }


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
    from multimodal.loading import file_sha256
    from multimodal.onnx import cache

    if quantize not in (None, *QUANTIZE):
        raise UserError(f"--quantize {quantize}: choose from {', '.join(QUANTIZE)}")
    out = Path(out)
    sha = file_sha256(ckpt_path) if Path(ckpt_path).is_file() else None
    wanted = {"checkpoint_sha256": sha, "quantize": quantize, "extra": sorted(extra)}
    if out.exists():
        _check_existing(out, wanted, keep_fp32)
    elif not (link_cache and sha and keep_fp32 and cache.adopt(ckpt_path, sha, wanted, out)):
        _write_export(ckpt_path, out, wanted, extra, keep_fp32, progress)
    info = read_model_manifest(out)
    if link_cache:
        cache.record(out, info)
    return info


def _write_export(
    ckpt_path: str | Path, out: Path, wanted: dict[str, Any], extra: tuple[str, ...], keep_fp32: bool, progress: bool
) -> None:
    """Export every graph of the checkpoint into a temporary sibling of ``out``, then rename it into place (a
    failed export leaves nothing behind)."""
    from multimodal.loading import load
    from multimodal.onnx.caption_decoder_export import decoding_settings, export_decoder
    from multimodal.onnx.graphs import graphs_of

    loaded = load(ckpt_path)
    model = loaded.model.eval().cpu()
    graphs = graphs_of(model, extra)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        info = _manifest(loaded, work, wanted, ckpt_path)
        for graph in graphs:
            info["graphs"][graph.name] = export_one(graph, model, work, wanted["quantize"], keep_fp32, progress)
        decoder = export_decoder(model, work, wanted["quantize"], keep_fp32, progress)  # a captioner's LM + cache
        if decoder:
            info["graphs"].update(decoder)
            info["decoding"] = decoding_settings(model)
        info["files"] = file_hashes(work)
        (work / MANIFEST).write_text(json.dumps(info, indent=2))
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


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
    from multimodal.onnx.preprocess_export import preprocess_section
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
    # the same preprocessing as plain numbers and a tokenizers JSON, for the torch-free runtime
    texts = list(loaded.columns.texts)
    info["preprocess"] = preprocess_section(model, text, texts, info["image_transform"], work)
    info["columns"]["attributes"] = list(loaded.columns.attributes)
    info["columns"]["tags"] = list(loaded.columns.tags)
    return info


def parser() -> argparse.ArgumentParser:
    """The command line of ``multimodal export-model``."""
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
    """Run ``multimodal export-model``; prints a one-line JSON summary."""
    args = parser().parse_args(argv)
    info = export_model(args.ckpt_path, args.out, args.quantize, tuple(args.towers), link_cache=True)
    graphs = {name: {"max_abs_diff": g["max_abs_diff"]} for name, g in info["graphs"].items()}
    print(json.dumps({"out": str(args.out), "task": info["task"], "quantize": info["quantize"], "graphs": graphs}))
