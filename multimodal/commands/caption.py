"""``multimodal caption``: write captions for a folder of photos or a manifest with a trained captioner."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from multimodal.caption_job import folder_items, manifest_items, merge_parts, run_caption_job
from multimodal.errors import UserError
from multimodal.restore import CONFIG_KEY, load_checkpoint
from multimodal.tasks.captioning import ProductCaptioner


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="multimodal caption",
        description="Caption product photos in batches; JSONL out (id, image, caption, score), resumable.",
    )
    p.add_argument("--ckpt_path", required=True, help="checkpoint written by `multimodal fit` with a captioning config")
    p.add_argument("--input", required=True, help="a folder of images, or a manifest (.csv, .jsonl, .parquet)")
    p.add_argument("--out", required=True, help="JSONL output; ids already in it are skipped (resume)")
    p.add_argument("--image_root", help="folder the manifest's image paths are relative to (default: its folder)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--num_beams", type=int, help="beam search width (1 = greedy)")
    p.add_argument("--max_new_tokens", type=int, help="longest caption in tokens")
    p.add_argument("--min_new_tokens", type=int)
    p.add_argument("--prompt", help="fixed prompt text before the caption (default: the trained one)")
    p.add_argument("--do_sample", action="store_true", help="sample instead of greedy/beam search")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top_k", type=int)
    p.add_argument("--top_p", type=float)
    p.add_argument("--repetition_penalty", type=float)
    p.add_argument("--no_repeat_ngram_size", type=int)
    p.add_argument("--length_penalty", type=float, help="beam search length penalty")
    p.add_argument("--no_cache", action="store_true", help="generate without the KV cache (slower; same text)")
    p.add_argument("--seed", type=int, default=0, help="torch seed (sampling is reproducible for a given input)")
    p.add_argument("--devices", type=int, default=1, help="processes (> 1 runs DDP, one part file per rank)")
    p.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return p


GENERATION_OPTIONS = (
    "num_beams", "max_new_tokens", "min_new_tokens", "temperature", "top_k", "top_p",
    "repetition_penalty", "no_repeat_ngram_size", "length_penalty",
)  # fmt: skip


def generation_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``generate`` options given on the command line (others keep the model's settings)."""
    options: dict[str, Any] = {k: getattr(args, k) for k in GENERATION_OPTIONS if getattr(args, k) is not None}
    if args.do_sample:
        options["do_sample"] = True
    if options.get("max_new_tokens", 1) <= 0:
        raise UserError(f"--max_new_tokens must be positive, not {options['max_new_tokens']}")
    if options.get("num_beams", 1) <= 0:
        raise UserError(f"--num_beams must be positive, not {options['num_beams']}")
    if args.batch_size <= 0:
        raise UserError(f"--batch_size must be positive, not {args.batch_size}")
    return options


def load_captioner(ckpt_path: str | Path) -> tuple[ProductCaptioner, dict[str, Any]]:
    """Rebuild the captioner stored in a checkpoint (no training data needed) and its data config."""
    import lightning as L
    import yaml
    from jsonargparse import ArgumentParser

    checkpoint = load_checkpoint(ckpt_path)
    text = checkpoint.get(CONFIG_KEY)
    if text is None:
        raise UserError(f"{ckpt_path} has no stored config: was it written by `multimodal fit`?")
    stored = yaml.safe_load(text)
    model_cfg = stored.get("model") or {}
    class_path = str(model_cfg.get("class_path", ""))
    if not class_path.endswith(ProductCaptioner.__name__):
        raise UserError(f"{ckpt_path} holds a {class_path.rsplit('.', 1)[-1] or 'model'} checkpoint, not a captioner")
    p = ArgumentParser(exit_on_error=False)
    p.add_subclass_arguments(L.LightningModule, "model")
    try:
        cfg = p.parse_object({"model": model_cfg})
        model = p.instantiate_classes(cfg).model
    except Exception as err:  # noqa: BLE001 - a stored config that no longer parses is a user-facing problem
        raise UserError(f"{ckpt_path}: the stored model config cannot be rebuilt: {str(err).splitlines()[0]}") from err
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), (stored.get("data") or {}).get("init_args", {})


def _items(args: argparse.Namespace, model: ProductCaptioner, data: dict[str, Any]) -> tuple[int, Any]:
    source = Path(args.input)
    if source.is_dir():
        return folder_items(source)
    if not source.is_file():
        raise UserError(f"--input {source}: no such folder or manifest")
    columns = [*model.prompt_columns]
    root = Path(args.image_root) if args.image_root else None
    return manifest_items(source, data.get("id_column", "id"), data.get("image_column", "image"), columns, root)


def _run(rank: int, world_size: int, args: argparse.Namespace, device: Any = "cpu") -> dict[str, int]:
    model, data = load_captioner(args.ckpt_path)
    options = generation_options(args)
    total, items = _items(args, model, data)
    if args.no_cache:
        options["use_cache"] = False
    summary = run_caption_job(
        model,
        items,
        Path(args.out),
        batch_size=args.batch_size,
        generation=options,
        prompt=args.prompt,
        seed=args.seed,
        total=total,
        rank=rank,
        world_size=world_size,
        progress=not args.no_progress,
        device=device,
    )
    return vars(summary)


def _ddp(args: argparse.Namespace) -> None:
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator=args.accelerator, devices=args.devices, strategy="ddp_spawn")
    fabric.launch(_ddp_worker, args)


def _ddp_worker(fabric: Any, args: argparse.Namespace) -> None:
    summary = _run(fabric.global_rank, fabric.world_size, args, fabric.device)
    fabric.barrier()
    totals = {k: int(fabric.all_reduce(torch.tensor(v), reduce_op="sum")) for k, v in summary.items()}
    if fabric.global_rank == 0:
        merge_parts(Path(args.out))
        print(json.dumps({"out": args.out, **totals}))


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    generation_options(args)  # fail fast on bad numbers, before loading anything
    # A killed run (with any number of processes) may have left per-rank parts: fold them into --out first, in this
    # one process, so every rank of this run skips their ids and no rank reads a part another rank is writing.
    merge_parts(Path(args.out))
    if args.devices > 1:
        _ddp(args)
        return
    device = "cuda" if args.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available() else "cpu"
    summary = _run(0, 1, args, device)
    print(json.dumps({"out": args.out, **summary}), file=sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
