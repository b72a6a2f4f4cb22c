"""``ProductCaptioner``: a causal language model writes a product's title (or any text column) from its photo."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.nn import functional as F

from encoders.language_model import CausalLM, InputTransform
from encoders.types import Features, ImageTransform, VisionEncoder
from fusion.conditioning import LMCondition, LMConditioning
from multimodal.captioning.consensus import CiderConsensus
from multimodal.captioning.metrics import caption_scores
from multimodal.captioning.retrieval import CaptionMemory, raw_keys
from multimodal.data.dataset import IGNORE_INDEX, TextFn
from multimodal.errors import UserError
from multimodal.towers import MissingModality, TowerTask

# Typed loosely on purpose: a fusion block of another family gets a one-line UserError, not a parser dump.
ConditioningFactory = Callable[[int, int], nn.Module]
DEFAULT_GENERATION: dict[str, Any] = {"max_new_tokens": 24, "num_beams": 1}
RETRIEVED = "_retrieved_titles"  # the prompt part holding the neighbours' titles (retrieval)
RETRIEVAL_PROMPT_END = " :"  # closes a retrieval prompt: without it, a caption often ended before it began
RETRIEVAL_DEFAULTS = {"k": 3, "tokens": 48}
RERANK_DEFAULTS: dict[str, Any] = {"k": 5, "candidates": 8, "weight": 0.0}
SELF_CRITICAL_DEFAULTS: dict[str, Any] = {"start_epoch": 0, "samples": 5, "lr_scale": 0.1}


class CaptionText:
    """Text function for the collate (picklable): prompt and target columns -> training and prompt tensors.

    Training sequence (right-padded): ``[bos] prompt target [eos]``; ``caption_labels`` (the collate keeps
    ``labels`` for attributes) hold the target and ``[eos]`` only (-100 on ``[bos]``, the prompt and padding).
    Generation input (left-padded): ``[bos] prompt``.

    Args:
        tokenizer: Hugging Face tokenizer.
        target_column: the text column to learn to write.
        prompt_columns: known text columns placed before the target (missing values left out).
        prompt: fixed text placed first in every prompt (e.g. a question).
        max_length: tokens kept per sequence, special tokens included.
        bos_id: begin token id.
        eos_id: end token id.
        pad_id: padding id.
        separator: joins the prompt parts.
        prompt_length: prompt tokens kept (default: all that fit in ``max_length - 2``); the target gets the rest.
        prompt_end: text whose tokens close a non-empty prompt, after truncation, so the model knows where the
            target starts (a retrieval captioner's list of titles ends with it); "": none.
    """

    def __init__(
        self,
        tokenizer: Any,
        target_column: str,
        prompt_columns: list[str],
        prompt: str,
        max_length: int,
        bos_id: int,
        eos_id: int,
        pad_id: int,
        separator: str = ". ",
        prompt_length: int | None = None,
        prompt_end: str = "",
    ) -> None:
        self.tokenizer, self.target_column = tokenizer, target_column
        self.prompt_end = self._ids(prompt_end)
        self.prompt_length = max_length - 2 if prompt_length is None else min(prompt_length, max_length - 2)
        self.prompt_columns, self.prompt, self.separator = list(prompt_columns), prompt, separator
        self.max_length, self.bos_id, self.eos_id, self.pad_id = max_length, bos_id, eos_id, pad_id

    def prompt_texts(self, texts: dict[str, list[str | None]], n: int) -> list[str]:
        """The prompt of each of ``n`` items."""
        parts = [[self.prompt] * n if self.prompt else [None] * n] + [
            texts.get(c, [None] * n) for c in self.prompt_columns
        ]
        return [self.separator.join(p[i] for p in parts if p[i]) for i in range(n)]

    def __call__(self, texts: dict[str, list[str | None]]) -> dict[str, Any]:
        n = len(next(iter(texts.values()))) if texts else 0
        targets = texts.get(self.target_column, [None] * n)
        prompts = [self._ids(p)[: self.prompt_length] for p in self.prompt_texts(texts, n)]
        prompts = [[*p, *self.prompt_end] if p else p for p in prompts]
        seqs, labels = [], []
        for prompt, target in zip(prompts, targets, strict=True):
            room = max(self.max_length - 2 - len(prompt), 0)
            tgt = self._ids(target)[:room] + [self.eos_id] if target is not None else []
            seqs.append([self.bos_id, *prompt, *tgt])
            labels.append([IGNORE_INDEX] * (1 + len(prompt)) + tgt)
        out = {
            "input_ids": _pad(seqs, self.pad_id, left=False),
            "caption_labels": _pad(labels, IGNORE_INDEX, left=False),
            "prompt_ids": _pad([[self.bos_id, *p] for p in prompts], self.pad_id, left=True),
            "references": list(targets),
            "texts": texts,  # as given, with the fixed prompt: a retrieval captioner re-encodes them with its
            "prompt": self.prompt,  # neighbours' titles
        }
        out["attention_mask"] = _pad([[1] * len(s) for s in seqs], 0, left=False)
        out["prompt_mask"] = _pad([[1] * (1 + len(p)) for p in prompts], 0, left=True)
        return out

    def _ids(self, text: str | None) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def _pad(rows: list[list[int]], value: int, left: bool) -> Tensor:
    """Pad lists of ids into a ``(B, T)`` long tensor, on the left or the right."""
    width = max((len(r) for r in rows), default=0)
    return torch.tensor(
        [[value] * (width - len(r)) + r if left else r + [value] * (width - len(r)) for r in rows], dtype=torch.long
    )


def _check_retrieval(value: Any) -> dict[str, int] | None:
    """``model.retrieval``: None, or ``k`` and ``tokens`` (whole numbers >= 1) over :data:`RETRIEVAL_DEFAULTS`."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - set(RETRIEVAL_DEFAULTS):
        raise UserError(f"model.retrieval={value!r}: give null or a mapping with keys k and tokens, e.g. {{k: 3}}")
    out = {**RETRIEVAL_DEFAULTS, **value}
    _check_whole(out, "model.retrieval", dict.fromkeys(out, 1))
    return out


def _option(value: Any, defaults: dict[str, Any], name: str, example: str) -> dict[str, Any] | None:
    """A mapping option: None / False (off), True (``defaults``), or a mapping over ``defaults``' keys, merged over
    them; anything else is a one-line error naming the keys."""
    if value is None or value is False:
        return None
    if value is True:
        return dict(defaults)
    if not isinstance(value, dict) or set(value) - set(defaults):
        *first, last = defaults
        raise UserError(f"{name}={value!r}: give true, false or a mapping with keys {', '.join(first)} and {last}, "
                        f"e.g. {example}")  # fmt: skip
    return {**defaults, **value}


def _check_whole(out: dict[str, Any], name: str, lowest: dict[str, int]) -> None:
    for key, low in lowest.items():
        if not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < low:
            raise UserError(f"{name}.{key}={out[key]!r}: needs a whole number >= {low}")


def check_rerank(value: Any, name: str = "rerank") -> dict[str, Any] | None:
    """``rerank``: None / False (off), True (:data:`RERANK_DEFAULTS`), or a mapping over them: ``k`` neighbour titles
    and ``candidates`` captions (whole numbers >= 1), ``weight`` of the beam score (a number >= 0)."""
    out = _option(value, RERANK_DEFAULTS, name, "{k: 5}")
    if out is None:
        return None
    _check_whole(out, name, {"k": 1, "candidates": 1})
    if isinstance(out["weight"], bool) or not isinstance(out["weight"], int | float) or not out["weight"] >= 0:
        raise UserError(f"{name}.weight={out['weight']!r}: needs a number >= 0")
    out["weight"] = float(out["weight"])
    return out


def check_self_critical(value: Any) -> dict[str, Any] | None:
    """``model.self_critical``: None / False (off), True (:data:`SELF_CRITICAL_DEFAULTS`), or a mapping over them:
    ``start_epoch`` (whole number >= 0), ``samples`` (whole number >= 2), ``lr_scale`` (a number > 0)."""
    name = "model.self_critical"
    out = _option(value, SELF_CRITICAL_DEFAULTS, name, "{start_epoch: 2}")
    if out is None:
        return None
    _check_whole(out, name, {"start_epoch": 0, "samples": 2})
    scale = out["lr_scale"]
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0:
        raise UserError(f"{name}.lr_scale={scale!r}: needs a number > 0")
    out["lr_scale"] = float(scale)
    return out


def check_trim_vocabulary(value: Any) -> None:
    """A one-line error unless ``value`` is None, True or False (the ``trim_vocabulary`` generation option)."""
    if value not in (None, True, False):
        raise UserError(f"trim_vocabulary must be true or false, not {value!r}")


def _token_logprob(scores: Tensor, tokens: Tensor, kept: Tensor | None) -> Tensor:
    """Log-probability ``(B,)`` of ``tokens (B,)`` under one step's processed ``scores (B, V)``; ``kept (K,)``: the
    only finite columns. What ``compute_transition_scores(normalize_logits=True)`` gives, without its
    ``(B*V, L)`` stack and a ``(B, V)`` log-softmax per step (half of a greedy 32 x 20-token generate on the CPU)."""
    total = torch.logsumexp(scores if kept is None else scores.index_select(1, kept.to(scores.device)), -1)
    return scores.gather(1, tokens[:, None]).squeeze(1) - total


@dataclass
class Captions:
    """Generated captions: ``texts`` and ``scores`` (mean token log-probability, or the beam score) per item, and the
    new token ids ``(B, L)`` (padded after ``[eos]``) where generation returned them (not after reranking)."""

    texts: list[str]
    scores: list[float]
    tokens: Tensor | None = None


class ProductCaptioner(TowerTask):
    """Vision encoder + causal language model, conditioned through one fusion family picked by ``fusion``.

    Trained with teacher forcing on ``target_column``; the prompt (fixed text and known columns) is masked out of
    the loss. Validation and test generate with ``generation`` settings and report BLEU-4 and CIDEr.

    Args:
        vision: vision encoder.
        language_model: causal LM wrapper (:class:`encoders.language_model.CausalLM`).
        fusion: conditioning factory from :mod:`fusion.conditioning`, called as ``fusion(vision_dim, lm_dim)``.
        target_column: the data module's text column to write.
        prompt_columns: text columns given before the target (must be among the data's ``text_columns``).
        prompt: fixed prompt text (e.g. ``"What is the material?"``).
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
        retrieval: retrieval-augmented captioning (SmallCap-style): ``{"k": 3, "tokens": 48}`` gives the LM the
            titles of the ``k`` training products whose photos look most like this one (a
            :class:`~multimodal.captioning.retrieval.CaptionMemory`, built from the training split when fit starts
            and saved in the checkpoint) before the other prompt parts, in up to ``tokens`` extra tokens; a query
            never retrieves its own product id. None: off.
        rerank: consensus reranking (:mod:`multimodal.captioning.consensus`): ``{"k": 5, "candidates": 8,
            "weight": 0.0}`` (or true for these) makes beam search propose ``candidates`` captions and keeps the one
            closest in CIDEr-D to the titles of the ``k`` training products with the most similar photos (+
            ``weight`` x its beam score). Builds the same caption memory as ``retrieval`` (saved in the
            checkpoint); validation, test and predict rerank unless the ``rerank`` generation option says false.
            None: off (a captioner with a memory can still rerank when a caption job asks for it).
        self_critical: self-critical sequence training (Rennie et al. 2017, with the mean-of-other-samples baseline
            of Luo 2020): ``{"start_epoch": 2, "samples": 5, "lr_scale": 0.1}`` (or true for the defaults) replaces
            teacher forcing from epoch ``start_epoch`` (0-based) on: each photo's caption is sampled ``samples``
            times, each sample is rewarded with its CIDEr-D against the photo's target text (document frequencies
            of the training targets), and the samples that beat the mean of the others are made likelier
            (REINFORCE). The learning rates are multiplied by ``lr_scale`` when it starts. It optimises the metric
            the captions are judged by; each step costs about five teacher-forced ones. None: off.
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
        rerank: dict[str, Any] | bool | None = None,
        self_critical: dict[str, Any] | bool | None = None,
        log_examples: int = 3,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        encoder_lr_scale: float = 0.1,
    ) -> None:
        super().__init__(vision, language_model, optimizer, scheduler, encoder_lr_scale)  # type: ignore[arg-type]
        conditioning = fusion(vision.output_dim, language_model.hidden_size)
        if not isinstance(conditioning, LMConditioning):
            raise UserError(
                f"model.fusion: {type(conditioning).__name__} cannot condition a language model; use "
                "fusion.conditioning.PrefixConditioning (early), CrossAttentionConditioning or LateConditioning"
            )
        if conditioning.needs_cross_attention:
            language_model.add_cross_attention()
        self.conditioning = conditioning
        self.missing_image = MissingModality(vision.output_dim)
        self.target_column, self.prompt_columns, self.prompt = target_column, list(prompt_columns or []), prompt
        if prompt_length is not None and (not isinstance(prompt_length, int) or prompt_length < 0):
            raise UserError(f"model.prompt_length={prompt_length!r}: needs a whole number >= 0 (or null)")
        self.prompt_length = prompt_length
        self.generation = {**DEFAULT_GENERATION, **(generation or {})}
        self.augment, self.log_examples = augment, log_examples
        self.word_dropout, self._dropped_word_id = word_dropout, None
        tok = language_model.tokenizer
        specials = {language_model.eos_id, language_model.pad_id, language_model.bos_id}
        choices = [i for i in (tok.mask_token_id, tok.unk_token_id) if i is not None and i not in specials]
        if not 0 <= word_dropout < 1 or (word_dropout > 0 and not choices):
            raise UserError(
                f"model.word_dropout={word_dropout}: needs 0 <= p < 1 and a tokenizer with a mask or unknown "
                "token distinct from its begin/end/padding tokens"
            )
        if word_dropout > 0:
            self._dropped_word_id = choices[0]
        if not 0 <= label_smoothing < 1:
            raise UserError(f"model.label_smoothing={label_smoothing}: needs 0 <= value < 1")
        self.label_smoothing = label_smoothing
        if not isinstance(lm_warmup_steps, int) or lm_warmup_steps < 0:
            raise UserError(f"model.lm_warmup_steps={lm_warmup_steps!r}: needs a whole number >= 0")
        self.lm_warmup_steps = lm_warmup_steps
        self.retrieval = _check_retrieval(retrieval)
        self.rerank = check_rerank(rerank, "model.rerank")
        self.self_critical = check_self_critical(self_critical)
        self.reward: CiderConsensus | None = None  # self-critical reward: set at fit from the training targets
        self.memory: CaptionMemory | None = None  # built when fit starts (retrieval, rerank), kept in the checkpoint
        self._consensus: tuple[CaptionMemory, CiderConsensus] | None = None  # idf of the memory's titles
        self._outputs: dict[str, tuple[list[str], list[str]]] = {}
        self.predict_options: dict[str, Any] = {}  # generate options of predict jobs (set by the caller)
        self.predict_seed = 0
        # Every token id of the training targets plus bos/eos/pad, sorted (K,): set at fit, saved in the checkpoint.
        # Generation computes logits for these only (about 2k of MiniLM's 30k ids on product titles).
        self.caption_token_ids: Tensor | None = None

    @property
    def lm(self) -> CausalLM:
        return self.text  # type: ignore[return-value]

    def setup(self, stage: str) -> None:
        columns = getattr(self.trainer.datamodule, "text_columns", None) if self.trainer is not None else None
        if columns is None:
            return
        needed = [*self.prompt_columns] + ([self.target_column] if stage in ("fit", "validate", "test") else [])
        missing = [c for c in needed if c not in columns]
        if missing:
            raise UserError(f"model.target_column/prompt_columns {missing} are not in data.text_columns {columns}")
        records = (getattr(self.trainer.datamodule, "splits", None) or {}).get("train")
        if stage == "fit" and self.caption_token_ids is None and records is not None:
            self.caption_token_ids = self.target_token_ids([r.texts.get(self.target_column) for r in records])
            vocab = self.lm.get_output_layer().weight.shape[0]
            rank_zero_info(f"captioning: the training targets use {len(self.caption_token_ids)} of {vocab} token ids")
        if stage == "fit" and self.self_critical is not None and records is not None:
            self.reward = CiderConsensus([t for r in records if (t := r.texts.get(self.target_column))])

    def target_token_ids(self, texts: list[str | None]) -> Tensor:
        """Sorted ids ``(K,)`` of every token of ``texts`` (as training tokenizes them) and of bos/eos/pad."""
        lm = self.lm
        found = [i for row in lm.tokenizer([t for t in texts if t], add_special_tokens=False)["input_ids"] for i in row]
        return torch.unique(torch.tensor([*found, lm.bos_id, lm.eos_id, lm.pad_id], dtype=torch.long))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.caption_token_ids is not None:
            checkpoint["caption_token_ids"] = self.caption_token_ids.cpu()
        if self.memory is not None:
            checkpoint["caption_memory"] = self.memory.state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get("caption_memory") is not None:
            self.memory = CaptionMemory.from_state(checkpoint["caption_memory"])
        ids = checkpoint.get("caption_token_ids")  # absent in checkpoints written before vocabulary trimming
        if ids is None:
            return
        vocab = self.lm.get_output_layer().weight.shape[0]
        if (
            not isinstance(ids, Tensor)
            or ids.ndim != 1
            or ids.numel() == 0
            or int(ids.min()) < 0
            or int(ids.max()) >= vocab
        ):
            raise UserError(f"the checkpoint's caption_token_ids are not token ids of a {vocab}-token vocabulary")
        self.caption_token_ids = ids.long()

    # -------------------------------------------------------------------------------------- preprocessing
    def image_transform(self, train: bool) -> ImageTransform:
        return self.vision.image_transform(train and self.augment)

    def text_fn(self, prompt: str | None = None) -> TextFn:
        lm = self.lm
        room = self.retrieval["tokens"] if self.retrieval else 0  # the target keeps max_length - 2 tokens
        prompt_length = self.prompt_length if self.prompt_length is not None else (room or None)
        return CaptionText(  # type: ignore[return-value]
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
    def encode_images(self, pixel_values: Tensor, has_image: Tensor | None = None) -> Features:
        """Vision features of images ``(B, 3, H, W)``; absent images get the learned stand-in."""
        vision = self.vision(pixel_values)
        return vision if has_image is None else self.missing_image.fill(vision, has_image)

    def _inputs(self, cond: LMCondition, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, InputTransform | None]:
        """Early fusion puts ``P`` placeholder columns before the ids ``(B, T)``; the returned input transform swaps
        their embeddings for the image prefix. Returns ids and mask ``(B, P+T)`` and the transform (or None)."""
        if cond.prefix is None:
            return ids, mask, None
        prefix = cond.prefix
        n, width = prefix.tokens.shape[:2]
        ids = torch.cat([ids.new_full((n, width), self.lm.pad_id), ids], 1)
        mask = torch.cat([prefix.mask.to(mask.dtype), mask], 1)

        def put_prefix(input_ids: Tensor, embeds: Tensor) -> Tensor:
            # A one-token call is a cached generation step: the prefix already sits in the KV cache.
            if input_ids.shape[1] <= 1:
                return embeds
            tokens = prefix.tokens.repeat_interleave(input_ids.shape[0] // n, dim=0).to(embeds.dtype)  # (B', P, D)
            return torch.cat([tokens, embeds[:, width:]], 1)

        return ids, mask, put_prefix

    def forward(self, batch: dict[str, Any]) -> Tensor:
        """Teacher-forced next-token logits ``(B, T, V)`` of the text positions (a retrieval captioner: of the
        batch :meth:`with_neighbours` returns)."""
        vision = self.encode_images(batch["pixel_values"], batch.get("has_image"))
        batch = self.with_neighbours(batch, vision)
        return self.logits(vision, batch["input_ids"], batch["attention_mask"])

    # ------------------------------------------------------------------------------------------- retrieval
    def with_neighbours(self, batch: dict[str, Any], vision: Features) -> dict[str, Any]:
        """The batch re-encoded with each item's neighbour titles in its prompt (unchanged without retrieval).

        Items without a photo get no neighbours; an item never retrieves its own product id."""
        if self.retrieval is None:
            return batch
        if self.memory is None:
            raise UserError(
                "this captioner retrieves neighbour titles (model.retrieval) but holds no caption memory: fit it "
                "(the memory is built from the training split) or load a checkpoint written by fit"
            )
        prompts = self.memory.prompts(vision, self.retrieval["k"], exclude=batch["ids"])
        has_image = batch.get("has_image")
        if has_image is not None:
            prompts = [p if bool(h) else "" for p, h in zip(prompts, has_image.tolist(), strict=True)]
        encoded = self.text_fn(batch.get("prompt"))({**batch["texts"], RETRIEVED: prompts})
        device = batch["input_ids"].device
        return {**batch, **{k: v.to(device) if isinstance(v, Tensor) else v for k, v in encoded.items()}}

    @torch.no_grad()
    def build_memory(self, loader: Any) -> CaptionMemory:
        """A caption memory of every product of ``loader`` (eval transforms) with a photo and a target text."""
        keys, titles, ids = [], [], []
        training = self.vision.training
        self.vision.eval()
        try:
            for batch in loader:
                if not batch["ids"]:
                    continue
                pairs = zip(batch["references"], batch["has_image"].tolist(), strict=True)
                keep = [i for i, (ref, has) in enumerate(pairs) if ref and has]
                if not keep:
                    continue
                pixels = batch["pixel_values"][keep].to(self.device)
                keys.append(raw_keys(self.vision(pixels)).cpu())
                titles += [batch["references"][i] for i in keep]
                ids += [batch["ids"][i] for i in keep]
        finally:
            self.vision.train(training)
        if not keys:
            raise UserError(
                "model.retrieval / model.rerank: no training product has both a photo and a target text to remember"
            )
        memory = CaptionMemory(torch.cat(keys), titles, ids)
        rank_zero_info(f"captioning: caption memory of {len(memory)} training products ({memory.width}-value keys)")
        return memory

    def _ensure_memory(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        wanted = self.retrieval is not None or self.rerank is not None
        if wanted and self.memory is None and datamodule is not None:
            self.memory = self.build_memory(datamodule.loader("train", train=False))

    def on_fit_start(self) -> None:
        self._ensure_memory()

    def on_validation_start(self) -> None:
        self._ensure_memory()

    def on_test_start(self) -> None:
        self._ensure_memory()

    def logits(self, vision: Features, input_ids: Tensor, attention_mask: Tensor, skip: int = 0) -> Tensor:
        """Next-token logits ``(B, T - skip, V)`` for right-padded ids ``(B, T)`` given vision features, from
        position ``skip`` of ``input_ids`` on (earlier positions predict no target: no vocabulary projection)."""
        cond = self.conditioning(vision)
        ids, mask, put_prefix = self._inputs(cond, input_ids, attention_mask)
        # No prefix position is ever a target: skip their vocabulary projection (the costliest layer).
        keep_from = ids.shape[1] - input_ids.shape[1] + skip
        with self.lm.input_transform(put_prefix), self.lm.hidden_transform(cond.hidden):
            return self.lm(ids, mask, cond.encoder, keep_from=keep_from)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Next-token cross-entropy on target tokens only; ``logits (B, T', V)`` end where ``labels (B, T)`` end."""
        labels = F.pad(labels, (logits.shape[1] - labels.shape[1], 0), value=IGNORE_INDEX)
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
        if not (shift_labels != IGNORE_INDEX).any():
            return shift_logits.sum() * 0.0
        return F.cross_entropy(
            shift_logits.reshape(-1, shift_logits.shape[-1]),
            shift_labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            label_smoothing=self.label_smoothing,
        )

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

        ``generation`` overrides the model's settings (``num_beams``, ``do_sample``, ``max_new_tokens``...). The prompts
        are used as given: :meth:`caption_batch` adds a retrieval captioner's neighbour titles.
        """
        vision = self.encode_images(pixel_values, has_image)
        return self._caption(vision, prompt_ids, prompt_mask, use_cache=use_cache, has_image=has_image, **generation)

    def _caption(self, vision: Features, prompt_ids: Tensor, prompt_mask: Tensor, **generation: Any) -> Captions:
        options = {**self.generation, **generation}
        if int(options.get("max_new_tokens", 1)) <= 0:
            raise UserError(f"max_new_tokens must be positive, not {options['max_new_tokens']}")
        return self.generate_from_features(vision, prompt_ids, prompt_mask, **options)

    def caption_batch(self, batch: dict[str, Any], **generation: Any) -> Captions:
        """Captions of a collated batch (its prompts; a retrieval captioner adds each photo's neighbour titles)."""
        vision = self.encode_images(batch["pixel_values"], batch.get("has_image"))
        batch = self.with_neighbours(batch, vision)
        context = {"exclude": batch["ids"], "has_image": batch.get("has_image")}
        return self._caption(vision, batch["prompt_ids"], batch["prompt_mask"], **context, **generation)

    def rerank_settings(self, value: Any = None) -> dict[str, Any] | None:
        """The consensus reranking a caption call gets: the model's ``rerank`` for None, off for False, the model's
        (or :data:`RERANK_DEFAULTS`) for True, a mapping over those; a one-line error without a caption memory."""
        if value is None:
            settings = self.rerank
        elif isinstance(value, dict):
            settings = check_rerank({**(self.rerank or {}), **value})
        else:
            settings = check_rerank((self.rerank or RERANK_DEFAULTS) if value is True else value)
        if settings is not None and self.memory is None:
            raise UserError(
                "rerank: this captioner holds no caption memory to rerank against: fit it with model.rerank or "
                "model.retrieval set (the memory of the training photos and titles is saved in the checkpoint)"
            )
        return settings

    def consensus(self) -> CiderConsensus:
        """CIDEr-D scorer whose document frequencies are the caption memory's titles (built once per memory)."""
        if self.memory is None:
            raise UserError("rerank: this captioner holds no caption memory")
        if self._consensus is None or self._consensus[0] is not self.memory:
            self._consensus = (self.memory, CiderConsensus(self.memory.titles))
        return self._consensus[1]

    @torch.no_grad()
    def generate_from_features(
        self,
        vision: Features,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        use_cache: bool = True,
        exclude: list[str] | None = None,
        has_image: Tensor | None = None,
        **options: Any,
    ) -> Captions:
        """:meth:`generate` from vision features computed beforehand (cached features, benchmarks).

        With consensus reranking (``rerank`` option, or the model's), ``exclude`` holds each item's product id (its
        own title is never a neighbour) and items whose ``has_image`` is False keep the best-scored candidate."""
        rerank = self.rerank_settings(options.pop("rerank", None))
        if rerank is not None:
            n = rerank["candidates"]
            if not options.get("do_sample"):
                options["num_beams"] = max(int(options.get("num_beams") or 1), n)
            options["num_return_sequences"] = n
        captions = self._generate(vision, prompt_ids, prompt_mask, use_cache, **options)
        if rerank is None:
            return captions
        return self._rerank(vision, captions, rerank, exclude, has_image)

    def _rerank(
        self,
        vision: Features,
        captions: Captions,
        rerank: dict[str, Any],
        exclude: list[str] | None,
        has_image: Tensor | None,
    ) -> Captions:
        """One caption per item out of its ``candidates`` consecutive ones: the best consensus with its neighbours."""
        assert self.memory is not None
        neighbours = self.memory.neighbours(vision, rerank["k"], exclude=exclude)
        present = [True] * len(neighbours) if has_image is None else [bool(h) for h in has_image.tolist()]
        titles = [
            [self.memory.titles[r] for r in rows] if on else [] for rows, on in zip(neighbours, present, strict=True)
        ]
        texts, scores = self.consensus().pick(captions.texts, captions.scores, titles, rerank["weight"])
        return Captions(texts=texts, scores=scores)

    def _generate(
        self, vision: Features, prompt_ids: Tensor, prompt_mask: Tensor, use_cache: bool, **options: Any
    ) -> Captions:
        kept = self.output_token_ids(options.pop("trim_vocabulary", None))
        cond = self.conditioning(vision)
        ids, mask, put_prefix = self._inputs(cond, prompt_ids, prompt_mask)
        with self.lm.input_transform(put_prefix), self.lm.hidden_transform(cond.hidden):
            out = self.lm.generate(
                ids,
                mask,
                cond.encoder,
                use_cache=use_cache,
                output_token_ids=kept,
                return_dict_in_generate=True,
                output_scores=True,
                **options,
            )
        seqs = out.sequences[:, ids.shape[1] :]  # (B * num_return_sequences, L) new tokens only
        texts = [t.strip() for t in self.lm.tokenizer.batch_decode(seqs, skip_special_tokens=True)]
        return Captions(texts=texts, scores=self._scores(out, seqs, kept), tokens=seqs)

    def output_token_ids(self, trim_vocabulary: bool | None) -> Tensor | None:
        """The ids generation may write: :attr:`caption_token_ids` unless ``trim_vocabulary`` is False (None: when
        known); None means the whole vocabulary."""
        check_trim_vocabulary(trim_vocabulary)
        if trim_vocabulary and self.caption_token_ids is None:
            raise UserError(
                "trim_vocabulary: this captioner holds no training-target token ids (a checkpoint written before "
                "vocabulary trimming, or a model never fitted); generate with trim_vocabulary off"
            )
        return None if trim_vocabulary is False else self.caption_token_ids

    def _scores(self, out: Any, seqs: Tensor, kept: Tensor | None) -> list[float]:
        if getattr(out, "sequences_scores", None) is not None:  # beam search: length-normalised log-probability
            return [round(float(s), 6) for s in out.sequences_scores]
        columns = getattr(out, "score_token_ids", None)  # generated in a compact id space: scores (B, K')
        picked = seqs if columns is None else torch.searchsorted(columns, seqs.contiguous())  # the tokens' columns
        kept = None if columns is not None else kept
        logp = torch.stack([_token_logprob(s, picked[:, t], kept) for t, s in enumerate(out.scores)], 1)  # (B, L)
        ended = (seqs == self.lm.eos_id).long().cumsum(1)
        keep = (ended == 0) | ((ended == 1) & (seqs == self.lm.eos_id))  # tokens up to and including the first eos
        mean = (logp.masked_fill(~keep, 0).sum(1) / keep.sum(1).clamp(min=1)).tolist()
        return [round(float(s), 6) for s in mean]

    def drop_words(self, input_ids: Tensor, labels: Tensor) -> Tensor:
        """``input_ids (B, T)`` with each target token (a label other than ``[eos]``) replaced by the mask
        token with chance ``word_dropout``; prompt, ``[bos]`` and padding are never touched."""
        if self._dropped_word_id is None:
            return input_ids
        target = (labels != IGNORE_INDEX) & (input_ids != self.lm.eos_id)
        drop = target & (torch.rand(input_ids.shape, device=input_ids.device) < self.word_dropout)
        return input_ids.masked_fill(drop, self._dropped_word_id)

    def hold_language_model(self, step: int) -> None:
        """Before optimizer step ``step`` (0-based): while ``step < lm_warmup_steps``, drop the gradients of the
        LM's pretrained weights so the optimizer leaves them (and their moments) untouched."""
        if step < self.lm_warmup_steps:
            for p in self.lm.pretrained_parameters():
                p.grad = None

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.hold_language_model(self.global_step)

    # ---------------------------------------------------------------------------------------------- steps
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        if not batch["ids"]:
            return None
        vision = self.encode_images(batch["pixel_values"], batch.get("has_image"))
        batch = self.with_neighbours(batch, vision)
        if self.self_critical_on(self.current_epoch):
            loss, reward = self.self_critical_loss(vision, batch)
            self.log("train/reward", reward, prog_bar=True, batch_size=len(batch["ids"]))
        else:
            ids = self.drop_words(batch["input_ids"], batch["caption_labels"])  # unchanged without word dropout
            loss = self.loss(self.logits(vision, ids, batch["attention_mask"]), batch["caption_labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["ids"]))
        return loss

    # ----------------------------------------------------------------------------------- self-critical
    def self_critical_on(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) trains with :meth:`self_critical_loss` instead of teacher forcing."""
        return self.self_critical is not None and epoch >= self.self_critical["start_epoch"]

    def start_self_critical(self, optimizer: torch.optim.Optimizer, schedulers: list[Any] = ()) -> None:
        """Multiply the learning rates of ``optimizer`` (and the base rates of ``schedulers``) by ``lr_scale`` and
        clear its per-parameter state (Adam's moments: the policy gradient has another scale than the cross-entropy's),
        once: a mark in the parameter groups, saved with the optimizer's state, stops a resumed run doing it again."""
        assert self.self_critical is not None
        scale = self.self_critical["lr_scale"]
        if all(group.get("self_critical") for group in optimizer.param_groups):
            return
        optimizer.state.clear()
        for group in optimizer.param_groups:
            group["lr"] *= scale
            group["self_critical"] = True
        for scheduler in schedulers:
            if hasattr(scheduler, "base_lrs"):
                scheduler.base_lrs = [lr * scale for lr in scheduler.base_lrs]

    def on_train_epoch_start(self) -> None:
        if self.self_critical_on(self.current_epoch):
            if self.reward is None:
                raise UserError("model.self_critical: no training target texts to reward the samples against")
            optimizers = self.optimizers(use_pl_optimizer=False)
            schedulers = [config.scheduler for config in self.trainer.lr_scheduler_configs]
            for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
                self.start_self_critical(optimizer, schedulers)

    def self_critical_loss(self, vision: Features, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """REINFORCE loss of ``samples`` sampled captions per item of an encoded ``batch`` (its prompts and
        ``references``) and their mean CIDEr-D reward.

        Each sample's advantage is its reward minus the mean reward of the item's other samples; items without a
        reference get none. The log-probabilities are those of the sampled tokens after the item's prompt (dropout
        on, as in training), up to and including the first ``[eos]``: a sample cut by ``max_new_tokens`` has none."""
        if self.reward is None:
            raise UserError("model.self_critical: no reward: the training targets' CIDEr-D document frequencies")
        n, count = len(batch["references"]), (self.self_critical or SELF_CRITICAL_DEFAULTS)["samples"]
        training = self.training
        self.eval()
        try:
            with torch.no_grad():
                sampled = self._generate(vision, batch["prompt_ids"], batch["prompt_mask"], use_cache=True,
                                         do_sample=True, num_beams=1, num_return_sequences=count,
                                         max_new_tokens=int(self.generation.get("max_new_tokens", 24)))  # fmt: skip
        finally:
            self.train(training)
        rewards = torch.zeros(n, count)
        for i, reference in enumerate(batch["references"]):
            if reference:
                texts = sampled.texts[i * count : (i + 1) * count]
                rewards[i] = torch.tensor([self.reward.similarity(t, reference) for t in texts])
        advantage = rewards - (rewards.sum(1, keepdim=True) - rewards) / (count - 1)
        assert sampled.tokens is not None
        pairs = zip(batch["prompt_ids"], batch["prompt_mask"], strict=True)
        prompts = [row[real.bool()].tolist() for row, real in pairs]  # [bos] prompt, left padding dropped
        eos, seqs, labels = self.lm.eos_id, [], []
        for row, new in enumerate(sampled.tokens.tolist()):
            prompt = prompts[row // count]
            new = new[: new.index(eos) + 1] if eos in new else new
            seqs.append(prompt + new)
            labels.append([IGNORE_INDEX] * len(prompt) + new)
        device = vision.tokens.device
        ids = _pad(seqs, self.lm.pad_id, left=False).to(device)
        mask = _pad([[1] * len(q) for q in seqs], 0, left=False).to(device)
        rows = torch.arange(n, device=device).repeat_interleave(count)
        repeated = Features(tokens=vision.tokens[rows], mask=vision.mask[rows], pooled=vision.pooled[rows])
        skip = min(len(p) for p in prompts) - 1  # the shortest prompt's positions predict no sample token; bos kept
        logits = self.logits(repeated, ids, mask, skip=skip)  # (B, T - skip, V): the prompts' positions are no targets
        target = _pad(labels, IGNORE_INDEX, left=False).to(device)[:, skip + 1 :]
        logp = -F.cross_entropy(logits[:, :-1].transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none")
        valid = (target != IGNORE_INDEX).float()
        weight = advantage.reshape(-1, 1).to(device, logp.dtype) * valid
        return -(weight * logp).sum() / valid.sum().clamp(min=1), rewards.mean()

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        if not batch["ids"]:
            return
        n = len(batch["ids"])
        vision = self.encode_images(batch["pixel_values"], batch.get("has_image"))
        batch = self.with_neighbours(batch, vision)
        self.log(
            f"{stage}/loss",
            self.loss(self.logits(vision, batch["input_ids"], batch["attention_mask"]), batch["caption_labels"]),
            prog_bar=True,
            batch_size=n,
            sync_dist=True,
        )
        context = {"exclude": batch["ids"], "has_image": batch.get("has_image")}
        captions = self._caption(vision, batch["prompt_ids"], batch["prompt_mask"], **context)
        preds, refs = self._outputs.setdefault(stage, ([], []))
        for text, ref in zip(captions.texts, batch["references"], strict=True):
            if ref is not None:
                preds.append(text)
                refs.append(ref)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _epoch_end(self, stage: str) -> None:
        preds, refs = self._outputs.pop(stage, ([], []))
        if not preds:
            return
        scores = caption_scores(preds, refs)
        self.log_dict({f"{stage}/{k}": v for k, v in scores.items()}, prog_bar=stage == "val")
        for pred, ref in list(zip(preds, refs, strict=True))[: self.log_examples]:
            rank_zero_info(f"{stage} example: generated {pred!r}, reference {ref!r}")

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Captions of a batch with ``generation`` updated by ``predict_options``; with input ``positions`` (batch
        jobs, the Python API) the torch seed is ``predict_seed`` + the first item's position: with the same batch size,
        sampling gives an item the same caption whatever the number of processes or a resume."""
        if not batch["ids"]:
            return {"ids": [], "captions": [], "scores": []}
        if batch.get("positions"):
            torch.manual_seed(self.predict_seed + batch["positions"][0])
        captions = self.caption_batch(batch, **self.predict_options)
        return {"ids": batch["ids"], "captions": captions.texts, "scores": captions.scores}
