"""ONNX decoding rows for ``benchmarks.caption_speed``: generated tokens/s of the exported decoder with its
key/value cache driven by the NumPy loop (:mod:`multimodal.onnx.decoding`), greedy and 4 beams, trimmed and full
output layer, float32, in ``caption_speed``'s table format (:func:`onnx_methods`; ``caption_speed`` times them beside
its own rows).

The ONNX loop reads the conditioning the vision graph would give, computed once (not timed); the eager call
computes it inside (a few projections). :func:`compare` times these rows against the eager ``ours/`` rows of
``caption_speed`` alone, float32, in one run (same models, inputs, forced ``--tokens`` new tokens, interleaved
rounds, medians):

    python -c "from benchmarks.quality.caption_onnx import compare; compare(['--repeats', '3'])"
"""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import caption_speed
from benchmarks.caption_quality import image_features
from benchmarks.common import machine, ratio, say, seed_all, set_threads, write_json
from benchmarks.timing import rounds, wall
from encoders.types import Features


def onnx_methods(
    model: Any, feats: Features, fixed: dict[str, int], work: str | Path, threads: int = 1, mode: str = ""
) -> dict[str, dict[str, Any]]:
    """``caption_speed``-style rows (``run``: one timed call) of ONNX decoding for ``model`` on ``feats``: its
    decoder graphs are exported into the folder ``work``; greedy and 4 beams, full and trimmed output layer."""
    from multimodal.onnx.caption_decoder_export import decoding_settings, export_decoder
    from multimodal.onnx.decoding import CaptionDecoder

    entries = export_decoder(model.eval(), Path(work), progress=False, features=feats)
    decoder = CaptionDecoder.from_folder(work, {"graphs": entries, "decoding": decoding_settings(model)}, threads)
    kind = model.conditioning.kind
    with torch.no_grad():
        tensors = model.conditioning(feats).tensors(kind)
    cond = {name: t.numpy() for name, t in zip(kind.tensor_names, tensors, strict=True)}
    bos = np.full((feats.tokens.shape[0], 1), model.lm.bos_id, dtype=np.int64)
    table: dict[str, dict[str, Any]] = {}
    for beams, decoding in ((1, "greedy"), (4, "beams4")):
        for trim, vocab in ((False, "full"), (True, "trimmed")):
            run = partial(
                decoder.generate, cond, bos, np.ones_like(bos), num_beams=beams, trim_vocabulary=trim, **fixed
            )
            table[f"onnx/{decoding}/float32/{vocab}"] = {"method": f"onnx/{mode}", "decoding": decoding,
                                                         "dtype": "float32", "vocab": vocab, "run": run}  # fmt: skip
    return table


def compare(argv: list[str] | None = None) -> None:
    """Eager and ONNX decoding of ``caption_speed``'s captioner, timed in one run; writes ``--out`` (JSON)."""
    args = caption_speed.parse_args(argv)
    if args.out == caption_speed.OPTIONS["--out"].default:
        args.out = "benchmarks/results/caption_onnx_speed.json"
    args.dtypes = "float32"
    set_threads(args.threads)
    seed_all(args.seed)
    from encoders.pretrained import EfficientNetLiteEncoder

    images = sorted((Path(args.data) / "images").iterdir())[: args.batch_size]
    vision = EfficientNetLiteEncoder(0, image_size=args.image_size, trainable=False).eval()
    feats: Features = image_features([(p.stem, p, "") for p in images], vision)
    table, models = caption_speed.methods(args, feats)  # its ONNX rows included (onnx_methods)
    table = {k: r for k, r in table.items() if k.startswith(("ours/", "onnx/"))}
    for r in table.values():
        r["run"]()  # warm-up
    b = feats.tokens.shape[0]
    times = rounds({key: wall(r["run"]) for key, r in table.items()}, args.repeats,
                   each=lambda i, key, s: say(f"round {i + 1}/{args.repeats} {key:32s} {s:7.3f}s"))  # fmt: skip
    shutil.rmtree(models.pop("onnx_folder"), ignore_errors=True)
    rows, text = caption_speed.summarise(table, times, args.tokens, b)
    tps = {r["key"]: r["tokens_per_s"] for r in rows}
    speedups = {k.replace("onnx/", ""): ratio(v, tps.get(k.replace("onnx/", "ours/")), 2)
                for k, v in tps.items() if k.startswith("onnx/")}  # fmt: skip
    write_json(args.out, {"machine": machine(), "settings": vars(args), "batch": b, "rows": rows,
                          "onnx_vs_eager": speedups, "table": text})  # fmt: skip
    print(text)
    print("ONNX / eager tokens/s:", speedups)
    say(f"wrote {args.out}")
