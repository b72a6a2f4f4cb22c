"""``ProductCaptioner``: a causal language model writes a product's title (or any text column) from its photo.

The model and its Lightning hooks live here; the concepts it composes each have their module: text preparation
(:mod:`~multimodal.captioning.text`), settings (:mod:`~multimodal.captioning.settings`), teacher-forced training
(:mod:`~multimodal.captioning.teacher_forcing`), generation (:mod:`~multimodal.captioning.generation`), consensus
reranking (:mod:`~multimodal.captioning.rerank`), self-critical training (:mod:`~multimodal.captioning.self_critical`),
the caption memory (:mod:`~multimodal.captioning.retrieval`) and vocabulary trimming
(:mod:`~multimodal.captioning.vocabulary`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from encoders.language_model import CausalLM, InputTransform
from encoders.types import Features, ImageTransform, VisionEncoder
from fusion.conditioning import LMCondition
from multimodal.captioning import vocabulary
from multimodal.captioning.asking import QuestionText
from multimodal.captioning.conditioned import ConditioningFactory, build_conditioning, prefixed_inputs
from multimodal.captioning.consensus import CiderConsensus
from multimodal.captioning.evaluation import CaptionEvaluation
from multimodal.captioning.generation import Captions, call_options, generate_captions
from multimodal.captioning.questions import QuestionSettings, check_question
from multimodal.captioning.rerank import ConsensusReranker
from multimodal.captioning.retrieval import CaptionMemory, neighbour_prompts
from multimodal.captioning.self_critical import SelfCritical
from multimodal.captioning.settings import (
    DEFAULT_GENERATION,
    RerankSettings,
    RetrievalSettings,
    SelfCriticalSettings,
    check_prompt_length,
)
from multimodal.captioning.steps import CaptionSteps
from multimodal.captioning.teacher_forcing import TeacherForcing
from multimodal.captioning.text import RETRIEVAL_PROMPT_END, RETRIEVED, CaptionText
from multimodal.data.dataset import TextFn
from multimodal.towers import MissingModality, TowerTask

# Names programs import from this module (benchmarks); they live in the modules of their concept.
__all__ = ["RETRIEVAL_PROMPT_END", "RETRIEVED", "CaptionText", "Captions", "ProductCaptioner"]


class ProductCaptioner(CaptionSteps, TowerTask):
    """Vision encoder + causal language model, conditioned through one fusion family picked by ``fusion``.

    Trained with teacher forcing on ``target_column``; the prompt (fixed text and known columns) is masked out of
    the loss. Validation and test generate with ``generation`` settings and report BLEU-4 and CIDEr.

    Args:
        vision: vision encoder.
        language_model: causal LM wrapper (:class:`encoders.language_model.CausalLM`).
        fusion: called as ``fusion(vision_dim, lm_dim)``: a conditioning from :mod:`fusion.conditioning`, or any
            fusion block (wrapped as an image prefix by :class:`fusion.block_conditioning.FusionBlockConditioning`).
        target_column: the data module's text column to write.
        prompt_columns: text columns given before the target (must be among the data's ``text_columns``).
        prompt: fixed prompt text before every caption (questions: ``questions``).
        prompt_length: prompt tokens kept per item (default: all that fit in the LM's ``max_length - 2``); the
            target gets the rest of ``max_length``.
        generation: Hugging Face ``generate`` options for validation, test and predict (``max_new_tokens``,
            ``num_beams``, ``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``repetition_penalty``...), and
            ``trim_vocabulary``: True / False / None (default: True when the token ids of the training targets are
            known) restricts the output layer to those ids (see :attr:`caption_token_ids`).
        augment: train with the vision encoder's training transform (random crops...); False uses eval transform.
        word_dropout: in training, the chance that each target token *given as input* is replaced by the
            tokenizer's mask (or unknown) token; the labels stay. With less of the title to lean on, the LM has to
            read the image; this is what gets an image prefix (early fusion) used at all in a short run.
        label_smoothing: ``torch.nn.functional.cross_entropy``'s label smoothing of the caption loss.
        lm_warmup_steps: for this many first optimizer steps the language model's pretrained weights get no
            update (their gradients are dropped): the new conditioning layers learn to address a fixed LM before
            the LM may learn to do without the image (a frozen-LM warm-up, as ClipCap and BLIP-2 train their
            mappers).
        retrieval: retrieval-augmented captioning (SmallCap-style, :class:`~.settings.RetrievalSettings`):
            ``{"k": 3, "tokens": 48}`` puts the titles of the ``k`` training products with the most similar photos
            before the other prompt parts (a :class:`~multimodal.captioning.retrieval.CaptionMemory`, built from the
            training split when fit starts and saved in the checkpoint); a query never retrieves its own id. None: off.
        questions: answers to questions about a product (:class:`~.questions.QuestionSettings`): a share of the
            training items is also asked about an attribute column; ``caption(prompt=question)`` answers. None: off.
        rerank: consensus reranking (:class:`~.settings.RerankSettings`, :mod:`~multimodal.captioning.rerank`):
            ``{"k": 5, "candidates": 8, "weight": 0.0}`` or true; builds the same caption memory. Validation, test
            and predict rerank unless the ``rerank`` generation option says false. None: off.
        self_critical: self-critical sequence training (:class:`~.settings.SelfCriticalSettings`,
            :mod:`~multimodal.captioning.self_critical`): ``{"start_epoch": 2, "samples": 5, "lr_scale": 0.1}`` or
            true replaces teacher forcing from epoch ``start_epoch`` on. None: off.
        log_examples: validation examples written to the log each epoch.
        optimizer: optimizer factory.
        scheduler: optional LR scheduler factory.
        encoder_lr_scale: learning-rate factor for the vision encoder and the language model.
    """

    def __init__(
        self,
        vision: VisionEncoder,
        language_model: CausalLM,
        fusion: ConditioningFactory,
        target_column: str = "title",
        prompt_columns: list[str] | None = None,
        prompt: str = "",
        prompt_length: int | None = None,
        generation: dict[str, Any] | None = None,
        augment: bool = True,
        word_dropout: float = 0.0,
        label_smoothing: float = 0.0,
        lm_warmup_steps: int = 0,
        retrieval: dict[str, int] | None = None,
        questions: dict[str, Any] | None = None,
        rerank: dict[str, Any] | bool | None = None,
        self_critical: dict[str, Any] | bool | None = None,
        log_examples: int = 3,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        encoder_lr_scale: float = 0.1,
    ) -> None:
        super().__init__(vision, language_model, optimizer, scheduler, encoder_lr_scale)  # type: ignore[arg-type]
        self.conditioning = build_conditioning(fusion, vision, language_model)
        self.missing_image = MissingModality(vision.output_dim)
        self.target_column, self.prompt_columns, self.prompt = target_column, list(prompt_columns or []), prompt
        self.prompt_length = check_prompt_length(prompt_length)
        self.generation = {**DEFAULT_GENERATION, **(generation or {})}
        self.augment, self.log_examples = augment, log_examples
        self.teacher = TeacherForcing(language_model, word_dropout, label_smoothing, lm_warmup_steps)
        self.retrieval = RetrievalSettings.parse(retrieval)
        self.questions = QuestionSettings.parse(questions)
        self.rerank = RerankSettings.parse(rerank, "model.rerank")
        self.critic = SelfCritical(SelfCriticalSettings.parse(self_critical))
        self.reranker = ConsensusReranker()
        self.memory: CaptionMemory | None = None  # built when fit starts (retrieval, rerank), kept in the checkpoint
        self.evaluation = CaptionEvaluation()
        # Every token id of the training targets plus bos/eos/pad, sorted (K,): set at fit, saved in the checkpoint.
        self.caption_token_ids: Tensor | None = None

    @property
    def lm(self) -> CausalLM:
        return self.text  # type: ignore[return-value]

    @property
    def word_dropout(self) -> float:
        return self.teacher.word_dropout

    @property
    def self_critical(self) -> SelfCriticalSettings | None:
        return self.critic.settings

    @property
    def reward(self) -> CiderConsensus | None:
        """The self-critical reward (CIDEr-D of the training targets), set when fit starts."""
        return self.critic.reward

    @reward.setter
    def reward(self, value: CiderConsensus | None) -> None:
        self.critic.reward = value

    def target_token_ids(self, texts: list[str | None]) -> Tensor:
        """Sorted ids ``(K,)`` of every token of ``texts`` (as training tokenizes them) and of bos/eos/pad."""
        return vocabulary.target_token_ids(self.lm, texts)

    # -------------------------------------------------------------------------------------- preprocessing
    def image_transform(self, train: bool) -> ImageTransform:
        return self.vision.image_transform(train and self.augment)

    def text_fn(self, prompt: str | None = None) -> TextFn:
        """The collate's text function: captions after the trained (or ``prompt``) prompt, or the answers to a
        trained question (:mod:`multimodal.captioning.questions`; an untrained question is a one-line error)."""
        column = check_question(prompt, self.questions, self.prompt)
        text = self.caption_text(prompt)
        if column is None or self.questions is None:
            return text  # type: ignore[return-value]
        return QuestionText(text, self.questions, str(prompt), column)  # type: ignore[return-value]

    def caption_text(self, prompt: str | None = None) -> CaptionText:
        lm = self.lm
        room = self.retrieval.tokens if self.retrieval else 0  # the target keeps max_length - 2 tokens
        prompt_length = self.prompt_length if self.prompt_length is not None else (room or None)
        return CaptionText(
            lm.tokenizer,
            self.target_column,
            ([RETRIEVED] if self.retrieval else []) + self.prompt_columns,
            self.prompt if prompt is None else prompt,
            lm.max_length + room,
            lm.bos_id,
            lm.eos_id,
            lm.pad_id,
            prompt_length=prompt_length,
            prompt_end=RETRIEVAL_PROMPT_END if self.retrieval else "",
        )

    # -------------------------------------------------------------------------------------------- forward
    def encode_images(
        self, pixel_values: Tensor, has_image: Tensor | None = None, photo_mask: Tensor | None = None
    ) -> Features:
        """Vision features of images ``(B, 3, H, W)``, or of several photos per product ``(B, P, 3, H, W)`` with
        their ``photo_mask (B, P)``; absent images get the learned stand-in."""
        vision = self.vision.encode_photos(pixel_values, photo_mask)
        return vision if has_image is None else self.missing_image.fill(vision, has_image)

    def lm_inputs(
        self, vision: Features, ids: Tensor, mask: Tensor
    ) -> tuple[LMCondition, Tensor, Tensor, InputTransform | None]:
        """The LM's condition for ``vision`` and its ids and mask ``(B, P+T)`` for ids ``(B, T)``: early fusion puts
        ``P`` placeholder columns before the ids, and the returned input transform swaps their embeddings for the
        image prefix (None without a prefix)."""
        cond = self.conditioning(vision)
        return cond, *prefixed_inputs(cond, ids, mask, self.lm.pad_id)

    def forward(self, batch: dict[str, Any]) -> Tensor:
        """Teacher-forced next-token logits ``(B, T, V)`` of the text positions (a retrieval captioner: of the
        batch :meth:`with_neighbours` returns)."""
        vision = self.encode_images(batch["pixel_values"], batch.get("has_image"), batch.get("photo_mask"))
        batch = self.with_neighbours(batch, vision)
        return self.logits(vision, batch["input_ids"], batch["attention_mask"])

    def logits(self, vision: Features, input_ids: Tensor, attention_mask: Tensor, skip: int = 0) -> Tensor:
        """Next-token logits ``(B, T - skip, V)`` for right-padded ids ``(B, T)`` given vision features, from
        position ``skip`` of ``input_ids`` on (earlier positions predict no target: no vocabulary projection)."""
        cond, ids, mask, put_prefix = self.lm_inputs(vision, input_ids, attention_mask)
        # No prefix position is ever a target: skip their vocabulary projection (the costliest layer).
        keep_from = ids.shape[1] - input_ids.shape[1] + skip
        with self.lm.input_transform(put_prefix), self.lm.hidden_transform(cond.hidden):
            return self.lm(ids, mask, cond.encoder, keep_from=keep_from)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Next-token cross-entropy on target tokens only (:meth:`TeacherForcing.loss`)."""
        return self.teacher.loss(logits, labels)

    # ------------------------------------------------------------------------------------------- retrieval
    def with_neighbours(self, batch: dict[str, Any], vision: Features) -> dict[str, Any]:
        """The batch re-encoded with each item's neighbour titles in its prompt (unchanged without retrieval).

        Items without a photo get no neighbours; an item never retrieves its own product id."""
        if self.retrieval is None:
            return batch
        prompts = neighbour_prompts(self.memory, vision, self.retrieval.k, batch["ids"], batch.get("has_image"))
        encoded = self.text_fn(batch.get("prompt"))({**batch["texts"], RETRIEVED: prompts})
        device = batch["input_ids"].device
        return {**batch, **{k: v.to(device) if isinstance(v, Tensor) else v for k, v in encoded.items()}}

    # ------------------------------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        pixel_values: Tensor,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        has_image: Tensor | None = None,
        use_cache: bool = True,
        **generation: Any,
    ) -> Captions:
        """Captions for images ``(B, 3, H, W)`` after left-padded prompts ``(B, T)`` through HF ``generate``.

        ``generation`` overrides the model's settings for this call (``num_beams``, ``do_sample``,
        ``max_new_tokens``...). The prompts are used as given: :meth:`caption_batch` adds a retrieval captioner's
        neighbour titles.
        """
        vision = self.encode_images(pixel_values, has_image)
        options = call_options(self.generation, {"use_cache": use_cache, "has_image": has_image, **generation})
        return generate_captions(self, vision, prompt_ids, prompt_mask, **options)

    def generate_from_features(
        self, vision: Features, prompt_ids: Tensor, prompt_mask: Tensor, **options: Any
    ) -> Captions:
        """Captions from vision features computed beforehand (cached features, benchmarks), with ``options`` as
        given (:func:`~multimodal.captioning.generation.generate_captions`)."""
        return generate_captions(self, vision, prompt_ids, prompt_mask, **options)

    def caption_batch(self, batch: dict[str, Any], **generation: Any) -> Captions:
        """Captions of a collated batch (its prompts; a retrieval captioner adds each photo's neighbour titles),
        with ``generation`` over the model's settings for this call only."""
        vision = self.encode_images(batch["pixel_values"], batch.get("has_image"), batch.get("photo_mask"))
        batch = self.with_neighbours(batch, vision)
        context = {"exclude": batch["ids"], "has_image": batch.get("has_image")}
        context |= {"rerank": False} if batch.get("asked") else {}  # answers are not titles
        options = call_options(self.generation, {**context, **generation})
        return generate_captions(self, vision, batch["prompt_ids"], batch["prompt_mask"], **options)

    # --------------------------------------------------------------------------------------------- training
    def drop_words(self, input_ids: Tensor, labels: Tensor) -> Tensor:
        """``input_ids (B, T)`` with target tokens dropped (:meth:`TeacherForcing.drop_words`)."""
        return self.teacher.drop_words(input_ids, labels)

    def hold_language_model(self, step: int) -> None:
        """Before optimizer step ``step``: the LM warm-up (:meth:`TeacherForcing.hold_language_model`)."""
        self.teacher.hold_language_model(step, self.lm)

    def self_critical_on(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) trains self-critically (:meth:`SelfCritical.active`)."""
        return self.critic.active(epoch)

    def start_self_critical(self, optimizer: torch.optim.Optimizer, schedulers: Sequence[Any] = ()) -> None:
        """Scale the learning rates and clear the optimizer's state, once (:meth:`SelfCritical.start`)."""
        self.critic.start(optimizer, schedulers)

    def self_critical_loss(self, vision: Features, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """REINFORCE loss of sampled captions and their mean reward (:meth:`SelfCritical.loss`)."""
        return self.critic.loss(self, vision, batch)
