"""What each Ray actor of ``--engine ray`` holds (:mod:`multimodal.ray_job`): the batch job, built once from the
command line, and a method that predicts whole blocks of it and writes each through the job's sink."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np


class BlockWorker:
    """One actor's share of a batch job: ``map_batches`` hands it block numbers; it writes those blocks.

    Args:
        cwd: the driver's working directory (relative paths on the command line are relative to it).
        command: ``predict``, ``export`` or ``caption``.
        argv: the command's arguments, as given to the driver.
    """

    def __init__(self, cwd: str, command: str, argv: list[str]) -> None:
        from multimodal.predict_args import parser
        from multimodal.predict_cli import build
        from multimodal.task import resolve
        from multimodal.writers import job_blocks

        if Path(cwd).is_dir():
            os.chdir(cwd)
        args = parser(command).parse_args(argv)
        parts: dict[str, Any] = {}

        def capture(job: Any, predictor: Any, dataset: Any, sink: Any, spec: Any, record_fields: Any) -> None:
            parts.update(job=job, predictor=predictor, dataset=dataset, sink=sink, spec=spec, fields=record_fields)
            # None, as a DDP rank other than 0 returns: the task's job stops there and writes nothing

        task, job = build(args, command, argv, capture)
        resolve(task.job)(job)  # builds the predictor, dataset and sink the driver's job has, through `capture`
        self.predictor, self.dataset, self.sink = parts["predictor"], parts["dataset"], parts["sink"]
        self.fields, self.options = parts["fields"], parts["job"].options
        self.blocks, _ = job_blocks(self.dataset, parts["spec"], self.options)
        self.on_gpu()

    def on_gpu(self) -> None:
        """The model on this actor's GPU when Ray gave it one (``--actor_gpus``)."""
        import ray
        import torch

        if ray.get_gpu_ids() and torch.cuda.is_available():
            self.predictor.model = self.predictor.model.to("cuda")
            self.predictor.device = torch.device("cuda")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Predict and write the blocks of ``batch``; their numbers and row counts back to the driver."""
        rows = []
        for block in batch["block"]:
            out = self.predict(int(block))
            self.sink.write_block(int(block), out)
            rows.append(len(out))
        return {"block": np.asarray(batch["block"]), "rows": np.asarray(rows)}

    def predict(self, block: int) -> list[dict[str, Any]]:
        """The rows of one block, as the Lightning engine's writer gives them to the sink."""
        import torch
        from torch.utils.data import DataLoader, Subset

        from multimodal.rows import block_rows, positioned_rows

        p = self.predictor
        loader = DataLoader(
            Subset(self.dataset, self.blocks.positions(block)),
            batch_size=self.options.batch_size,
            shuffle=False,
            num_workers=self.options.num_workers,
            collate_fn=p.collate(),
        )
        rows: list[tuple[int, dict[str, Any]]] = []
        with torch.inference_mode():
            for i, batch in enumerate(loader):
                skipped = batch.pop("skipped", [])
                prediction = p.model.predict_step(p.on_device(batch), i) if batch["ids"] else {"ids": []}
                rows += positioned_rows(prediction, batch["positions"], skipped, p.rows, batch.get("skipped_photos"))
        return block_rows(rows, self.dataset.records, self.fields)
