"""The small models and samples smoke runs and speed benchmarks measure instead of real ones: a checkpoint as
``multimodal fit`` writes it without training, the first rows of the committed sample, an index of them.

``--smoke`` itself (tiny sizes, the committed sample, a temporary output) lives in :mod:`benchmarks.harness`; its
names are kept here for the programs that import them from this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from benchmarks.harness import RESULTS, ROOT, SAMPLE, TINY, parse, smoke_out

__all__ = ["RESULTS", "ROOT", "SAMPLE", "TINY", "config_checkpoint", "index_of", "parse", "sample_rows", "smoke_out"]


def config_checkpoint(
    config: str | Path, manifest: Path, image_root: Path, path: Path, heads: bool = True, extra: Sequence[str] = ()
) -> Path:
    """A checkpoint as ``multimodal fit`` writes it (weights, the stored config naming ``manifest``, vocabularies),
    without training: speed does not depend on the weights. ``heads``: size a tagger's heads from the data;
    ``extra``: more command-line options of the config."""
    import yaml

    from multimodal.lightning_cli import MultimodalCLI
    from multimodal.loading import save_checkpoint

    args = ["--config", str(config), "--data.manifest", str(manifest), "--data.image_root", str(image_root)]
    if "retrieval" in Path(config).parts:
        args += ["--model.init_args.reranker", "null"]
    args += list(extra)
    cli = MultimodalCLI(args=args, run=False)
    if heads and hasattr(cli.model, "build_heads"):
        cli.model.build_heads(cli.datamodule.vocabularies, cli.datamodule.tag_vocabularies)
    resolved = yaml.safe_load(cli.parser.dump(cli.config, skip_none=False))
    return save_checkpoint(cli.model, path, {"model": resolved["model"], "data": resolved["data"]})


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
