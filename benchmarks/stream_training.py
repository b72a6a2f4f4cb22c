"""Training from a litdata stream vs from local files: samples/s of ``fit`` on the tiny tagger, in the same run.

The catalogue (``--data``: ``metadata.csv`` and ``images/``) is written once as a stream with ``multimodal prepare``
(a local folder; the time is reported). Then the same ``fit`` runs from the manifest and its photo files, and from
the stream (``data.stream``), alternating (local, stream, stream, local, ...) for ``--repeats`` rounds: the tiny
tagger of ``configs/tagging/tiny.yaml``, seeded alike, batches of ``--batch-size``, photos decoded and transformed in
the training process (``num_workers`` 0), so the span holds every cost of reading a product. Each run trains
``--warmup + --steps`` steps; only the last ``--steps`` are timed (end of the last warm-up step to the end of the
last step). The report gives the median samples/s of each and the ratio stream / local files.

    python -m benchmarks.stream_training --out benchmarks/results/stream_training.json
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L

from benchmarks.common import quiet_lightning, ratio, say, set_threads
from benchmarks.harness import SAMPLE, TINY, Option, Report, parse, parser
from benchmarks.timing import rounds

OPTIONS = {
    "--data": Option(str(SAMPLE), "catalogue folder with metadata.csv and images/"),
    "--out": Option("benchmarks/results/stream_training.json", "JSON result file"),
    "--batch-size": Option(16),
    "--warmup": Option(3, "untimed steps at the start of every run"),
    "--steps": Option(20, "timed steps per run"),
    "--repeats": Option(5, "runs of each source (alternating order)"),
    "--threads": Option(1, "torch CPU threads (0: torch's default)"),
}
SMOKE = {"batch_size": 4, "warmup": 1, "steps": 2, "repeats": 1}


class Clock(L.Callback):
    """The end time of every training batch of one run."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        self.marks.append(time.perf_counter())


def fit_seconds(source: list[str], batch_size: int, warmup: int, steps: int) -> float:
    """Seconds of the timed steps of one ``fit`` of the tiny tagger with the data options ``source``."""
    from multimodal.lightning_cli import MultimodalCLI

    args = ["--config", TINY["tagging"], *source, "--data.init_args.batch_size", str(batch_size),
            "--trainer.max_steps", str(warmup + steps), "--trainer.limit_val_batches", "0",
            "--trainer.num_sanity_val_steps", "0"]  # fmt: skip
    cli = MultimodalCLI(args=args, run=False)
    clock = Clock()
    cli.trainer.callbacks.append(clock)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    if len(clock.marks) != warmup + steps:
        raise SystemExit(f"error: fit ran {len(clock.marks)} steps, not {warmup + steps}: too few training products")
    return clock.marks[-1] - clock.marks[warmup - 1]


def training_rates(
    data: str | Path = SAMPLE,
    batch_size: int = 16,
    warmup: int = 3,
    steps: int = 20,
    repeats: int = 5,
    stream: str | Path | None = None,
) -> dict[str, Any]:
    """Training samples/s of the tiny tagger from a litdata stream and from local files, measured in one run.

    Args:
        data: a catalogue folder with ``metadata.csv`` and ``images/`` (default: the committed sample).
        batch_size: products per step.
        warmup: untimed steps at the start of every run (at least 1).
        steps: timed steps per run.
        repeats: runs of each source, alternating which goes first.
        stream: a stream already written from ``data`` by ``multimodal prepare``; None: one is written to a
            temporary folder (and removed).

    Returns:
        ``local_files`` / ``stream``: median samples/s; ``stream_vs_local_files``: their ratio; ``runs``: every run's
        samples/s; ``prepare_s``: seconds ``prepare`` took (None when ``stream`` was given); the settings.
    """
    from multimodal.data.litdata_prepare import prepare

    if warmup < 1 or steps < 1 or repeats < 1:
        raise ValueError("warmup, steps and repeats must be at least 1")
    data = Path(data)
    manifest, images = str(data / "metadata.csv"), str(data / "images")
    local = ["--data.init_args.manifest", manifest, "--data.init_args.image_root", images]
    with tempfile.TemporaryDirectory(prefix="stream-training-") as work:
        prepare_s = None
        if stream is None:
            start = time.perf_counter()
            stream = Path(work) / "stream"
            prepare(manifest, str(stream), images)
            prepare_s = round(time.perf_counter() - start, 3)
        sources = {"local_files": local, "stream": [*local, "--data.init_args.stream", str(stream)]}
        variants = {name: _timed(source, batch_size, warmup, steps) for name, source in sources.items()}
        times = rounds(variants, repeats, alternate=True)
    runs = {name: [round(batch_size * steps / s, 2) for s in seconds] for name, seconds in times.items()}
    medians = {name: statistics.median(rates) for name, rates in runs.items()}
    settings = {"batch_size": batch_size, "warmup": warmup, "steps": steps, "repeats": repeats}
    return {**medians, "stream_vs_local_files": ratio(medians["stream"], medians["local_files"]), "runs": runs,
            "prepare_s": prepare_s, "settings": settings}  # fmt: skip


def _timed(source: list[str], batch_size: int, warmup: int, steps: int) -> Any:
    return lambda: fit_seconds(source, batch_size, warmup, steps)


def main(argv: list[str] | None = None) -> None:
    args = parse(parser("stream_training", __doc__, OPTIONS), argv, SMOKE, "benchmarks.stream_training")
    set_threads(args.threads)
    quiet_lightning()
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")  # args given on purpose
    report = Report(args.out, args)
    rates = training_rates(args.data, args.batch_size, args.warmup, args.steps, args.repeats)
    report.update(results=rates, ratios={"stream_vs_local_files": rates["stream_vs_local_files"]})
    report.save()
    say(f"samples/s: local files {rates['local_files']}, stream {rates['stream']} "
        f"(ratio {rates['stream_vs_local_files']}); written to {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
