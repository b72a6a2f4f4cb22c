"""Prediction writers: stream per-product results to JSONL or CSV while ``predict`` runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from multimodal.errors import UserError


class TaggingWriter(BasePredictionWriter):
    """Writes one line per product (id, predicted label and score per attribute, tags) as batches finish.

    Under DDP every rank writes ``<stem>.rank<R><suffix>`` and rank 0 merges the parts into ``output``, each id
    once, in id order of first appearance.

    Args:
        output: ``.jsonl`` or ``.csv`` path; default ``predictions.jsonl`` in the trainer's log dir.
        top_k: also write the top-k labels with scores per attribute (JSONL only).
    """

    def __init__(self, output: str | None = None, top_k: int = 1) -> None:
        super().__init__(write_interval="batch")
        self.output = Path(output) if output else Path("predictions.jsonl")
        self._default_location = output is None
        if self.output.suffix not in (".jsonl", ".csv"):
            raise UserError(f"prediction output must end in .jsonl or .csv, not '{self.output.name}'")
        self.top_k = top_k
        self._file: Any = None
        self._csv: csv.DictWriter | None = None

    def _part(self, trainer: L.Trainer) -> Path:
        return self.output if trainer.world_size == 1 else self._part_for(trainer.global_rank)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._default_location and trainer.log_dir is not None:
            self.output = Path(trainer.log_dir) / "predictions.jsonl"
        part = self._part(trainer)
        part.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(part, "w", newline="")
        self._csv = None

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if not prediction["ids"]:
            return
        rows = pl_module.decode(prediction["probs"], top_k=self.top_k if self.output.suffix == ".jsonl" else 1)
        for item_id, row in zip(prediction["ids"], rows, strict=True):
            self._write({"id": item_id, **row})
        self._file.flush()

    def _write(self, row: dict[str, Any]) -> None:
        if self.output.suffix == ".jsonl":
            self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
            return
        flat = {k: "|".join(v) if isinstance(v, list) else v for k, v in row.items()}
        if self._csv is None:
            self._csv = csv.DictWriter(self._file, fieldnames=list(flat))
            self._csv.writeheader()
        self._csv.writerow(flat)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._file.close()
        if trainer.world_size == 1:
            print(f"predictions written to {self.output}")
            return
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            merge_parts([self._part_for(r) for r in range(trainer.world_size)], self.output)
            print(f"predictions written to {self.output}")
        trainer.strategy.barrier()

    def _part_for(self, rank: int) -> Path:
        return self.output.with_name(f"{self.output.stem}.rank{rank}{self.output.suffix}")


def merge_parts(parts: list[Path], output: Path) -> None:
    """Concatenate per-rank files into ``output`` keeping the first line of every id; remove the parts."""
    seen: set[str] = set()
    header: str | None = None
    with open(output, "w", newline="") as out:
        for part in parts:
            with open(part, newline="") as f:
                lines = f.read().splitlines()
            if output.suffix == ".csv" and lines:
                if header is None:
                    header = lines[0]
                    out.write(header + "\n")
                lines = lines[1:]
            for line in lines:
                item_id = json.loads(line)["id"] if output.suffix == ".jsonl" else next(csv.reader([line]))[0]
                if item_id not in seen:
                    seen.add(item_id)
                    out.write(line + "\n")
            part.unlink()
