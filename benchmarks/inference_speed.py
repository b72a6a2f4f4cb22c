"""CPU inference speed: PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime dynamic int8, in one run, against the
FLOP-based limit of this CPU.

The model is the default tagging config (``configs/tagging/cross_attention.yaml``: EfficientNet-Lite0 at 160 px,
MiniLM-L6 with 32 tokens, two cross-attention layers, the n-gram head), with its pretrained towers and heads sized
by the committed sample's vocabularies (speed does not depend on trained head weights; ``--ckpt_path`` measures a
trained checkpoint instead). It is saved as a checkpoint and exported with ``multimodal export-model``'s code, so
the graphs measured are the ones users run.

For the vision tower, the text tower and the full tagger (photo + title), at batch 1 and 32: items/s of eager
(``torch.inference_mode``), ONNX Runtime fp32 and int8 (MatMul / Gemm weights; for the vision tower also
Conv, to show why the default leaves convolutions in fp32), each the median of ``--repeats`` timed rounds, the
runtimes interleaved round by round so load on the box hits them alike. Inputs are real: sample photos through the
eval transform, sample titles through the tokenizer. The reference row is the FLOP limit: the graph's FLOPs
(``torch.utils.flop_counter``: matrix products and convolutions) against this CPU's fp32 matrix-multiply rate
measured in the same run (a 2048^3 product, the faster of ``torch.mm`` and ONNX Runtime's MatMul), i.e. items/s
if every counted FLOP ran at the GEMM peak. int8 can pass it: its integer kernels do more per cycle than fp32.

    python -m benchmarks.inference_speed [--repeats 7] [--out benchmarks/results/inference_speed.json]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import machine, say, seed_all, write_json
from benchmarks.harness import ROOT, SAMPLE, TINY, Option, parse, parser
from benchmarks.timing import calls_for, rounds, timed, wall

CONFIG = ROOT / "configs" / "tagging" / "cross_attention.yaml"
GRAPHS = ("vision", "text", "tagger")
UNIT = {"vision": "images/s", "text": "texts/s", "tagger": "products/s"}
EAGER, LIMIT = "torch eager", "FLOP limit (fp32 GEMM peak)"
# --smoke: the tiny tagger's full graph (each exported graph costs seconds), batches of 1 and 2, one short round,
# a small matrix product for the FLOP rate
SMOKE = {"config": TINY["tagging"], "graphs": ["tagger"], "batches": [1, 2], "repeats": 1, "seconds": 0.02,
         "gemm_size": 128}  # fmt: skip


OPTIONS = {
    "--ckpt_path": Option(None, "a tagger checkpoint (default: --config's model, untrained)"),
    "--config": Option(str(CONFIG), "tagging config of the untrained model"),
    "--gemm-size": Option(2048, "side of the matrix product that measures FLOP/s"),
    "--graphs": Option(list(GRAPHS), "graphs timed", choices=GRAPHS),
    "--batches": Option([1, 32]),
    "--repeats": Option(7, "timed rounds per variant (medians reported)"),
    "--seconds": Option(1.0, "about this long per timed round"),
    "--out": Option("benchmarks/results/inference_speed.json"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return parse(
        parser("inference_speed", __doc__, OPTIONS, show_defaults=False), argv, SMOKE, "benchmarks.inference_speed"
    )


def untrained_checkpoint(path: Path, config_path: Path = CONFIG) -> Path:
    """A tagging config's model (pretrained towers, heads for the sample's labels) as a checkpoint."""
    import pandas as pd
    import yaml

    from multimodal.loading import build_model, save_checkpoint

    config = yaml.safe_load(config_path.read_text())
    model = build_model(config["model"], config_path)
    df = pd.read_csv(SAMPLE / "metadata.csv", dtype=str)
    attributes = config["data"]["init_args"]["attributes"]
    model.build_heads({a: sorted(df[a].dropna().unique()) for a in attributes}, {})
    return save_checkpoint(model, path, {"model": config["model"], "data": config["data"]})


def gemm_flops(size: int = 2048, repeats: int = 5) -> float:
    """This CPU's fp32 matrix-multiply rate (FLOP/s, best of ``repeats``) with torch's threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    return 2 * size**3 / min(timed(lambda: torch.mm(a, b)) for _ in range(repeats))


def ort_gemm_flops(folder: Path, size: int = 2048, repeats: int = 5) -> float:
    """The same rate for ONNX Runtime's MatMul (its kernels differ from torch's), in a one-node graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from multimodal.onnx.runtime import session

    b = numpy_helper.from_array(np.random.default_rng(0).standard_normal((size, size), dtype=np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])],
        initializer=[b],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "gemm.onnx")
    sess, feed = session(folder / "gemm.onnx"), {"a": np.ones((size, size), np.float32)}
    sess.run(None, feed)
    return 2 * size**3 / min(timed(lambda: sess.run(None, feed)) for _ in range(repeats))


def count_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        fn()
    return int(counter.get_total_flops())


def inputs(model: Any, batch: int) -> dict[str, torch.Tensor]:
    """A batch of real sample photos and titles, as the dataset and collate make them."""
    import pandas as pd
    from PIL import Image

    df = pd.read_csv(SAMPLE / "metadata.csv", dtype=str).head(batch)
    transform = model.image_transform(False)
    pixels = torch.stack([transform(Image.open(SAMPLE / "images" / n).convert("RGB")) for n in df["image"]])
    enc = model.text_fn()({"title": df["title"].tolist()})
    return {
        "pixel_values": pixels,
        **enc,
        "has_image": torch.ones(batch, dtype=torch.bool),
        "has_text": torch.ones(batch, dtype=torch.bool),
    }


def exported(args: argparse.Namespace, work: Path) -> tuple[Any, dict[str, Any], Path]:
    """The tagger (``--ckpt_path``, or ``--config``'s untrained), exported with ``multimodal export-model``'s code:
    the eager model, the export's manifest and its folder."""
    from multimodal.loading import load
    from multimodal.onnx.export import export_model, quantize_int8

    ckpt = Path(args.ckpt_path) if args.ckpt_path else untrained_checkpoint(work / "tagger.ckpt", Path(args.config))
    towers = tuple(g for g in args.graphs if g != "tagger")  # the tagger's own graphs are always exported
    say(f"exporting {ckpt.name} (fp32 + int8{', towers alone' if towers else ''})")
    folder = work / "onnx"
    info = export_model(ckpt, folder, "int8", towers, progress=False)
    if "vision" in args.graphs:
        quantize_int8(folder / "vision.onnx", folder / "vision.int8-conv.onnx", ["Conv", "MatMul", "Gemm"])
    return load(ckpt).model.eval(), info, folder


def flop_rate(args: argparse.Namespace, work: Path) -> dict[str, float]:
    """This CPU's fp32 matrix-multiply rate (FLOP/s) by runtime, printed."""
    rates = {"torch.mm": gemm_flops(args.gemm_size), "onnxruntime MatMul": ort_gemm_flops(work, args.gemm_size)}
    say(f"fp32 {args.gemm_size}^3 matrix-multiply rate with {torch.get_num_threads()} threads: "
        + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in rates.items()))  # fmt: skip
    return rates


def variants(graph: Any, sessions: dict[str, Any], data: dict[str, torch.Tensor]) -> dict[str, Callable[[], Any]]:
    """One call of the graph on ``data`` by runtime: eager first, then each ONNX Runtime session."""
    tensors = [data[k] for k in graph.inputs]
    feed = {k: data[k].numpy() for k in graph.inputs}

    def eager() -> Any:
        with torch.inference_mode():
            return graph.module(*tensors)

    return {EAGER: eager, **{key: (lambda sess=sess: sess.run(None, feed)) for key, sess in sessions.items()}}


def max_diffs(runs: dict[str, Callable[[], Any]]) -> dict[str, float]:
    """Largest absolute difference of each runtime's outputs from eager's (eager: 0)."""
    ref = [t.numpy() for t in runs[EAGER]()]
    return {k: float(max(np.abs(a.astype(np.float32) - np.asarray(b, np.float32)).max()
                         for a, b in zip(ref, fn(), strict=True))) if k != EAGER else 0.0
            for k, fn in runs.items()}  # fmt: skip


def time_batch(
    name: str, runs: dict[str, Callable[[], Any]], batch: int, gemm: float, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """The FLOP-limit row and one row per runtime for ``batch`` items of graph ``name``, printed."""
    diffs = max_diffs(runs)
    calls = {key: calls_for(fn, args.seconds) for key, fn in runs.items()}  # ~args.seconds a round
    times = rounds({key: wall(fn, calls[key]) for key, fn in runs.items()}, args.repeats)
    flops = count_flops(runs[EAGER]) / batch
    limit = gemm / flops
    base = statistics.median(times[EAGER])
    say(f"{name} batch {batch}: {flops / 1e9:.3f} GFLOP an item; limit {limit:,.0f} {UNIT[name]}")
    rows: list[dict[str, Any]] = [{"graph": name, "batch": batch, "runtime": LIMIT, "items_per_s": round(limit, 1),
                                   "gflop_per_item": round(flops / 1e9, 4)}]  # fmt: skip
    for key in runs:
        med = statistics.median(times[key])
        row = {"graph": name, "batch": batch, "runtime": key, "items_per_s": round(batch / med, 1),
               "ms_per_batch": round(med * 1000, 2), "vs_eager": round(base / med, 2),
               "of_limit": round(batch / med / limit, 3), "max_abs_diff_vs_eager": diffs[key],
               "repeats": args.repeats, "calls_per_round": calls[key]}  # fmt: skip
        rows.append(row)
        say(f"  {key:22s} {row['items_per_s']:9.1f} {UNIT[name]}  x{row['vs_eager']:.2f} eager  "
            f"{row['of_limit']:.1%} of limit  max|diff| {row['max_abs_diff_vs_eager']:.1e}")  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    seed_all(0)
    from multimodal.onnx.graphs import graphs_of
    from multimodal.onnx.runtime import session

    work = Path(tempfile.mkdtemp(prefix="inference-speed-"))
    model, info, folder = exported(args, work)
    graphs = {g.name: g for g in graphs_of(model, tuple(g for g in args.graphs if g != "tagger"))}
    rates = flop_rate(args, work)
    gemm = max(rates.values())
    payload: dict[str, Any] = {"machine": machine(), "args": vars(args), "gemm_gflops": round(gemm / 1e9, 2),
                               "gemm_gflops_by_runtime": {k: round(v / 1e9, 2) for k, v in rates.items()},
                               "export": {k: {"max_abs_diff": v["max_abs_diff"]} for k, v in info["graphs"].items()},
                               "rows": [], "ratios": {}}  # ratios: ONNX Runtime / eager, items/s  # fmt: skip
    for name in args.graphs:
        files = {"onnx fp32": info["graphs"][name]["file"], "onnx int8": info["graphs"][name]["int8_file"]}
        if name == "vision":
            files["onnx int8 (conv too)"] = "vision.int8-conv.onnx"
        sessions = {k: session(folder / f) for k, f in files.items()}
        for batch in args.batches:
            rows = time_batch(name, variants(graphs[name], sessions, inputs(model, batch)), batch, gemm, args)
            payload["rows"] += rows
            payload["ratios"].update({f"{name} batch {batch}: {r['runtime']} / {EAGER}": r["vs_eager"]
                                      for r in rows if r["runtime"] not in (LIMIT, EAGER)})  # fmt: skip
            write_json(args.out, payload)  # partial results as they come
    shutil.rmtree(work, ignore_errors=True)
    say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
