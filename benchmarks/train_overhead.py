"""Training overhead: samples/s of ``lightning.Trainer.fit`` on the ProductTagger vs a hand-written PyTorch loop.

Both paths run in the same process on the same batches: the batches are decoded once from the
ProductDataModule's training loader (train transforms, seeded) and kept in memory, then served to both by one
``DataLoader`` over that list. Both start from the same initial weights (a deep copy of one seeded model) and the
optimizer that ``ProductTagger.configure_optimizers`` returns (AdamW, two parameter groups). Each run trains
``--warmup + --steps`` steps; only the last ``--steps`` are timed, from the end of the last warm-up step to the
end of the last step, so the span holds batch fetch, forward, loss, backward, optimizer step and (for ``fit``)
every Lightning hook and ``self.log`` call. After ``--warmup-runs`` untimed runs of each path (the first runs in
a process pay one-off costs), runs alternate (fit, hand, hand, fit, ...) over ``--repeats`` pairs; the report
gives medians and the ratio fit / hand-written.

Lightning features a hand loop does not have are switched off: logger, checkpointing, progress bar, model
summary, sanity validation and validation (``limit_val_batches=0``). ``self.log`` in ``training_step`` stays, as
it is part of the task.

    python -m benchmarks.train_overhead --out benchmarks/results/train_overhead.json
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from benchmarks.common import machine, quiet_lightning, say, seed_all, set_threads, write_json
from benchmarks.harness import SAMPLE, Option, parse, parser
from benchmarks.timing import rounds

ATTRIBUTES = ["gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage"]
# --smoke: batches of 2 photos at 32 px, one warm-up step and 2 timed steps, one run of each path
SMOKE = {"data": str(SAMPLE), "image_size": 32, "batch_size": 2, "warmup": 1, "steps": 2, "repeats": 1,
         "warmup_runs": 0}  # fmt: skip


OPTIONS = {
    "--data": Option("examples/fashion-products", "catalogue folder with metadata.csv and images/"),
    "--out": Option("benchmarks/results/train_overhead.json", "JSON result file"),
    "--attributes": Option(ATTRIBUTES),
    "--fusion": Option("early", choices=["early", "late", "cross_attention"]),
    "--image-size": Option(96, "EfficientNet-Lite0 input size"),
    "--vision-trainable": Option(2, "train the last N EfficientNet stages"),
    "--text-trainable": Option(-1, "train the last N MiniLM layers (-1: all)"),
    "--batch-size": Option(16),
    "--warmup": Option(2, "untimed steps at the start of every run"),
    "--steps": Option(10, "timed steps per run"),
    "--repeats": Option(7, "runs of each path (alternating order)"),
    "--warmup-runs": Option(1, "untimed runs of each path before the repeats"),
    "--seed": Option(0),
    "--threads": Option(1, "torch CPU threads (0: torch's default); 1 keeps the timing stable when other jobs share "
                        "the cores"),
}  # fmt: skip


def build(args: argparse.Namespace) -> tuple[Any, list[dict[str, Any]]]:
    """The seeded template model (heads built) and the pre-decoded batches."""
    from encoders.pretrained import EfficientNetLiteEncoder, MiniLMTextEncoder
    from fusion import CrossAttentionFusion, EarlyFusion, LateFusion
    from multimodal.data.datamodule import ProductDataModule
    from multimodal.tagging.tagger import ProductTagger

    seed_all(args.seed)
    fusion = {
        "early": functools.partial(EarlyFusion, dim=256, layers=2, heads=4, dropout=0.1),
        "late": functools.partial(LateFusion, dim=256, mode="gated", dropout=0.1),
        "cross_attention": functools.partial(CrossAttentionFusion, dim=256, layers=2, heads=4, dropout=0.1),
    }[args.fusion]
    model = ProductTagger(
        vision=EfficientNetLiteEncoder(variant=0, image_size=args.image_size, trainable=args.vision_trainable or False),
        text=MiniLMTextEncoder(
            max_length=32, trainable=True if args.text_trainable < 0 else (args.text_trainable or False)
        ),
        fusion=fusion,
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.01),
        encoder_lr_scale=0.1,
    )
    data = Path(args.data)
    dm = ProductDataModule(
        manifest=str(data / "metadata.csv"),
        image_root=str(data / "images"),
        text_columns=["title"],
        attributes=args.attributes,
        on_bad_sample="skip",
        batch_size=args.batch_size,
        num_workers=0,
    )
    dm.attach(model)
    model.build_heads(dm.vocabularies, dm.tag_vocabularies)
    need = args.warmup + args.steps
    batches = []
    for batch in dm.loader("train", train=True):
        batch.pop("skipped", None)
        if len(batch["ids"]) == args.batch_size:
            batches.append(batch)
        if len(batches) == need:
            break
    if len(batches) < need:
        raise SystemExit(
            f"error: {data} gives only {len(batches)} full training batches of {args.batch_size}; need {need}"
        )
    return model, batches


def loader(batches: list[dict[str, Any]]) -> DataLoader:
    """One DataLoader over the pre-decoded batches (each item is already a batch), used by both paths."""
    return DataLoader(batches, batch_size=None, shuffle=False, num_workers=0)


def run_fit(template: Any, batches: list[dict[str, Any]], args: argparse.Namespace) -> float:
    """Seconds for the timed steps of ``Trainer.fit``."""
    import lightning as L

    marks: dict[int, float] = {}

    class Clock(L.Callback):
        def on_train_batch_end(
            self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
        ) -> None:
            marks[i] = time.perf_counter()

    model = copy.deepcopy(template)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[Clock()])  # fmt: skip
    torch.manual_seed(args.seed)
    trainer.fit(model, train_dataloaders=loader(batches))
    n = args.warmup + args.steps
    assert len(marks) == n, f"fit ran {len(marks)} steps, expected {n}"
    return marks[n - 1] - marks[args.warmup - 1]


def run_hand(template: Any, batches: list[dict[str, Any]], args: argparse.Namespace) -> float:
    """Seconds for the timed steps of a plain loop: forward, loss, zero_grad, backward, step."""
    model = copy.deepcopy(template)
    model.train()
    optimizer = model.configure_optimizers()
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    for i, batch in enumerate(loader(batches)):
        loss = model.loss(model(batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i == args.warmup - 1:
            t0 = time.perf_counter()
    return time.perf_counter() - t0


def describe(args: argparse.Namespace, trainable: int) -> dict[str, Any]:
    """The model measured, for the result file."""
    text = "all layers trained" if args.text_trainable < 0 else f"last {args.text_trainable} layers trained"
    return {
        "vision": f"EfficientNet-Lite0 (ImageNet) @{args.image_size}px, last {args.vision_trainable} stages trained",
        "text": f"all-MiniLM-L6-v2, {text}",
        "fusion": args.fusion,
        "trainable_params": trainable,
    }


def measure(template: Any, batches: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, list[float]]:
    """Seconds of the timed steps of each path: untimed warm-up runs, then alternating timed runs."""
    samples = args.steps * args.batch_size
    paths = {"fit": functools.partial(run_fit, template, batches, args),
             "hand": functools.partial(run_hand, template, batches, args)}  # fmt: skip
    for name in ("fit", "hand") if args.warmup_runs else ():
        for _ in range(args.warmup_runs):  # first runs in a process pay one-off costs (allocator, lazy inits)
            say(f"untimed warm-up run: {name:4s} {samples / paths[name]():7.2f} samples/s")

    def each(r: int, name: str, seconds: float) -> None:
        say(f"repeat {r + 1}/{args.repeats}: {name:4s} {samples / seconds:7.2f} samples/s ({seconds:.2f}s, "
            f"{args.steps} steps)")  # fmt: skip

    return rounds(paths, args.repeats, alternate=True, each=each)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(parser("train_overhead", __doc__, OPTIONS), argv, SMOKE, "benchmarks.train_overhead")
    if args.warmup < 1 or args.steps < 1 or args.repeats < 1:
        raise SystemExit("error: --warmup, --steps and --repeats must be at least 1")
    quiet_lightning()
    set_threads(args.threads)
    say(
        f"building the tagger (EfficientNet-Lite0 @{args.image_size}px, MiniLM-L6, {args.fusion} fusion) and "
        f"{args.warmup + args.steps} batches of {args.batch_size}"
    )
    template, batches = build(args)
    trainable = sum(p.numel() for p in template.parameters() if p.requires_grad)
    say(f"{trainable / 1e6:.2f}M trainable of {sum(p.numel() for p in template.parameters()) / 1e6:.2f}M parameters")
    samples = args.steps * args.batch_size
    rates = {k: [samples / s for s in v] for k, v in measure(template, batches, args).items()}
    median = {k: statistics.median(v) for k, v in rates.items()}
    paired = [f / h for f, h in zip(rates["fit"], rates["hand"], strict=True)]
    ratio = median["fit"] / median["hand"]
    payload = {
        "benchmark": "train_overhead",
        "machine": machine(),
        "args": vars(args),
        "model": describe(args, trainable),
        "samples_per_s": rates,
        "median_samples_per_s": median,
        "paired_ratios": paired,
        "ratio_fit_over_hand": ratio,
        "ratios": {"Trainer.fit / hand-written loop, samples/s": round(ratio, 4)},
        "median_paired_ratio": statistics.median(paired),
        "passes_0_97": ratio >= 0.97,
    }
    write_json(args.out, payload)
    print()
    print(f"median samples/s: Trainer.fit {median['fit']:.2f}, hand-written loop {median['hand']:.2f}")
    print(
        f"ratio fit / hand-written = {ratio:.3f} (median of paired ratios {statistics.median(paired):.3f}; "
        f"bar >= 0.97: {'met' if ratio >= 0.97 else 'NOT met'})"
    )
    say(f"wrote {args.out}")
    return payload


if __name__ == "__main__":
    main()
