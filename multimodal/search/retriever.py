"""``ProductRetriever``: image and text towers projected to one space, trained with symmetric InfoNCE.

A *query* is text (e.g. a product name) or a photo; a *product vector* is, by config, the product's image, its text, or
its image and text fused by any fusion block. An optional re-ranker (fusion block + image-text-matching head,
trained with in-batch hard negatives as in ALBEF / BLIP) reorders the top N of a search.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torch.nn import functional as F

from encoders.types import Features, TextEncoder, VisionEncoder
from multimodal.errors import UserError
from multimodal.model_card.report import EvaluationReports
from multimodal.resume import EpochShuffle
from multimodal.search.aligned import align_projections
from multimodal.search.hard_negatives import HardNegatives, HardNegativesConfig
from multimodal.search.losses import contrastive, matryoshka_loss, matryoshka_widths, shared_attribute_positives
from multimodal.search.losses import info_nce as info_nce  # re-exported: its callers import it from here
from multimodal.search.matching import itm_loss
from multimodal.search.query_text import QueryAndProductText
from multimodal.search.query_views import QueryViews, QueryViewsConfig, ViewedQueryText
from multimodal.search.recall_curve import recall_evaluation
from multimodal.towers import FusionFactory, MissingModality, TowerTask

ProductKind = Literal["image", "text", "fused"]


class ProductRetriever(TowerTask, EvaluationReports):
    """Dual encoder for product search, with optional fused product vectors and an optional re-ranker.

    Args:
        vision: vision encoder.
        text: text encoder (shared by queries and product text).
        embed_dim: width ``E`` of the shared space.
        product: what a product vector is: ``image``, ``text`` or ``fused`` (image + product text by ``fusion``).
        fusion: fusion block factory, required for ``fused``; called as ``fusion(Dv, Dt)``.
        query_columns: text columns that form a query (default: all the data's text columns).
        product_columns: text columns of the product side (``text``/``fused``; default: the query columns).
        image_loss_weight: for ``text``/``fused`` products, weight of an extra image-query loss that keeps photo
            queries in the same space (search by photo).
        init_temperature: initial softmax temperature (learnable unless ``learn_temperature`` is False).
        learn_temperature: learn the temperature (clamped to 1/100).
        reranker: optional fusion block factory for the image-text-matching re-ranker.
        rerank_loss_weight: weight of the re-ranker's loss.
        product_dropout: in training with ``fused`` products, chance that a product's text is replaced by the
            learned "missing" stand-in, so a photo alone also gives a useful product vector.
        text_skip: with ``fused`` products, the product text's pooled vector, through the query projection, is added
            to the fused vector, so a query that names the product's attribute values matches them as the text
            tower itself would (a pretrained sentence encoder's similarity survives the fusion's training).
        query_views: in training, queries may be query-like views of the product (a few of its query words, or a
            phrase of its attribute values): :class:`multimodal.search.query_views.QueryViewsConfig`. Off: None.
        multi_positive: in training, every product with the attribute values a view states is a positive of it
            (multi-positive InfoNCE); needs ``query_views.attribute_columns``.
        matryoshka_dims: widths ``k < embed_dim`` whose L2-renormalised prefixes also get the contrastive loss
            (their mean, logged as ``matryoshka``, is added to the full-width loss), so ``k`` dimensions work alone.
        hard_negatives: ``{same: <column>, differ: <column>}``: training batches gather look-alike products (same
            ``same`` value, another ``differ`` value, and the reverse); one process only. Off: None.
        optimizer: optimizer factory.
        scheduler: optional LR scheduler factory.
        encoder_lr_scale: learning-rate factor for the towers.
    """

    def __init__(
        self,
        vision: VisionEncoder,
        text: TextEncoder,
        embed_dim: int = 256,
        product: ProductKind = "image",
        fusion: FusionFactory | None = None,
        query_columns: list[str] | None = None,
        product_columns: list[str] | None = None,
        image_loss_weight: float = 0.5,
        init_temperature: float = 0.07,
        learn_temperature: bool = True,
        reranker: FusionFactory | None = None,
        rerank_loss_weight: float = 1.0,
        product_dropout: float = 0.0,
        text_skip: bool = False,
        query_views: QueryViewsConfig | None = None,
        multi_positive: bool = False,
        matryoshka_dims: list[int] | None = None,
        hard_negatives: HardNegativesConfig | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        encoder_lr_scale: float = 0.1,
    ) -> None:
        super().__init__(vision, text, optimizer, scheduler, encoder_lr_scale)
        if product not in ("image", "text", "fused"):
            raise UserError(f"model.product must be image, text or fused, not '{product}'")
        if product == "fused" and fusion is None:
            raise UserError("model.product 'fused' needs model.fusion (a fusion block)")
        self.product, self.embed_dim = product, embed_dim
        self.query_columns = list(query_columns) if query_columns else None
        self.product_columns = list(product_columns) if product_columns else self.query_columns
        self.image_loss_weight, self.rerank_loss_weight = image_loss_weight, rerank_loss_weight
        if text_skip and product != "fused":
            raise UserError(f"model.text_skip needs fused product vectors (model.product: fused), not '{product}'")
        self.product_dropout, self.text_skip = product_dropout, text_skip
        self._set_levers(query_views, multi_positive, matryoshka_dims, hard_negatives)
        self.text_proj = nn.Linear(text.output_dim, embed_dim, bias=False)
        self.image_proj = nn.Linear(vision.output_dim, embed_dim, bias=False)
        self.fusion = fusion(vision.output_dim, text.output_dim) if product == "fused" and fusion is not None else None
        self.product_proj = (
            nn.Linear(self.fusion.output_dim, embed_dim, bias=False) if self.fusion is not None else None
        )
        self.missing_text = MissingModality(text.output_dim) if self.fusion is not None else None
        scale = torch.tensor(1.0 / init_temperature).log()
        self.logit_scale = nn.Parameter(scale, requires_grad=learn_temperature)
        self.reranker = reranker(vision.output_dim, text.output_dim) if reranker is not None else None
        self.itm_head = nn.Linear(self.reranker.output_dim, 1) if self.reranker is not None else None
        self._val: dict[str, list[Tensor]] = {"q": [], "p": []}
        align_projections(self)  # a pretrained pair (CLIP, SigLIP) starts as its own space

    def _set_levers(
        self,
        query_views: QueryViewsConfig | None,
        multi_positive: bool,
        matryoshka_dims: list[int] | None,
        hard_negatives: HardNegativesConfig | None,
    ) -> None:
        """The training levers' settings, checked (one-line errors)."""
        self.query_views = QueryViews.parse(query_views) if query_views is not None else None
        self.multi_positive = multi_positive
        self.matryoshka_dims = matryoshka_widths(matryoshka_dims, self.embed_dim)
        if multi_positive and (self.query_views is None or not self.query_views.attribute_columns):
            raise UserError("model.multi_positive needs model.query_views.attribute_columns")
        self.hard_negatives = HardNegatives.parse(hard_negatives) if hard_negatives is not None else None

    # ------------------------------------------------------------------------------------------ preprocessing
    def text_fn(self) -> QueryAndProductText:
        """The text function; in training mode with ``query_views``, one that also draws a view per item."""
        args = (self.text.tokenizer, self.text.max_length, self.query_columns, self.product_columns)
        if self.training and self.query_views is not None:
            return ViewedQueryText(*args, views=self.query_views)
        return QueryAndProductText(*args)

    def training_order(self, dataset: Any, seed: int, batch_size: int) -> EpochShuffle | None:
        """Batches of look-alike products (``hard_negatives``) over ``dataset.records``; None: the plain shuffle."""
        return None if self.hard_negatives is None else self.hard_negatives.order(dataset.records, seed, batch_size)

    # ------------------------------------------------------------------------------------------- embeddings
    def embed_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Query vectors ``(B, E)``, L2-normalised, from token ids ``(B, T)``."""
        return F.normalize(self.text_proj(self.text(input_ids, attention_mask).pooled), dim=-1)

    def embed_image(self, pixel_values: Tensor) -> Tensor:
        """Photo-query vectors ``(B, E)``, L2-normalised, from ``(B, 3, H, W)`` pixels."""
        return F.normalize(self.image_proj(self.vision(pixel_values).pooled), dim=-1)

    def embed_products(self, batch: dict[str, Any]) -> Tensor:
        """Product vectors ``(B, E)``, L2-normalised, as configured by ``product``."""
        vision = (
            self.vision.encode_photos(batch["pixel_values"], batch.get("photo_mask"))
            if self.product != "text"
            else None
        )
        text = self.text(*_product_tokens(batch)) if self.product != "image" else None
        return self._product_vectors(vision, text, batch.get("has_text"))

    def _product_vectors(self, vision: Features | None, text: Features | None, has_text: Tensor | None) -> Tensor:
        if self.product == "image":
            assert vision is not None
            return F.normalize(self.image_proj(vision.pooled), dim=-1)
        assert text is not None
        if self.product == "text":
            return F.normalize(self.text_proj(text.pooled), dim=-1)
        assert (
            vision is not None
            and self.fusion is not None
            and self.product_proj is not None
            and self.missing_text is not None
        )
        if has_text is not None:
            text = self.missing_text.fill(text, has_text)
        fused = F.normalize(self.product_proj(self.fusion(vision, text).pooled), dim=-1)
        if self.text_skip:  # the text's own direction in the query space, beside what the fusion adds
            fused = F.normalize(fused + F.normalize(self.text_proj(text.pooled), dim=-1), dim=-1)
        return fused

    def match_scores(self, vision: Features, text: Features) -> Tensor:
        """Re-ranker logits ``(B,)`` for pairs of image features and text features."""
        if self.reranker is None or self.itm_head is None:
            raise UserError("this checkpoint was trained without a re-ranker (model.reranker)")
        return self.itm_head(self.reranker(vision, text).pooled).squeeze(-1)

    # ----------------------------------------------------------------------------------------------- losses
    def _gather(self, x: Tensor, grads: bool = True) -> Tensor:
        """All rows of every process (with gradients unless ``grads`` is False) under DDP; ``x`` itself otherwise."""
        if self._trainer is None or self.trainer.world_size == 1:
            return x
        return self.all_gather(x, sync_grads=grads).flatten(0, 1)

    def _positives(self, batch: dict[str, Any]) -> Tensor | None:
        """``(N, N)`` positives of the gathered batch when multi-positive training applies; else None (one-hot)."""
        if not (self.training and self.multi_positive and "attribute_codes" in batch):
            return None
        codes, stated = self._gather(batch["attribute_codes"], False), self._gather(batch["view_columns"].long(), False)
        return shared_attribute_positives(codes, stated.bool())

    def _texts(self, batch: dict[str, Any]) -> tuple[Features, Features, Features]:
        """Text features of the training queries (drawn views in training, when the batch has them), of the real
        query text and of the product text (computed once when two of them are the same tokens)."""
        real = self.text(batch["input_ids"], batch["attention_mask"])
        viewed = self.training and "view_input_ids" in batch
        query = self.text(batch["view_input_ids"], batch["view_attention_mask"]) if viewed else real
        return query, real, self.text(*_product_tokens(batch)) if "product_input_ids" in batch else real

    def loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Contrastive losses (query text vs product, and photo vs query text) plus the re-ranker's ITM loss."""
        return self.losses_and_vectors(batch)[0]

    def losses_and_vectors(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """The losses of :meth:`loss` and the batch's query and product vectors ``(B, E)``.

        Each tower runs once per batch; every vector and the re-ranker reuse its features.
        """
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()  # CLIP's cap on the inverse temperature
        vision = self.vision.encode_photos(batch["pixel_values"], batch.get("photo_mask"))
        query_features, real_features, product_text = self._texts(batch)
        query = F.normalize(self.text_proj(query_features.pooled), dim=-1)
        has_text = batch["has_text"]
        if self.training and self.product == "fused" and self.product_dropout > 0:
            has_text = has_text & (torch.rand(has_text.shape, device=has_text.device) >= self.product_dropout)
        product = self._product_vectors(vision, product_text, has_text)
        q_all, p_all = self._gather(query), self._gather(product)
        pair_loss = partial(contrastive, logit_scale=scale, positives=self._positives(batch))
        losses = {"contrastive": pair_loss(q_all, p_all)}
        if self.matryoshka_dims:
            losses["matryoshka"] = matryoshka_loss(q_all, p_all, self.matryoshka_dims, pair_loss)
        if self.product != "image" and self.image_loss_weight > 0:
            image = self._gather(F.normalize(self.image_proj(vision.pooled), dim=-1))
            losses["image"] = self.image_loss_weight * pair_loss(q_all, image)
        if self.reranker is not None and self.rerank_loss_weight > 0:  # on the real query text: a view is not a title
            real = query if real_features is query_features else F.normalize(self.text_proj(real_features.pooled), -1)
            itm = itm_loss(self.match_scores, vision, real_features, real.detach(), product.detach(), scale.detach())
            losses["itm"] = self.rerank_loss_weight * itm
        losses["loss"] = torch.stack(list(losses.values())).sum()
        return losses, query, product

    # ------------------------------------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        if len(batch["ids"]) < 2:
            return None  # a contrastive step needs negatives
        losses = self.loss(batch)
        n = len(batch["ids"])
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=n)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"}, batch_size=n)
        self.log("train/temperature", 1.0 / self.logit_scale.exp(), batch_size=n)
        return losses["loss"]

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        if len(batch["ids"]) < 2:
            return
        losses, query, product = self.losses_and_vectors(batch)
        self.log(f"{stage}/loss", losses["loss"], prog_bar=True, batch_size=len(batch["ids"]), sync_dist=True)
        self._val["q"].append(query.float().cpu())
        self._val["p"].append(product.float().cpu())

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _epoch_end(self, stage: str) -> None:
        if not self._val["q"]:
            return
        q, p = torch.cat(self._val["q"]), torch.cat(self._val["p"])
        self._val = {"q": [], "p": []}
        if self.trainer.world_size > 1:
            q, p = (self.all_gather(x.to(self.device)).flatten(0, 1).cpu() for x in (q, p))
        scores, report = recall_evaluation(q, p)
        self.keep_report(stage, report)  # the recall@K curve, for the model card
        self.log_dict({f"{stage}/{k}": v for k, v in scores.items()}, sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Product vectors for export: ``{"ids": [...], "embeddings": (B, E)}``."""
        if not batch["ids"]:
            return {"ids": [], "embeddings": torch.zeros(0, self.embed_dim)}
        return {"ids": batch["ids"], "embeddings": self.embed_products(batch)}


def _product_tokens(batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
    if "product_input_ids" in batch:
        return batch["product_input_ids"], batch["product_attention_mask"]
    return batch["input_ids"], batch["attention_mask"]
