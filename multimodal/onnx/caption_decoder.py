"""The captioner's language model as two ONNX graphs with its key/value cache, for decoding on ONNX Runtime alone.

As ``optimum`` exports a decoder (``decoder_model`` and ``decoder_with_past``), the past and present key/value
states are graph inputs and outputs, and the loop that calls them lives outside (:mod:`multimodal.onnx.decoding`):

- ``decoder_first``: what ``caption_vision`` gives the LM (prefix, cross-attention states or image vector), the
  left-padded prompt ids and mask ``(B, T)`` and the ids whose logits are wanted ``vocab_ids (K,)`` -> the logits of
  the last position ``(B, K)``, ``present.{i}.key/value (B, H, S, Dh)`` of every layer and, with cross-attention,
  ``cross.{i}.key/value (B, H, N, Dh)`` (the image tokens' keys and values, computed once).
- ``decoder_step``: one token per row ``(B, 1)``, the mask of every position so far ``(B, S+1)``, ``vocab_ids``,
  the past states (and the cross-attention ones, or the image vector) -> logits ``(B, K)`` and the presents.

Both wrap the captioner's own modules (its conditioning, the Hugging Face model, its cache classes): eager and ONNX
compute the same function. ``vocab_ids`` restricts the output layer to the trimmed vocabulary (or all ids).
Exporting and checking them against eager: :mod:`multimodal.onnx.caption_decoder_export`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from encoders.language_model import positions
from encoders.lm_vocabulary import swapped
from encoders.types import Features
from fusion.conditioning import ConditioningKind, LMCondition
from multimodal.captioning.conditioned import prefixed_inputs

FIRST, STEP = "decoder_first", "decoder_step"


class _ChosenIdsHead(nn.Module):
    """The output layer ``full`` computing the logits of ``ids (K,)`` only: ``hidden (..., D) -> (..., K)``."""

    def __init__(self, full: nn.Module, ids: Tensor) -> None:
        super().__init__()
        self.full, self.ids = full, ids

    def forward(self, hidden: Tensor) -> Tensor:
        bias = getattr(self.full, "bias", None)
        weight = self.full.weight.index_select(0, self.ids)
        return F.linear(hidden, weight, None if bias is None else bias.index_select(0, self.ids))


class _Decoder(nn.Module):
    """Shared by both graphs: the condition from plain tensors, and one call of the LM with a cache."""

    def __init__(self, captioner: nn.Module) -> None:
        super().__init__()
        self.captioner = captioner
        self.kind: ConditioningKind = captioner.conditioning.kind
        self.layers = int(captioner.lm.model.config.num_hidden_layers)

    @property
    def cross(self) -> bool:
        return self.kind is ConditioningKind.CROSS_ATTENTION

    def condition(self, tensors: tuple[Tensor, ...]) -> LMCondition:
        """The :class:`LMCondition` ``caption_vision``'s outputs stand for."""
        if self.kind is ConditioningKind.IMAGE_VECTOR:
            (vector,) = tensors
            fuse = self.captioner.conditioning.fuse
            return LMCondition(hidden=lambda hidden: fuse(hidden, vector), vector=vector)
        tokens, mask = tensors
        part = Features(tokens, mask.bool(), tokens[:, 0])
        return LMCondition(prefix=part) if self.kind is ConditioningKind.PREFIX else LMCondition(encoder=part)

    def run(self, ids: Tensor, mask: Tensor, pos: Tensor, cond: LMCondition, cache: Any, vocab_ids: Tensor,
            put_prefix: Any = None) -> Tensor:  # fmt: skip
        """Logits ``(B, K)`` of the last position; ``cache`` is updated in place."""
        lm = self.captioner.lm
        layer = lm.get_output_layer()
        head = _ChosenIdsHead(layer, vocab_ids)
        head.register_forward_pre_hook(lm._apply_hidden_transform)  # late fusion rewrites what the head reads
        encoder = {}
        if cond.encoder is not None:
            encoder = {"encoder_hidden_states": cond.encoder.tokens, "encoder_attention_mask": cond.encoder.mask.long()}
        with lm.input_transform(put_prefix), lm.hidden_transform(cond.hidden), swapped(lm.model, {layer: head}):
            out = lm.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                           use_cache=True, logits_to_keep=1, **encoder)  # fmt: skip
        return out.logits[:, -1]

    def presents(self, cache: Any, with_cross: bool) -> tuple[Tensor, ...]:
        """``present.{i}.key/value`` of every layer, then (``with_cross``) ``cross.{i}.key/value``."""
        from transformers.cache_utils import EncoderDecoderCache

        own = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
        out = [t for layer in own.layers for t in (layer.keys, layer.values)]
        if with_cross:
            out += [t for layer in cache.cross_attention_cache.layers for t in (layer.keys, layer.values)]
        return tuple(out)


def _cache(past: tuple[Tensor, ...] = (), cross: tuple[Tensor, ...] | None = None) -> Any:
    """A Hugging Face cache holding ``past`` (key, value per layer) and, for cross-attention, ``cross``."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    def filled(states: tuple[Tensor, ...]) -> Any:
        return DynamicCache(list(zip(states[::2], states[1::2], strict=True))) if states else DynamicCache()

    return filled(past) if cross is None else EncoderDecoderCache(filled(past), filled(cross))


class DecoderFirst(_Decoder):
    """Conditioning tensors, ``input_ids, attention_mask (B, T)``, ``vocab_ids (K,)`` -> logits ``(B, K)`` and the
    presents (and the cross-attention states)."""

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        *tensors, input_ids, attention_mask, vocab_ids = inputs
        cond = self.condition(tuple(tensors))
        ids, mask, put_prefix = prefixed_inputs(cond, input_ids, attention_mask, self.captioner.lm.pad_id)
        cache = _cache(cross=() if self.cross else None)
        logits = self.run(ids, mask, positions(mask), cond, cache, vocab_ids, put_prefix)
        return (logits, *self.presents(cache, self.cross))


class DecoderStep(_Decoder):
    """``input_ids (B, 1)``, ``attention_mask (B, S+1)``, ``vocab_ids (K,)``, the conditioning the step reads
    (cross-attention states and mask, or the image vector; nothing for a prefix), the past (and cross) states ->
    logits ``(B, K)`` and the presents ``(B, H, S+1, Dh)``."""

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        input_ids, attention_mask, vocab_ids, *rest = inputs
        n_cond = len(step_condition_names(self.kind))
        tensors, states = tuple(rest[:n_cond]), tuple(rest[n_cond:])
        own, cross = states[: 2 * self.layers], states[2 * self.layers :]
        cond = self.condition(tensors) if n_cond else LMCondition()
        # the next position counts the real tokens so far, as generate's position ids do (left padding)
        pos = attention_mask.long().sum(-1, keepdim=True) - 1
        cache = _cache(own, cross if self.cross else None)
        logits = self.run(input_ids, attention_mask, pos, cond, cache, vocab_ids)
        return (logits, *self.presents(cache, False))


def step_condition_names(kind: ConditioningKind) -> tuple[str, ...]:
    """What a step reads of ``caption_vision``'s outputs: a prefix sits in the cache already."""
    return () if kind is ConditioningKind.PREFIX else kind.tensor_names


def _states(prefix: str, layers: int) -> tuple[str, ...]:
    return tuple(f"{prefix}.{i}.{part}" for i in range(layers) for part in ("key", "value"))


def graph_names(kind: ConditioningKind, layers: int) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """``{graph: (inputs, outputs)}`` of the two decoder graphs."""
    cross = _states("cross", layers) if kind is ConditioningKind.CROSS_ATTENTION else ()
    first_in = (*kind.tensor_names, "input_ids", "attention_mask", "vocab_ids")
    step_in = (
        "input_ids",
        "attention_mask",
        "vocab_ids",
        *step_condition_names(kind),
        *_states("past", layers),
        *cross,
    )
    present = ("logits", *_states("present", layers))
    return {FIRST: (first_in, (*present, *cross)), STEP: (step_in, present)}
