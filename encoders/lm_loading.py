"""Building a Hugging Face causal language model and its tokenizer as a decoder, and adding cross-attention later.

Encoder-only checkpoints (BERT family) are loaded with ``is_decoder=True``; their ``[CLS]``/``[SEP]`` tokens serve
as begin/end of a caption. GPT-2-family models are used as they are.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from encoders.freezing import Trainable, set_trainable
from encoders.hf_loading import quietly, report_missing


def load_decoder(
    model_name_or_path: str | None,
    model_type: str | None,
    tokenizer: str | None,
    config_overrides: dict[str, Any] | None,
    random_init: bool,
    head_init: str,
) -> tuple[Any, PreTrainedModel]:
    """The tokenizer and the causal LM, with begin/end/padding ids set in its config and generation config.

    Args:
        model_name_or_path: hub id or local directory (model and tokenizer), or None with ``model_type``.
        model_type: a Hugging Face model type built from ``config_overrides`` with random weights.
        tokenizer: tokenizer directory or hub id (default: ``model_name_or_path``).
        config_overrides: architecture settings changed from the saved config (``is_decoder`` is always set).
        random_init: build the architecture with random weights, keeping the tokenizer.
        head_init: ``"identity"`` starts the LM head's transform the checkpoint lacks as the identity
            (:func:`identity_head_transform`); ``"random"`` keeps Hugging Face's random init.

    Raises:
        ValueError: both or neither of ``model_name_or_path`` and ``model_type``, no tokenizer, unknown
            ``head_init``, or a tokenizer without begin/end tokens.
    """
    if (model_name_or_path is None) == (model_type is None):
        raise ValueError("give exactly one of model_name_or_path (pretrained) or model_type (built from config)")
    tokenizer_path = tokenizer or model_name_or_path
    if tokenizer_path is None:
        raise ValueError(f"model_type '{model_type}' needs a tokenizer (local directory or hub id)")
    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    overrides = {"is_decoder": True, **(config_overrides or {})}
    if model_type is not None:
        config = AutoConfig.for_model(model_type, vocab_size=len(tok), **overrides)
        random_init = True
    else:
        config = AutoConfig.from_pretrained(model_name_or_path, **overrides)
    special = dict(zip(("bos_token_id", "eos_token_id", "pad_token_id"), special_ids(tok), strict=True))
    for key, value in special.items():
        setattr(config, key, value)
    if random_init:
        model = AutoModelForCausalLM.from_config(config)
    else:
        model = pretrained(model_name_or_path, config, head_init)
    for key, value in special.items():
        setattr(model.generation_config, key, value)
    return tok, model


def pretrained(model_name_or_path: Any, config: Any, head_init: str) -> PreTrainedModel:
    """The pretrained causal LM, loaded quietly; the head weights the checkpoint lacked start as ``head_init`` says."""
    with quietly():
        model, info = AutoModelForCausalLM.from_pretrained(model_name_or_path, config=config, output_loading_info=True)
    report_missing(str(model_name_or_path), info["missing_keys"], head_prefixes(model))
    if head_init == "identity":
        identity_head_transform(model, set(info["missing_keys"]))
    elif head_init != "random":
        raise ValueError(f"head_init must be 'identity' or 'random', not {head_init!r}")
    return model


def head_prefixes(model: PreTrainedModel) -> list[str]:
    """The key prefix of the LM head (``cls.`` for BERT, ``lm_head.`` for GPT-2): the part of a decoder that an
    encoder checkpoint does not have, or that is tied to the embeddings."""
    head = model.get_output_embeddings()
    names = [name for name, module in model.named_modules() if module is head and name]
    return [names[0].split(".")[0] + "."] if names else []


def special_ids(tokenizer: Any) -> tuple[int, int, int]:
    """Begin, end and padding ids: GPT-2's ``<|endoftext|>`` or BERT's ``[CLS]``/``[SEP]``/``[PAD]``."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if bos is None or eos is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has neither bos/eos nor cls/sep tokens")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad)
    return int(bos), int(eos), int(pad)


def identity_head_transform(model: nn.Module, missing: set[str]) -> None:
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


def with_cross_attention(model: PreTrainedModel, trainable: Trainable) -> tuple[PreTrainedModel, set[str]]:
    """``model`` rebuilt with cross-attention layers, every existing weight kept, and the names of the new
    parameters (they always train).

    Raises:
        ValueError: a weight of ``model`` has no place in the rebuilt one.
    """
    config = model.config
    config.add_cross_attention = True
    new = AutoModelForCausalLM.from_config(config)
    set_trainable(new, trainable)  # first: peft adapters rename the weights they wrap
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    if unexpected:
        raise ValueError(f"cross-attention rebuild lost weights: {unexpected[:5]}")
    new.generation_config = model.generation_config
    for name, param in new.named_parameters():
        if name in missing:
            param.requires_grad_(True)
    return new, set(missing)
