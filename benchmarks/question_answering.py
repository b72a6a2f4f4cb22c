"""Answers to shoppers' questions about a product photo: a captioner trained with ``model.questions``
(``configs/captioning/questions.yaml``) against the tagger on the same attribute (``configs/tagging/cross_attention.
yaml``: the bar, a generative answer should come close to it) and against always answering the most frequent
value; and its title CIDEr against the same captioner trained without questions (``configs/captioning/
cross_attention.yaml``): answering must not cost the titles.

Every model is trained by ``multimodal fit`` with the shipped config (only the data, the seed, the run folder and
optionally the epochs changed) and used through ``multimodal.load``; all are scored on the same test products (the
data module's split, a stable hash of the id). Answers are exact matches, case and spacing aside, asked with the
first phrasing of each column's questions, with the title given (as the tagger reads it) and with the photo alone.

    python -m benchmarks.question_answering --data data/fashion-products --seeds 0 1 \\
        --out benchmarks/results/question_answering.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from benchmarks import harness
from benchmarks.common import quiet_lightning, say, set_threads
from benchmarks.harness import ROOT, SAMPLE, TINY, Option, Report
from benchmarks.quality import qa_eval

CONFIGS = {
    "questions": "configs/captioning/questions.yaml",
    "captioner": "configs/captioning/cross_attention.yaml",
    "tagger": "configs/tagging/cross_attention.yaml",
}
OPTIONS = {
    "--data": Option("examples/fashion-products", "catalogue folder with metadata.csv and images/"),
    "--out": Option("benchmarks/results/question_answering.json", "JSON result file"),
    "--work-dir": Option("runs/benchmarks/question_answering", "run folders (empty: a temporary folder, removed)"),
    "--seeds": Option([0, 1], "training seeds (every model is trained once per seed)"),
    "--epochs": Option(None, "max_epochs of every model (default: each config's own)", type=int),
    "--val-batches": Option(
        None, "validation batches per epoch (0: none; default: the configs' whole split)", type=int
    ),
    "--max-test": Option(None, "score at most this many test products (smoke runs)", type=int),
    "--tiny": Option(False, "the tiny configs with the questions of questions.yaml (smoke runs)"),
    "--threads": Option(0, "torch CPU threads (0: torch's default)"),
}
SMOKE = {"data": str(SAMPLE), "work_dir": "", "seeds": [0], "max_test": 12, "tiny": True, "epochs": 1, "val_batches": 0}


def question_settings() -> dict[str, Any]:
    """``model.questions`` of the shipped config: the templates every run asks."""
    config = yaml.safe_load((ROOT / CONFIGS["questions"]).read_text())
    return config["model"]["init_args"]["questions"]


def fit(model: str, args: Any, seed: int, work: Path) -> Path:
    """``multimodal fit`` of one model under one seed; its last checkpoint."""
    from multimodal.cli import main

    folder = work / f"seed{seed}" / model
    ckpt = folder / "checkpoints" / "last.ckpt"
    if ckpt.exists():
        say(f"{model} seed {seed}: kept {ckpt}")
        return ckpt
    data = Path(args.data)
    argv = ["fit", "--config", config_of(model, args.tiny), "--seed_everything", str(seed),
            "--data.init_args.manifest", str(data / "metadata.csv"), "--data.init_args.image_root",
            str(data / "images"), "--trainer.default_root_dir", str(folder), "--trainer.logger", "false"]  # fmt: skip
    argv += ["--trainer.max_epochs", str(args.epochs)] if args.epochs else []
    argv += ["--trainer.limit_val_batches", str(args.val_batches)] if args.val_batches is not None else []
    if args.tiny:
        argv += ["--trainer.enable_checkpointing", "true"]
        argv += tiny_questions() if model == "questions" else []
    say(f"{model} seed {seed}: training")
    sys.argv = sys.argv[:1]  # LightningCLI reads the given arguments only
    main(argv)
    found = ckpt if ckpt.exists() else sorted(folder.rglob("*.ckpt"))[-1]
    return found


def config_of(model: str, tiny: bool) -> str:
    if not tiny:
        return str(ROOT / CONFIGS[model])
    return TINY["tagging" if model == "tagger" else "captioning"]


def tiny_questions() -> list[str]:
    """The tiny captioner given the shipped questions and the text columns they need."""
    settings = question_settings()
    columns = ["title", *settings["templates"]]
    return ["--model.init_args.questions", json.dumps(settings), "--data.init_args.text_columns", json.dumps(columns)]


def run_seed(args: Any, seed: int, work: Path, frames: dict[str, Any]) -> dict[str, Any]:
    settings = question_settings()
    columns = list(settings["templates"])
    test = frames["test"]
    ckpts = {model: fit(model, args, seed, work) for model in CONFIGS}
    say(f"seed {seed}: scoring {len(test)} test products")
    result: dict[str, Any] = {"answers": qa_eval.answers(ckpts["questions"], test, settings["templates"],
                                                         settings.get("context_columns") or [])}  # fmt: skip
    result["tagger"] = qa_eval.tagger_accuracy(ckpts["tagger"], test, columns)
    result["titles"] = {m: qa_eval.title_scores(ckpts[m], test) for m in ("questions", "captioner")}
    return result


def table(report: dict[str, Any], columns: list[str]) -> tuple[str, dict[str, float | None]]:
    """Seed means per attribute, and the ratios of answer accuracy to the tagger's and to the majority's."""
    seeds = report["seeds"]
    majority = report["majority"]

    def mean(values: list[float | None]) -> float | None:
        kept = [v for v in values if v is not None]
        return round(sum(kept) / len(kept), 4) if kept else None

    lines = ["| attribute | answer, with title | answer, photo only | tagger | most frequent | answer / tagger |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    ratios: dict[str, float | None] = {}
    for c in columns:
        ctx = mean([s["answers"][c]["with_context"] for s in seeds.values()])
        photo = mean([s["answers"][c]["photo_only"] for s in seeds.values()])
        tag = mean([s["tagger"].get(c) for s in seeds.values()])
        ratio = round(ctx / tag, 3) if ctx is not None and tag else None
        ratios[f"{c}: answer / tagger"] = ratio
        ratios[f"{c}: answer / most frequent"] = (
            round(ctx / majority[c], 3) if ctx is not None and majority[c] else None
        )
        lines.append(f"| {c} | {ctx} | {photo} | {tag if tag is not None else '-'} | {majority[c]} | {ratio} |")
    ciders = {m: [s["titles"][m]["cider"] for s in seeds.values()] for m in ("questions", "captioner")}
    lines.append("")
    lines.append(f"title CIDEr per seed: with questions {ciders['questions']}, without {ciders['captioner']}")
    plain = mean(ciders["captioner"])
    ratios["title CIDEr: with / without questions"] = round(mean(ciders["questions"]) / plain, 3) if plain else None
    return "\n".join(lines), ratios


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = harness.parser("question_answering", __doc__, OPTIONS)
    args = harness.parse(p, argv, SMOKE, "benchmarks.question_answering")
    quiet_lightning()
    set_threads(args.threads)
    with harness.work_folder(args.work_dir, "question-answering-") as work:
        return run(args, work)


def run(args: Any, work: Path) -> dict[str, Any]:
    settings = question_settings()
    columns = list(settings["templates"])
    data = Path(args.data)
    frames = qa_eval.split_frames(str(data / "metadata.csv"), str(data / "images"), ["title", *columns])
    if args.max_test:
        frames["test"] = frames["test"].head(args.max_test)
    report = Report(args.out, args, benchmark="question_answering")
    report.update(questions=settings, test_products=len(frames["test"]), seeds={},
                  majority=qa_eval.majority_accuracy(frames["train"], frames["test"], columns))  # fmt: skip
    for seed in args.seeds:
        report["seeds"][str(seed)] = run_seed(args, seed, work, frames)
        report["table"], report["ratios"] = table(report, columns)
        report.save()  # partial results survive an interrupted run
    return report.finish(report["table"])


if __name__ == "__main__":
    main()
