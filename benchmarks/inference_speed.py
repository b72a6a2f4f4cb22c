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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import machine, say, seed_all, write_json
from benchmarks.smoke import ROOT, SAMPLE, TINY, parse

CONFIG = ROOT / "configs" / "tagging" / "cross_attention.yaml"
GRAPHS = ("vision", "text", "tagger")
# --smoke: the tiny tagger's full graph (each exported graph costs seconds), batches of 1 and 2, one short round,
# a small matrix product for the FLOP rate
SMOKE = {"config": TINY["tagging"], "graphs": ["tagger"], "batches": [1, 2], "repeats": 1, "seconds": 0.02,
         "gemm_size": 128}  # fmt: skip


def untrained_checkpoint(path: Path, config_path: Path = CONFIG) -> Path:
    """A tagging config's model (pretrained towers, heads for the sample's labels) as a checkpoint."""
    import pandas as pd
    import yaml

    from multimodal.loading import CONFIG_KEY, build_model

    config = yaml.safe_load(config_path.read_text())
    model = build_model(config["model"], config_path)
    df = pd.read_csv(SAMPLE / "metadata.csv", dtype=str)
    attributes = config["data"]["init_args"]["attributes"]
    model.build_heads({a: sorted(df[a].dropna().unique()) for a in attributes}, {})
    state = {
        "state_dict": model.state_dict(),
        CONFIG_KEY: yaml.safe_dump(config),
        "vocabularies": model.vocabularies,
        "tag_vocabularies": {},
    }
    torch.save(state, path)
    return path


def gemm_flops(size: int = 2048, repeats: int = 5) -> float:
    """This CPU's fp32 matrix-multiply rate (FLOP/s, best of ``repeats``) with torch's threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


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
    best = min(timed(lambda: sess.run(None, feed), 1) for _ in range(repeats))
    return 2 * size**3 / best


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


def timed(fn: Callable[[], Any], calls: int) -> float:
    """Seconds per call over ``calls`` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.inference_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt_path", default=None, help="a tagger checkpoint (default: --config's model, untrained)")
    p.add_argument("--config", default=str(CONFIG), help="tagging config of the untrained model")
    p.add_argument("--gemm-size", type=int, default=2048, help="side of the matrix product that measures FLOP/s")
    p.add_argument("--graphs", nargs="+", choices=GRAPHS, default=list(GRAPHS), help="graphs timed")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--repeats", type=int, default=7, help="timed rounds per variant (medians reported)")
    p.add_argument("--seconds", type=float, default=1.0, help="about this long per timed round")
    p.add_argument("--out", default="benchmarks/results/inference_speed.json")
    args = parse(p, argv, SMOKE, "benchmarks.inference_speed")
    seed_all(0)

    from multimodal.loading import load
    from multimodal.onnx.export import export_model, quantize_int8
    from multimodal.onnx.graphs import graphs_of
    from multimodal.onnx.runtime import session

    work = Path(tempfile.mkdtemp(prefix="inference-speed-"))
    ckpt = Path(args.ckpt_path) if args.ckpt_path else untrained_checkpoint(work / "tagger.ckpt", Path(args.config))
    towers = tuple(g for g in args.graphs if g != "tagger")  # the tagger's own graphs are always exported
    say(f"exporting {ckpt.name} (fp32 + int8{', towers alone' if towers else ''})")
    folder = work / "onnx"
    info = export_model(ckpt, folder, "int8", towers, progress=False)
    if "vision" in args.graphs:
        quantize_int8(folder / "vision.onnx", folder / "vision.int8-conv.onnx", ["Conv", "MatMul", "Gemm"])
    model = load(ckpt).model.eval()
    graphs = {g.name: g for g in graphs_of(model, towers)}
    rates = {"torch.mm": gemm_flops(args.gemm_size), "onnxruntime MatMul": ort_gemm_flops(work, args.gemm_size)}
    gemm = max(rates.values())
    say(f"fp32 {args.gemm_size}^3 matrix-multiply rate with {torch.get_num_threads()} threads: "
        + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in rates.items()))  # fmt: skip
    payload: dict[str, Any] = {"machine": machine(), "args": vars(args), "gemm_gflops": round(gemm / 1e9, 2),
                               "gemm_gflops_by_runtime": {k: round(v / 1e9, 2) for k, v in rates.items()}}  # fmt: skip
    payload["export"] = {k: {"max_abs_diff": v["max_abs_diff"]} for k, v in info["graphs"].items()}
    rows: list[dict[str, Any]] = []
    payload["rows"] = rows
    payload["ratios"] = ratios = {}  # ONNX Runtime / eager, items/s, by graph and batch
    unit = {"vision": "images/s", "text": "texts/s", "tagger": "products/s"}
    for name in args.graphs:
        graph = graphs[name]
        files = {"onnx fp32": info["graphs"][name]["file"], "onnx int8": info["graphs"][name]["int8_file"]}
        if name == "vision":
            files["onnx int8 (conv too)"] = "vision.int8-conv.onnx"
        sessions = {k: session(folder / f) for k, f in files.items()}
        for batch in args.batches:
            data = inputs(model, batch)
            tensors = [data[k] for k in graph.inputs]
            feed = {k: data[k].numpy() for k in graph.inputs}

            def eager(tensors: list[torch.Tensor] = tensors, module: Any = graph.module) -> Any:
                with torch.inference_mode():
                    return module(*tensors)

            runs: dict[str, Callable[[], Any]] = {"torch eager": eager}
            for key, sess in sessions.items():
                runs[key] = lambda sess=sess, feed=feed: sess.run(None, feed)
            with torch.inference_mode():
                ref = [t.numpy() for t in graph.module(*tensors)]
            diffs = {k: float(max(np.abs(a.astype(np.float32) - np.asarray(b, np.float32)).max()
                                  for a, b in zip(ref, runs[k](), strict=True))) for k in sessions}  # fmt: skip
            calls = {}
            for key, fn in runs.items():  # warm-up, then enough calls for ~args.seconds a round
                fn()
                calls[key] = max(1, int(args.seconds / max(timed(fn, 1), 1e-4)))
            times: dict[str, list[float]] = {k: [] for k in runs}
            for _ in range(args.repeats):
                for key, fn in runs.items():
                    times[key].append(timed(fn, calls[key]))
            flops = count_flops(eager) / batch
            limit = gemm / flops
            base = statistics.median(times["torch eager"])
            say(f"{name} batch {batch}: {flops / 1e9:.3f} GFLOP an item; limit {limit:,.0f} {unit[name]}")
            rows.append({"graph": name, "batch": batch, "runtime": "FLOP limit (fp32 GEMM peak)",
                         "items_per_s": round(limit, 1), "gflop_per_item": round(flops / 1e9, 4)})  # fmt: skip
            for key in runs:
                med = statistics.median(times[key])
                row = {
                    "graph": name,
                    "batch": batch,
                    "runtime": key,
                    "items_per_s": round(batch / med, 1),
                    "ms_per_batch": round(med * 1000, 2),
                    "vs_eager": round(base / med, 2),
                    "of_limit": round(batch / med / limit, 3),
                    "max_abs_diff_vs_eager": diffs.get(key, 0.0),
                    "repeats": args.repeats,
                    "calls_per_round": calls[key],
                }
                rows.append(row)
                if key != "torch eager":
                    ratios[f"{name} batch {batch}: {key} / torch eager"] = row["vs_eager"]
                say(f"  {key:22s} {row['items_per_s']:9.1f} {unit[name]}  x{row['vs_eager']:.2f} eager  "
                    f"{row['of_limit']:.1%} of limit  max|diff| {row['max_abs_diff_vs_eager']:.1e}")  # fmt: skip
            write_json(args.out, payload)  # partial results as they come
    shutil.rmtree(work, ignore_errors=True)
    say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
