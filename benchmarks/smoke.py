"""Command lines of the benchmark programs: ``--smoke`` (tiny sizes, the committed sample, a temporary output) and
the untrained small models smoke runs measure instead of the real ones.

A smoke run checks that a program still runs from the tree and writes its comparison; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import begin

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "fashion-products"
RESULTS = ROOT / "benchmarks" / "results"
TINY = {task: str(ROOT / "configs" / task / "tiny.yaml") for task in ("tagging", "retrieval", "captioning")}


def smoke_out(program: str) -> Path:
    """Where a smoke run writes when no ``--out`` is given: a temporary folder, never the published results."""
    return Path(tempfile.gettempdir()) / "multimodal-benchmark-smoke" / f"{program.rsplit('.', 1)[-1]}.json"


def parse(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, smoke: dict[str, Any], program: str
) -> argparse.Namespace:
    """Parse ``argv`` with a ``--smoke`` flag added: it makes ``smoke`` the defaults (options given on the command
    line still win) and sends ``--out`` to :func:`smoke_out`; a smoke run's ``--out`` inside
    ``benchmarks/results/`` is refused. Marks the start of the run (:func:`benchmarks.common.begin`).

    Args:
        parser: the program's parser, with an ``--out`` option.
        argv: the arguments (None: ``sys.argv[1:]``).
        smoke: option destinations and their smoke values (tiny sizes, the committed sample).
        program: the module, ``benchmarks.<name>``.
    """
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a check that the program runs, in seconds: tiny sizes and models, the committed sample as data, "
        f"results to {smoke_out(program)} unless --out is given (never into benchmarks/results/)",
    )
    known, _ = parser.parse_known_args(argv)
    if known.smoke:
        parser.set_defaults(**smoke, out=str(smoke_out(program)))
    args = parser.parse_args(argv)
    if args.smoke and Path(args.out).resolve().is_relative_to(RESULTS.resolve()):
        parser.error(f"--smoke results are not published: give an --out outside {RESULTS.relative_to(ROOT)}/")
    begin(program, argv)
    return args


def config_checkpoint(
    config: str | Path, manifest: Path, image_root: Path, path: Path, heads: bool = True, extra: Sequence[str] = ()
) -> Path:
    """A checkpoint as ``multimodal fit`` writes it (weights, the stored config naming ``manifest``, vocabularies),
    without training: speed does not depend on the weights. ``heads``: size a tagger's heads from the data;
    ``extra``: more command-line options of the config."""
    import torch

    from multimodal.lightning_cli import MultimodalCLI
    from multimodal.loading import CONFIG_KEY

    args = ["--config", str(config), "--data.manifest", str(manifest), "--data.image_root", str(image_root)]
    if "retrieval" in Path(config).parts:
        args += ["--model.init_args.reranker", "null"]
    args += list(extra)
    cli = MultimodalCLI(args=args, run=False)
    state: dict[str, Any] = {CONFIG_KEY: cli.parser.dump(cli.config, skip_none=False)}
    if heads and hasattr(cli.model, "build_heads"):
        cli.model.build_heads(cli.datamodule.vocabularies, cli.datamodule.tag_vocabularies)
        cli.model.on_save_checkpoint(state)
    state["state_dict"] = cli.model.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def sample_rows(n: int, path: Path) -> Path:
    """The first ``n`` products of the committed sample as a manifest at ``path`` (photos stay in the sample)."""
    import pandas as pd

    df = pd.read_csv(SAMPLE / "metadata.csv", dtype=str, keep_default_na=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.head(n).to_csv(path, index=False)
    return path


def index_of(retriever: Path, manifest: Path, folder: Path) -> Path:
    """``multimodal export`` of ``manifest`` with ``retriever``, then ``multimodal index``: the index folder."""
    from multimodal.cli import main

    main(["export", "--ckpt_path", str(retriever), "--input", str(manifest), "--image_root", str(SAMPLE / "images"),
          "--out", str(folder / "emb"), "--no_progress"])  # fmt: skip
    main(["index", str(folder / "emb"), "--out", str(folder / "index")])
    return folder / "index"
