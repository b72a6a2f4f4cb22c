"""The Lightning loop of a captioner: setup and checkpoint state (the token ids of the training targets, the
caption memory, the self-critical reward), training (teacher forcing, or self-critical from its epoch), validation and
test (loss, generated captions, BLEU-4 and CIDEr), and predict (with the options each batch carries).

:class:`CaptionSteps` holds the loop's hooks only; :class:`~multimodal.captioning.captioner.ProductCaptioner`
holds the model they drive (towers, conditioning, logits, generation) and inherits them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from multimodal.captioning import vocabulary
from multimodal.captioning.asking import with_questions
from multimodal.captioning.consensus import CiderConsensus
from multimodal.captioning.generation import call_options, generate_captions
from multimodal.captioning.retrieval import CaptionMemory, build_memory
from multimodal.errors import UserError

if TYPE_CHECKING:
    from multimodal.captioning.captioner import ProductCaptioner


class CaptionSteps(L.LightningModule):
    """Training, evaluation and predict hooks of :class:`~multimodal.captioning.captioner.ProductCaptioner`."""

    # ------------------------------------------------------------------------------------------------ fit
    def setup(self: ProductCaptioner, stage: str) -> None:
        columns = getattr(self.trainer.datamodule, "text_columns", None) if self.trainer is not None else None
        if columns is None:
            return
        needed = [*self.prompt_columns] + ([self.target_column] if stage in ("fit", "validate", "test") else [])
        needed += self.questions.columns if self.questions is not None and stage == "fit" else []
        missing = [c for c in needed if c not in columns]
        if missing:
            raise UserError(f"model.target_column/prompt_columns/questions {missing} are not in data.text_columns "
                            f"{columns}")  # fmt: skip
        records = (getattr(self.trainer.datamodule, "splits", None) or {}).get("train")
        if stage == "fit" and self.caption_token_ids is None and records is not None:
            answered = [self.target_column, *(self.questions.templates if self.questions is not None else [])]
            self.caption_token_ids = self.target_token_ids([r.texts.get(c) for r in records for c in answered])
            vocab = self.lm.get_output_layer().weight.shape[0]
            rank_zero_info(f"captioning: the training targets use {len(self.caption_token_ids)} of {vocab} token ids")
        if stage == "fit" and self.self_critical is not None and records is not None:
            self.reward = CiderConsensus([t for r in records if (t := r.texts.get(self.target_column))])

    def on_save_checkpoint(self: ProductCaptioner, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # the towers' pretrained reference (TowerTask)
        if self.caption_token_ids is not None:
            checkpoint["caption_token_ids"] = self.caption_token_ids.cpu()
        if self.memory is not None:
            checkpoint["caption_memory"] = self.memory.state()

    def on_load_checkpoint(self: ProductCaptioner, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if checkpoint.get("caption_memory") is not None:
            self.memory = CaptionMemory.from_state(checkpoint["caption_memory"])
        ids = checkpoint.get("caption_token_ids")  # absent in checkpoints written before vocabulary trimming
        if ids is not None:
            self.caption_token_ids = vocabulary.checked_token_ids(ids, self.lm.get_output_layer().weight.shape[0])

    def _ensure_memory(self: ProductCaptioner) -> None:
        """Build the caption memory from the training split when retrieval or reranking needs one (once)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        wanted = self.retrieval is not None or self.rerank is not None
        if wanted and self.memory is None and datamodule is not None:
            self.memory = build_memory(self.vision, datamodule.loader("train", train=False), self.device)

    def on_fit_start(self: ProductCaptioner) -> None:
        self._ensure_memory()

    def on_validation_start(self: ProductCaptioner) -> None:
        self._ensure_memory()

    def on_test_start(self: ProductCaptioner) -> None:
        self._ensure_memory()

    def on_before_optimizer_step(self: ProductCaptioner, optimizer: torch.optim.Optimizer) -> None:
        self.hold_language_model(self.global_step)

    def on_train_epoch_start(self: ProductCaptioner) -> None:
        if self.self_critical_on(self.current_epoch):
            if self.reward is None:
                raise UserError("model.self_critical: no training target texts to reward the samples against")
            optimizers = self.optimizers(use_pl_optimizer=False)
            schedulers = [config.scheduler for config in self.trainer.lr_scheduler_configs]
            for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
                self.start_self_critical(optimizer, schedulers)

    def training_step(self: ProductCaptioner, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        if not batch["ids"]:
            return None
        vision = self.encode_images(batch["pixel_values"], batch.get("has_image"), batch.get("photo_mask"))
        batch = self.with_neighbours(batch, vision)
        if self.self_critical_on(self.current_epoch):
            loss, reward = self.self_critical_loss(vision, batch)
            self.log("train/reward", reward, prog_bar=True, batch_size=len(batch["ids"]))
        else:
            batch, vision = with_questions(self, batch, vision)  # unchanged without model.questions
            ids = self.drop_words(batch["input_ids"], batch["caption_labels"])  # unchanged without word dropout
            loss = self.loss(self.logits(vision, ids, batch["attention_mask"]), batch["caption_labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["ids"]))
        return loss

    # ----------------------------------------------------------------------------------------- evaluation
    def _eval_step(self: ProductCaptioner, batch: dict[str, Any], stage: str) -> None:
        if not batch["ids"]:
            return
        n = len(batch["ids"])
        vision = self.encode_images(batch["pixel_values"], batch.get("has_image"), batch.get("photo_mask"))
        batch = self.with_neighbours(batch, vision)
        self.log(
            f"{stage}/loss",
            self.loss(self.logits(vision, batch["input_ids"], batch["attention_mask"]), batch["caption_labels"]),
            prog_bar=True,
            batch_size=n,
            sync_dist=True,
        )
        options = call_options(self.generation, {"exclude": batch["ids"], "has_image": batch.get("has_image")})
        captions = generate_captions(self, vision, batch["prompt_ids"], batch["prompt_mask"], **options)
        self.evaluation.add(stage, captions.texts, batch["references"])

    def validation_step(self: ProductCaptioner, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self: ProductCaptioner, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _epoch_end(self: ProductCaptioner, stage: str) -> None:
        finished = self.evaluation.finish(stage, self.log_examples)
        if finished is None:
            return
        scores, examples = finished
        self.log_dict({f"{stage}/{k}": v for k, v in scores.items()}, prog_bar=stage == "val")
        for pred, ref in examples:
            rank_zero_info(f"{stage} example: generated {pred!r}, reference {ref!r}")

    def on_validation_epoch_end(self: ProductCaptioner) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self: ProductCaptioner) -> None:
        self._epoch_end("test")

    # -------------------------------------------------------------------------------------------- predict
    def predict_step(self: ProductCaptioner, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Captions of a batch with the ``generation`` options and ``seed`` the batch carries (put there by the
        caller's collate: :class:`~multimodal.captioning.predictor.CaptionCollate`; none: the model's settings and
        seed 0). With input ``positions`` (batch jobs, the Python API) the torch seed is ``seed`` + the first
        item's position: with the same batch size, sampling gives an item the same caption whatever the number of
        processes or a resume."""
        if not batch["ids"]:
            return {"ids": [], "captions": [], "scores": []}
        if batch.get("positions"):
            torch.manual_seed(int(batch.get("seed", 0)) + batch["positions"][0])
        captions = self.caption_batch(batch, **batch.get("generation", {}))
        return {"ids": batch["ids"], "captions": captions.texts, "scores": captions.scores}
