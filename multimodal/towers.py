"""What every task shares: a vision tower, a text tower, their preprocessing and the optimizer set-up."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from encoders.types import Features, ImageTransform, TextEncoder, VisionEncoder
from fusion.base import FusionBlock
from multimodal.data.dataset import TextFn
from multimodal.onnx.preprocess import join_texts
from multimodal.onnx.preprocess_export import SEPARATOR

FusionFactory = Callable[[int, int], FusionBlock]


class JoinedText:
    """Text function for the collate: joins a product's text columns and tokenizes them (picklable).

    Every column the data configures is read, in its order, with ``separator`` where one ends: the text tower and
    a tagger's n-gram head read the same tokens. The join is the torch-free runtime's own
    (:func:`multimodal.onnx.preprocess.join_texts`), so an export joins the columns the same way.

    Args:
        tokenizer: Hugging Face tokenizer.
        max_length: tokens kept of the joined text (a later column past it is cut).
        separator: put between columns; a missing value is left out with its separator.
    """

    def __init__(self, tokenizer: Any, max_length: int, separator: str = SEPARATOR) -> None:
        self.tokenizer, self.max_length, self.separator = tokenizer, max_length, separator

    def __call__(self, texts: dict[str, list[str | None]]) -> dict[str, Tensor]:
        joined = join_texts(texts, None, self.separator)
        enc = self.tokenizer(joined, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


class MissingModality(nn.Module):
    """A learned stand-in for an absent image or text: one token of width ``dim``, which is also its pooled vector.

    One parameter serves both, so it is in the graph whether the fusion reads tokens or pooled vectors
    (DDP fails on parameters that never get a gradient).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, dim))

    def fill(self, features: Features, present: Tensor) -> Features:
        """Replace the features of items where ``present (B,)`` is False."""
        mask = torch.ones(1, 1, dtype=torch.bool, device=present.device)
        return features.select(present, Features(self.token, mask, self.token[:, 0]))

    def absent(self, batch: int) -> Features:
        """The stand-in's features for ``batch`` items that all lack this modality."""
        mask = torch.ones(batch, 1, dtype=torch.bool, device=self.token.device)
        return Features(self.token.expand(batch, -1, -1), mask, self.token[:, 0].expand(batch, -1))


class TowerTask(L.LightningModule):
    """Base for tasks built on a vision encoder and a text encoder.

    Args:
        vision: the vision encoder.
        text: the text encoder.
        optimizer: optimizer factory over parameter groups (``class_path`` in YAML).
        scheduler: optional LR scheduler factory.
        encoder_lr_scale: the towers train at this fraction of the optimizer's learning rate; the new layers at
            the full rate (pretrained towers need gentler steps).
    """

    def __init__(
        self,
        vision: VisionEncoder,
        text: TextEncoder,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        encoder_lr_scale: float = 0.1,
    ) -> None:
        super().__init__()
        self.vision, self.text = vision, text
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.encoder_lr_scale = encoder_lr_scale

    # Preprocessing the data module asks for.
    def image_transform(self, train: bool) -> ImageTransform:
        return self.vision.image_transform(train)

    def text_fn(self) -> TextFn:
        return JoinedText(self.text.tokenizer, self.text.max_length)

    def encode(self, batch: dict[str, Any]) -> tuple[Features, Features]:
        """Run both towers on a batch."""
        return self.vision.encode_photos(batch["pixel_values"], batch.get("photo_mask")), self.text(
            batch["input_ids"], batch["attention_mask"]
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Frozen pretrained tower weights leave the checkpoint for a checked reference (tasks call this first)."""
        from multimodal.pretrained_reference import drop_pretrained

        drop_pretrained(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Put back the frozen pretrained weights a checkpoint refers to, from this model's own towers, once
        their SHA-256 matches (Lightning resume, validate, test; :func:`multimodal.loading.load` names the file)."""
        from multimodal.pretrained_reference import restore_pretrained

        trainer = self._trainer
        where = str(trainer.ckpt_path) if trainer is not None and trainer.ckpt_path else "the checkpoint"
        restore_pretrained(self, checkpoint, where)

    def lr_scales(self) -> dict[int, float]:
        """Learning-rate factor per parameter (by ``id``) for parameters not at the optimizer's rate: the towers at
        ``encoder_lr_scale``, except peft adapters, which start from nothing as new layers do (full rate). Tasks
        add their own."""
        from encoders.adapters import adapter_parameters

        adapters = {id(p) for tower in (self.vision, self.text) for p in adapter_parameters(tower)}
        towers = [*self.vision.parameters(), *self.text.parameters()]
        return {id(p): self.encoder_lr_scale for p in towers if id(p) not in adapters}

    def configure_optimizers(self) -> Any:
        scales = self.lr_scales()
        by_scale: dict[float, list[nn.Parameter]] = {1.0: []}  # the optimizer's own rate first
        for p in self.parameters():
            if p.requires_grad:
                by_scale.setdefault(scales.get(id(p), 1.0), []).append(p)
        groups = [{"params": params, "lr_scale": scale} for scale, params in by_scale.items() if params]
        optimizer = self.optimizer_factory(groups)
        for group in optimizer.param_groups:
            group["lr"] *= group["lr_scale"]
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"},
        }
