"""``ProductTagger``: attributes (softmax heads) and free tags (sigmoid heads) from a photo and its text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torch.nn import functional as F

from encoders.types import Features, TextEncoder, VisionEncoder
from multimodal.data.dataset import IGNORE_INDEX
from multimodal.errors import UserError
from multimodal.model_card.report import EvaluationReport, EvaluationReports, plots_drawn_for
from multimodal.tagging.decode import decode_probs
from multimodal.tagging.metrics import TaggingMetrics, save_confusion_matrices
from multimodal.tagging.ngram_head import NgramHead
from multimodal.towers import FusionFactory, MissingModality, TowerTask


class ProductTagger(TowerTask, EvaluationReports):
    """Vision encoder + text encoder + fusion block + one head per attribute and per tag column.

    The heads are sized from the data module's vocabularies (built on the training split) when the Trainer
    sets the task up, and the vocabularies are saved in every checkpoint, so ``predict --ckpt_path`` needs no
    training data.

    Args:
        vision: vision encoder.
        text: text encoder.
        fusion: fusion block factory; called as ``fusion(vision.output_dim, text.output_dim)``.
        modality_dropout: in training, the chance that a product's image (or, equally often, its text) is
            replaced by the learned "missing" stand-in, so the tagger also works with one modality.
        head_dropout: dropout before every head.
        label_smoothing: for the attribute heads.
        optimizer: optimizer factory.
        scheduler: optional LR scheduler factory.
        encoder_lr_scale: learning-rate factor for the two towers.
        tag_threshold: probability above which a tag is predicted.
        ngram_buckets: if > 0, add a :class:`NgramHead` with this many hash rows on the text's token n-grams
            to every head (wide and deep); 0 = fused heads only.
        ngram_order: longest token n-gram of that head.
        ngram_lr_scale: learning-rate factor of that head (its rows see few updates: one per product naming them).
        logit_adjustment: tau of the logit-adjusted loss (Menon et al., 2021): in the loss, each attribute head's
            logits get ``tau * log(share of the class among the training products)`` added, so the raw logits that
            predict favour the classes seen rarely, which macro-F1 weighs as much as the common ones. 0: off.
    """

    def __init__(
        self,
        vision: VisionEncoder,
        text: TextEncoder,
        fusion: FusionFactory,
        modality_dropout: float = 0.1,
        head_dropout: float = 0.1,
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        encoder_lr_scale: float = 0.1,
        tag_threshold: float = 0.5,
        ngram_buckets: int = 0,
        ngram_order: int = 2,
        ngram_lr_scale: float = 5.0,
        logit_adjustment: float = 0.0,
    ) -> None:
        super().__init__(vision, text, optimizer, scheduler, encoder_lr_scale)
        if problem := NgramHead.problem(ngram_buckets or 2, ngram_order):  # 0 buckets: the head is off
            raise UserError(
                f"model.ngram_buckets={ngram_buckets} / ngram_order={ngram_order}: 0 buckets turns the head off; "
                f"otherwise it {problem}"
            )
        if not logit_adjustment >= 0:
            raise UserError(f"model.logit_adjustment={logit_adjustment}: it must be 0 (off) or more")
        self.logit_adjustment, self.label_counts = logit_adjustment, {}
        self.fusion = fusion(vision.output_dim, text.output_dim)
        self.missing_image = MissingModality(vision.output_dim)
        self.missing_text = MissingModality(text.output_dim)
        self.modality_dropout, self.head_dropout = modality_dropout, head_dropout
        self.label_smoothing, self.tag_threshold = label_smoothing, tag_threshold
        self.vocabularies: dict[str, list[str]] = {}
        self.tag_vocabularies: dict[str, list[str]] = {}
        self.heads = nn.ModuleDict()
        self.tag_heads = nn.ModuleDict()
        self.ngram_buckets, self.ngram_order, self.ngram_lr_scale = ngram_buckets, ngram_order, ngram_lr_scale
        self.ngram_head: NgramHead | None = None
        self.metrics = nn.ModuleDict()

    # --------------------------------------------------------------------------------------------- building
    def build_heads(self, vocabularies: dict[str, list[str]], tag_vocabularies: dict[str, list[str]]) -> None:
        """Create one head per attribute / tag column (once; later calls must agree)."""
        if self.vocabularies or self.tag_vocabularies:
            if (vocabularies, tag_vocabularies) != (self.vocabularies, self.tag_vocabularies):
                raise ValueError("the task's heads were built for other label vocabularies")
            return
        self.vocabularies, self.tag_vocabularies = vocabularies, tag_vocabularies
        dim = self.fusion.output_dim
        for name, vocab in vocabularies.items():
            self.heads[name] = nn.Sequential(nn.Dropout(self.head_dropout), nn.Linear(dim, len(vocab)))
        for name, vocab in tag_vocabularies.items():
            self.tag_heads[name] = nn.Sequential(nn.Dropout(self.head_dropout), nn.Linear(dim, len(vocab)))
        if self.ngram_buckets > 0:
            sizes = {name: len(v) for name, v in vocabularies.items()}
            sizes.update({f"tags/{name}": len(v) for name, v in tag_vocabularies.items()})
            special = list(getattr(self.text.tokenizer, "all_special_ids", []))
            self.ngram_head = NgramHead(sizes, self.ngram_buckets, self.ngram_order, special)
        for stage in ("val", "test"):
            self.metrics[stage] = TaggingMetrics(vocabularies, tag_vocabularies)
        self.to(self.device)

    def lr_scales(self) -> dict[int, float]:
        scales = super().lr_scales()
        if self.ngram_head is not None:
            scales.update({id(p): self.ngram_lr_scale for p in self.ngram_head.parameters()})
        return scales

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule if self.trainer is not None else None
        if datamodule is not None and not self.heads and not self.tag_heads:
            self.build_heads(datamodule.vocabularies, datamodule.tag_vocabularies)
        if stage == "fit" and self.logit_adjustment > 0:
            scan = getattr(datamodule, "scan", None)
            if scan is None:
                raise UserError("model.logit_adjustment needs the training split's label counts, which "
                                f"{type(datamodule).__name__} does not give")  # fmt: skip
            from multimodal.data.splits import label_counts

            self.label_counts = label_counts(scan, self.vocabularies)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["vocabularies"] = self.vocabularies
        checkpoint["tag_vocabularies"] = self.tag_vocabularies
        if self.label_counts:
            checkpoint["label_counts"] = self.label_counts

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "vocabularies" not in checkpoint:
            name = type(self).__name__
            raise UserError(f"the checkpoint holds no label vocabularies: it is not a {name} checkpoint")
        super().on_load_checkpoint(checkpoint)
        self.build_heads(checkpoint["vocabularies"], checkpoint.get("tag_vocabularies", {}))
        self.label_counts = checkpoint.get("label_counts", {})

    # ---------------------------------------------------------------------------------------------- forward
    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Logits per attribute ``(B, C_a)`` and per tag column ``(B, K_c)``."""
        return self.logits_and_fused(batch)[0]

    def logits_and_fused(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], Tensor]:
        """:meth:`forward`'s logits and the fused vector ``(B, D)`` the heads read."""
        fused, has_text = self._fuse(batch)
        logits = {name: head(fused.pooled) for name, head in self.heads.items()}
        logits.update({f"tags/{name}": head(fused.pooled) for name, head in self.tag_heads.items()})
        if self.ngram_head is not None and "input_ids" in batch:
            wide = self.ngram_head(batch["input_ids"], batch["attention_mask"], has_text)
            logits = {key: value + wide[key] for key, value in logits.items()}
        return logits, fused.pooled

    def fused(self, batch: dict[str, Any]) -> Tensor:
        """The fused vector ``(B, D)`` the heads read."""
        return self._fuse(batch)[0].pooled

    def _fuse(self, batch: dict[str, Any]) -> tuple[Features, Tensor]:
        """Fused features and the ``has_text`` flags. A batch without ``pixel_values`` (or without ``input_ids``)
        is text-only (photo-only): that tower does not run and every item gets the learned stand-in."""
        if "pixel_values" not in batch or "input_ids" not in batch:
            return self._fuse_one_modality(batch)
        vision, text = self.encode(batch)
        has_image, has_text = batch["has_image"], batch["has_text"]
        if self.training and self.modality_dropout > 0:
            has_image, has_text = self._drop_modalities(has_image, has_text)
        vision = self.missing_image.fill(vision, has_image)
        text = self.missing_text.fill(text, has_text)
        return self.fusion(vision, text), has_text

    def _fuse_one_modality(self, batch: dict[str, Any]) -> tuple[Features, Tensor]:
        if "pixel_values" in batch:
            vision = self.vision.encode_photos(batch["pixel_values"], batch.get("photo_mask"))
            text = self.missing_text.absent(vision.pooled.shape[0])
        else:
            text = self.text(batch["input_ids"], batch["attention_mask"])
            vision = self.missing_image.absent(text.pooled.shape[0])
        has_text = torch.full((vision.pooled.shape[0],), "input_ids" in batch, device=vision.pooled.device)
        return self.fusion(vision, text), has_text

    def _drop_modalities(self, has_image: Tensor, has_text: Tensor) -> tuple[Tensor, Tensor]:
        """Hide the image or the text of random products; never both, never one that is already missing."""
        r = torch.rand(has_image.shape, device=has_image.device)
        drop_image = (r < self.modality_dropout / 2) & has_text
        drop_text = (r > 1 - self.modality_dropout / 2) & has_image
        return has_image & ~drop_image, has_text & ~drop_text

    def loss(self, logits: dict[str, Tensor], batch: dict[str, Any]) -> Tensor:
        """Mean over heads of cross-entropy (attributes) and masked BCE (tags); unknown labels are ignored."""
        losses = []
        for i, name in enumerate(self.heads):
            target = batch["labels"][:, i]
            if (target != IGNORE_INDEX).any():
                adjusted = logits[name] + self._log_prior(name, logits[name])
                losses.append(
                    F.cross_entropy(adjusted, target, ignore_index=IGNORE_INDEX, label_smoothing=self.label_smoothing)
                )
        for name in self.tag_heads:
            target = batch["tags"][name]
            known = (target != IGNORE_INDEX).all(dim=1)
            if known.any():
                losses.append(F.binary_cross_entropy_with_logits(logits[f"tags/{name}"][known], target[known]))
        return torch.stack(losses).mean() if losses else logits[next(iter(logits))].sum() * 0.0

    def _log_prior(self, name: str, like: Tensor) -> Tensor | float:
        """``tau * log(class share)`` of head ``name`` (0 when logit adjustment is off or no counts are known)."""
        counts = self.label_counts.get(name)
        if not self.logit_adjustment or counts is None:
            return 0.0
        shares = torch.tensor(counts, dtype=like.dtype, device=like.device).clamp(min=1)
        return self.logit_adjustment * torch.log(shares / shares.sum())

    # ------------------------------------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        if not batch["ids"]:
            return None  # every product of this batch was skipped
        loss = self.loss(self(batch), batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["ids"]))
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        if not batch["ids"]:
            return
        logits = self(batch)
        self.log(f"{stage}/loss", self.loss(logits, batch), prog_bar=True, batch_size=len(batch["ids"]), sync_dist=True)
        self.metrics[stage].update(logits, batch)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._evaluation_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._evaluation_epoch_end("test")

    def _evaluation_epoch_end(self, stage: str) -> None:
        """Log the stage's scores and keep its per-class report for the model card, which draws the plots; without
        a card (a plain Trainer), the test's confusion matrices go to the log dir."""
        metrics = self.metrics[stage]
        report = EvaluationReport(classes=metrics.class_reports())
        self.keep_report(stage, report)
        trainer = self.trainer
        if stage == "test" and trainer.is_global_zero and trainer.log_dir is not None and not plots_drawn_for(trainer):
            save_confusion_matrices(report.classes, Path(trainer.log_dir) / "confusion")
        self.log_dict(metrics.compute_and_reset(stage), sync_dist=False)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        if not batch["ids"]:
            return {"ids": [], "probs": {}}
        logits = self(batch)
        probs = {k: (v.sigmoid() if k.startswith("tags/") else v.softmax(-1)) for k, v in logits.items()}
        return {"ids": batch["ids"], "probs": probs}

    # ------------------------------------------------------------------------------------------------ decode
    @property
    def fused_dim(self) -> int:
        """Width of the fused vector the heads read."""
        return int(self.fusion.output_dim)

    def decode(self, probs: dict[str, Tensor], top_k: int = 1) -> list[dict[str, Any]]:
        """Per-product label names and scores of head probabilities (:func:`decode_probs`)."""
        return decode_probs(probs, self.vocabularies, self.tag_vocabularies, self.tag_threshold, top_k)
