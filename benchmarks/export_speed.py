"""Export speed and memory: `multimodal export` end to end vs the raw image-tower forward, in the same run.

Speed: ``configs/retrieval/dual_encoder.yaml`` (EfficientNet-Lite0 at 160 px, image product vectors, untrained
projection: speed does not depend on training), raw forward timed before and after the export.
Memory: peak RSS of a 1k and a 10k export (``--memory-config``, default the tiny config so that 11k images fit in
the time of a 2-core box; the writer holds one shard at a time whatever the model). Catalogues are synthetic:
the committed sample's photos and titles repeated under new ids. Each export runs in its own process, so its
peak RSS (the process or its largest data-loader worker) is its own.

- raw: ``embed_products`` on pre-decoded, pre-transformed tensors (the limit: no decoding, no writing);
- end to end: ``trainer.predict`` with decoding workers and the shard writer (the predict loop only), and the
  whole command (load + hash + predict + finalize).

    python -m benchmarks.export_speed --out benchmarks/results/export_speed.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import machine, quiet_lightning, ratio, say, seed_all, write_json
from benchmarks.harness import ROOT, SAMPLE, TINY, parse
from benchmarks.smoke import config_checkpoint
from benchmarks.synthetic import repeated_catalogue
from benchmarks.timing import clocked, timed

CONFIG = "configs/retrieval/dual_encoder.yaml"
# --smoke: the tiny model for both comparisons, 24 products for speed, 16 and 32 for memory, no decoding workers
SMOKE = {"data": str(SAMPLE), "config": TINY["retrieval"], "speed_n": 24, "memory_config": TINY["retrieval"],
         "sizes": [16, 32], "batch_size": 8, "workers": 0, "raw_batches": 1, "in_process": True}  # fmt: skip
# what a worker process is told: its options and the attributes of the arguments they come from
WORKER_OPTIONS = {"--ckpt": "ckpt", "--catalogue": "catalogue", "--image-root": "image_root",
                  "--export-out": "export_out", "--batch-size": "batch_size", "--workers": "workers"}  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.export_speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--data", default="examples/fashion-products", help="sample whose photos and titles are repeated")
    p.add_argument("--config", default=CONFIG, help="model of the speed comparison")
    p.add_argument("--speed-n", type=int, default=1000, help="products exported for the speed comparison")
    p.add_argument("--memory-config", default="configs/retrieval/tiny.yaml", help="model of the memory comparison")
    p.add_argument("--sizes", type=int, nargs=2, default=[1000, 10000], help="catalogue sizes compared for memory")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="decoding workers of the export")
    p.add_argument("--raw-batches", type=int, default=4, help="batches timed for the raw forward (before and after)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/export_speed.json")
    p.add_argument("--in-process", action="store_true", help="export in this process, not one process an export "
                   "(then every peak RSS is this process's: for smoke runs)")  # fmt: skip
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for flag in ("--ckpt", "--catalogue", "--image-root", "--export-out"):
        p.add_argument(flag, help=argparse.SUPPRESS)
    return parse(p, argv, SMOKE, "benchmarks.export_speed")


def current_rss_mb() -> float:
    """Resident memory of this process now (Linux ``/proc/self/statm``)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@contextlib.contextmanager
def predict_clock(times: dict[str, float]) -> Iterator[None]:
    """Every ``lightning.Trainer`` made inside gets a callback that times the predict loop into ``times`` and
    samples the process's current RSS after every batch."""
    import lightning
    from lightning.pytorch.callbacks import Callback

    class Clock(Callback):
        def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
            times["start"] = time.perf_counter()
            times["rss_start"] = times["rss_max"] = current_rss_mb()

        def on_predict_batch_end(self, *args: Any, **kwargs: Any) -> None:
            times["rss_max"] = max(times["rss_max"], current_rss_mb())

        def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
            times["end"] = time.perf_counter()

    original = lightning.Trainer

    def trainer_with_clock(*a: Any, **kw: Any) -> Any:
        kw["callbacks"] = [*kw.get("callbacks", []), Clock()]
        return original(*a, **kw)

    lightning.Trainer = trainer_with_clock  # type: ignore[misc]
    try:
        yield
    finally:
        lightning.Trainer = original  # type: ignore[misc]


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One export in this process: its times and peak memory."""
    import multimodal.predict_cli as command

    # --image_root: a new catalogue's photos are looked for beside it unless told
    argv = ["--ckpt_path", args.ckpt, "--out", args.export_out, "--no-progress", "--batch-size", str(args.batch_size),
            "--num-workers", str(args.workers), "--accelerator", "cpu", "--data.manifest", args.catalogue,
            "--image_root", args.image_root]  # fmt: skip
    times: dict[str, float] = {}
    with predict_clock(times):
        total, manifest = clocked(lambda: command.run(command.parser("export").parse_args(argv), "export", argv))
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss = max(self_rss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return {"n": manifest["count"] if manifest else 0, "predict_s": times["end"] - times["start"], "total_s": total,
            "peak_rss_mb": rss / 1024, "main_rss_mb": self_rss / 1024, "predict_rss_start_mb": times["rss_start"],
            "predict_rss_max_mb": times["rss_max"]}  # fmt: skip


def raw_forward(ckpt: Path, sample: Path, batch_size: int, batches: int) -> float:
    """Images/s of the product-vector forward on pre-decoded tensors (same model, same threads)."""
    from multimodal.data.images import load_image
    from multimodal.loading import load

    model = load(ckpt).model
    transform = model.image_transform(False)
    files = sorted((sample / "images").iterdir())[:batch_size]
    x = torch.stack([transform(load_image(f)) for f in files])  # (B, 3, H, W), decoded once
    with torch.inference_mode():
        model.embed_products({"pixel_values": x})  # warm-up
        return batch_size / timed(lambda: model.embed_products({"pixel_values": x}), batches)


def run_export_process(ckpt: Path, catalogue: Path, images: Path, out: Path, args: argparse.Namespace) -> dict:
    """One export, in a process of its own (its peak RSS is its own) unless ``--in-process``."""
    paths = {"ckpt": str(ckpt), "catalogue": str(catalogue), "image_root": str(images), "export_out": str(out)}
    job = {**vars(args), **paths}
    if args.in_process:  # smoke runs: the same export without a process start (its peak RSS is this process's)
        return worker(argparse.Namespace(**job))
    cmd = [sys.executable, "-m", "benchmarks.export_speed", "--worker"]
    cmd += [x for flag, key in WORKER_OPTIONS.items() for x in (flag, str(job[key]))]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"export failed: {proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def export_run(ckpt: Path, sample: Path, tmp: Path, n: int, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    catalogue = repeated_catalogue(n, sample / "metadata.csv", tmp / f"catalogue-{tag}-{n}.csv")
    res = run_export_process(ckpt, catalogue, sample / "images", tmp / f"emb-{tag}-{n}", args)
    res["images_per_s"] = res["n"] / res["predict_s"]
    res["images_per_s_whole_command"] = res["n"] / res["total_s"]
    say(f"export {tag} {n}: {res}")
    return res


def measure(args: argparse.Namespace, sample: Path, tmp: Path) -> tuple[list[float], dict, dict[str, dict]]:
    """The raw forward before and after the speed export, the speed export, the memory exports by size."""
    speed_ckpt, memory_ckpt = tmp / "speed.ckpt", tmp / "memory.ckpt"
    # the raw forward feeds photos only: the speed model's product vector is the photo's, whatever the config
    image = ("--model.init_args.product", "image", "--model.init_args.fusion", "null")
    config_checkpoint(args.config, sample / "metadata.csv", sample / "images", speed_ckpt, False, image)
    config_checkpoint(args.memory_config, sample / "metadata.csv", sample / "images", memory_ckpt, heads=False)
    say("checkpoints written")
    raw = []

    def raw_run() -> None:
        raw.append(raw_forward(speed_ckpt, sample, args.batch_size, args.raw_batches))
        say(f"raw forward: {raw[-1]:.1f} images/s")

    raw_run()
    speed = export_run(speed_ckpt, sample, tmp, args.speed_n, args, "speed")
    raw_run()
    memory = {str(n): export_run(memory_ckpt, sample, tmp, n, args, "memory") for n in args.sizes}
    return raw, speed, memory


def summarise(raw: list[float], speed: dict, memory: dict[str, dict], args: argparse.Namespace) -> dict[str, Any]:
    """The summary and the ratios of the run."""
    small, big = memory[str(args.sizes[0])], memory[str(args.sizes[1])]
    summary = {
        "raw_images_per_s": raw,
        "raw_images_per_s_mean": sum(raw) / len(raw),
        "export_images_per_s": speed["images_per_s"],
        "ratio_export_vs_raw": speed["images_per_s"] / (sum(raw) / len(raw)),
        "peak_rss_mb": {n: memory[str(n)]["peak_rss_mb"] for n in args.sizes},
        "peak_rss_ratio_big_vs_small": big["peak_rss_mb"] / small["peak_rss_mb"],
        "predict_loop_max_rss_ratio_big_vs_small": big["predict_rss_max_mb"] / small["predict_rss_max_mb"],
    }
    ratios = {
        "export / raw forward, images/s": ratio(speed["images_per_s"], summary["raw_images_per_s_mean"]),
        f"peak RSS, {args.sizes[1]} / {args.sizes[0]} products": ratio(big["peak_rss_mb"], small["peak_rss_mb"]),
    }
    return {"summary": summary, "ratios": ratios}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quiet_lightning()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return
    seed_all(args.seed)
    sample = Path(args.data).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        raw, speed, memory = measure(args, sample, Path(tmp))
    results = summarise(raw, speed, memory, args)
    payload = {"machine": machine(), "args": vars(args), "speed": speed, "memory": memory, **results,
               "table": table(speed, memory, results["summary"], args)}  # fmt: skip
    write_json(args.out, payload)
    print(payload["table"])


def table(speed: dict[str, Any], memory: dict[str, Any], summary: dict[str, Any], args: argparse.Namespace) -> str:
    raw = summary["raw_images_per_s_mean"]
    lines = [
        f"Speed ({args.config}, {args.speed_n:,} products, batch {args.batch_size}, {args.workers} workers):",
        "",
        "| raw forward images/s (before, after) | export images/s (predict loop) | ratio | whole command images/s |",
        "|---|---|---|---|",
        f"| {raw:.1f} ({', '.join(f'{r:.1f}' for r in summary['raw_images_per_s'])}) | {speed['images_per_s']:.1f} "
        f"| **{summary['ratio_export_vs_raw']:.2f}** | {speed['images_per_s_whole_command']:.1f} |",
        "",
        f"Memory ({args.memory_config}):",
        "",
        "| products | peak RSS MB (whole process) | RSS at predict start MB | max RSS in predict loop MB | images/s |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {int(n):,} | {r['peak_rss_mb']:.0f} | {r['predict_rss_start_mb']:.0f} | {r['predict_rss_max_mb']:.0f} "
        f"| {r['images_per_s']:.1f} |"
        for n, r in memory.items()
    ]
    peak = summary["peak_rss_ratio_big_vs_small"]
    loop = summary["predict_loop_max_rss_ratio_big_vs_small"]
    sizes = f"{args.sizes[1]:,} vs {args.sizes[0]:,} products"
    lines.append(f"\npeak RSS {sizes}: **{peak:.3f}x** (max RSS in the predict loop: {loop:.3f}x)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
