"""Batch caption generation: stream a folder or a manifest, write JSONL as it goes, resume after a kill.

Every input item ends as exactly one line ``{"id", "image", "caption", "score"}`` or ``{"id", "image", "error"}``.
A re-run with the same ``out`` skips the ids already written (a line cut short by a kill is dropped first), so
each id is written once. Under DDP each rank writes ``<out stem>.part<R>.jsonl`` for every ``world_size``-th item
and rank 0 merges the parts into ``out`` at the end.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from multimodal.errors import BadSampleError, UserError
from multimodal.images import load_image, resolve_image_path
from multimodal.manifest import clean_value, read_manifest
from multimodal.tasks.captioning import ProductCaptioner

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass
class CaptionItem:
    """One image to caption: its id, the image as given (path text), the file, and known text fields."""

    id: str
    image: str | None
    path: Path | None
    texts: dict[str, str | None] = field(default_factory=dict)


@dataclass
class JobSummary:
    """Counts of one run: lines written, of which errors, ids already done (resume) and duplicate ids skipped."""

    written: int = 0
    errors: int = 0
    resumed: int = 0
    duplicates: int = 0


# ------------------------------------------------------------------------------------------------ inputs
def folder_items(folder: Path) -> tuple[int, Iterator[CaptionItem]]:
    """Image files under ``folder`` (recursively, sorted); id = path relative to the folder without suffix."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
    if not files:
        raise UserError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {folder}")
    items = (
        CaptionItem(id=p.relative_to(folder).with_suffix("").as_posix(), image=p.relative_to(folder).as_posix(), path=p)
        for p in files
    )
    return len(files), items


def manifest_items(
    manifest: Path, id_column: str, image_column: str, text_columns: Sequence[str], image_root: Path | None
) -> tuple[int, Iterator[CaptionItem]]:
    """Rows of a CSV / JSONL / Parquet manifest; text columns the manifest lacks are treated as unknown."""
    df = read_manifest(manifest, [id_column, image_column])
    root = image_root or manifest.parent
    present = [c for c in text_columns if c in df.columns]

    def rows() -> Iterator[CaptionItem]:
        for row, rec in enumerate(df.to_dict("records")):
            item_id, image = clean_value(rec[id_column]), clean_value(rec[image_column])
            texts = {c: clean_value(rec[c]) if c in present else None for c in text_columns}
            path = None
            if image is not None:
                try:
                    path = resolve_image_path(root, image)
                except BadSampleError:
                    path = None
            yield CaptionItem(id=item_id if item_id is not None else f"row{row}", image=image, path=path, texts=texts)

    return len(df), rows()


# ------------------------------------------------------------------------------------------------ output
def read_done(path: Path) -> set[str]:
    """Ids already written to ``path``; a trailing line cut short by a kill is removed from the file."""
    if not path.is_file():
        return set()
    done: set[str] = set()
    keep = 0
    with path.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                done.add(str(json.loads(raw)["id"]))
            except (ValueError, KeyError):
                break
            keep += len(raw)
    if keep != path.stat().st_size:
        with path.open("r+b") as f:
            f.truncate(keep)
    return done


def part_path(out: Path, rank: int) -> Path:
    return out.with_name(f"{out.stem}.part{rank}{out.suffix}")


def rank_parts(out: Path) -> list[Path]:
    """The part files next to ``out`` (whatever number of processes wrote them), in rank order."""
    ranks = []
    for part in out.parent.glob(f"{out.stem}.part*{out.suffix}"):
        rank = part.name.removeprefix(f"{out.stem}.part").removesuffix(out.suffix)
        if rank.isdigit():
            ranks.append((int(rank), part))
    return [part for _, part in sorted(ranks)]


def merge_parts(out: Path) -> None:
    """Append every rank's part to ``out`` (ids not yet there, in rank order) and delete the parts.

    Used at the end of a multi-process job and before any job starts, for the parts a killed run left behind.
    """
    parts = rank_parts(out)
    if not parts:
        return
    done = read_done(out)
    with out.open("a") as f:
        for part in parts:
            read_done(part)  # drop a cut-short last line
            for line in part.read_text().splitlines():
                item_id = str(json.loads(line)["id"])
                if item_id not in done:
                    f.write(line + "\n")
                    done.add(item_id)
            f.flush()
            os.fsync(f.fileno())
            part.unlink()


# ----------------------------------------------------------------------------------------------- running
def run_caption_job(
    model: ProductCaptioner,
    items: Iterable[CaptionItem],
    out: Path,
    batch_size: int = 32,
    generation: dict[str, Any] | None = None,
    prompt: str | None = None,
    seed: int = 0,
    total: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    device: torch.device | str = "cpu",
) -> JobSummary:
    """Caption ``items`` in batches and append one JSONL line per item to ``out`` (or this rank's part).

    Args:
        model: a trained captioner (eval mode is set here).
        items: streamed once; only one batch of images is held in memory.
        out: the JSONL file; ids already in it (or in this rank's part) are skipped. Parts an earlier, killed
            run left behind must be merged into ``out`` first (:func:`merge_parts`, which the ``caption``
            command does before it starts any process).
        batch_size: images per ``generate`` call.
        generation: ``generate`` options overriding the model's (``num_beams``, ``do_sample``...).
        prompt: fixed prompt text instead of the trained one.
        seed: torch seed set before every batch (``seed + batch number``), so sampling is reproducible.
        total: number of items, for the progress bar.
        rank: this process's rank; it captions items ``rank, rank + world_size, ...``.
        world_size: number of processes.
        progress: show a progress bar.
        device: where the model runs.
    """
    if batch_size <= 0:
        raise UserError(f"batch_size must be positive, not {batch_size}")
    options = {**model.generation, **(generation or {})}
    if int(options.get("max_new_tokens", 1)) <= 0:
        raise UserError(f"max_new_tokens must be positive, not {options['max_new_tokens']}")
    if int(options.get("num_return_sequences", 1)) != 1:
        raise UserError("num_return_sequences must be 1 for a caption job (one caption per id)")
    model.eval().to(device)
    target = out if world_size == 1 else part_path(out, rank)
    done = read_done(out) | (read_done(target) if target != out else set())
    transform, text_fn = model.image_transform(False), model.text_fn(prompt)
    summary, seen = JobSummary(), set[str]()
    target.parent.mkdir(parents=True, exist_ok=True)
    mine = islice(items, rank, None, world_size) if world_size > 1 else iter(items)
    bar = tqdm(total=total // world_size if total else None, disable=not progress, unit="img", desc="caption")
    with target.open("a") as f:
        for number, batch in enumerate(_batches(mine, batch_size)):
            lines = _caption_batch(
                model, batch, done, seen, summary, transform, text_fn, options, seed + number, device
            )
            for line in lines:
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(batch))
    bar.close()
    return summary


def _batches(items: Iterator[CaptionItem], size: int) -> Iterator[list[CaptionItem]]:
    while batch := list(islice(items, size)):
        yield batch


def _caption_batch(
    model: ProductCaptioner,
    batch: list[CaptionItem],
    done: set[str],
    seen: set[str],
    summary: JobSummary,
    transform: Any,
    text_fn: Any,
    options: dict[str, Any],
    seed: int,
    device: torch.device | str,
) -> list[dict[str, Any]]:
    """Decode the images of one batch, caption the readable ones; one output line per new id, in input order.

    ``done`` holds ids written by earlier runs, ``seen`` the ids of this run.
    """
    lines: dict[int, dict[str, Any]] = {}
    ok: list[tuple[int, CaptionItem, torch.Tensor]] = []
    for i, item in enumerate(batch):
        if item.id in done:
            summary.resumed += 1
            continue
        if item.id in seen:  # a duplicate id in the input is skipped, never written twice
            summary.duplicates += 1
            continue
        seen.add(item.id)
        try:
            if item.path is None:
                raise BadSampleError(f"no usable image path ('{item.image}')")
            ok.append((i, item, transform(load_image(item.path))))
        except BadSampleError as err:
            lines[i] = {"id": item.id, "image": item.image, "error": str(err)}
            summary.errors += 1
    if ok:
        texts = {c: [it.texts.get(c) for _, it, _ in ok] for c in ok[0][1].texts} or {
            model.target_column: [None] * len(ok)
        }
        enc = text_fn(texts)
        torch.manual_seed(seed)
        captions = model.generate(
            torch.stack([px for _, _, px in ok]).to(device),
            enc["prompt_ids"].to(device),
            enc["prompt_mask"].to(device),
            **options,
        )
        for (i, item, _), text, score in zip(ok, captions.texts, captions.scores, strict=True):
            lines[i] = {"id": item.id, "image": item.image, "caption": text, "score": score}
    summary.written += len(lines)
    return [lines[i] for i in sorted(lines)]
