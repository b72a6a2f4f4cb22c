"""open_clip text towers (any ``open_clip.list_models()`` name, or ``hf-hub:<repo>``) as text encoders, with
open_clip's own tokenizer behind the Hugging Face tokenizer call the text pipelines make."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import open_clip
import torch
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import TextTransformer
from torch import Tensor, nn

from encoders.errors import ConfigError
from encoders.freezing import Trainable, set_trainable
from encoders.open_clip_loading import open_clip_part, weights_source
from encoders.pair import AlignedTower
from encoders.types import Features, TextEncoder


class OpenClipTokenizer:
    """An open_clip tokenizer called as a Hugging Face one: ``tokenizer(texts, padding=True, truncation=True,
    max_length=..., return_tensors="pt")`` -> ``input_ids`` and ``attention_mask`` ``(B, L)`` (picklable).

    Every text is padded or truncated to the model's context length ``L`` whatever ``max_length`` says: open_clip
    text towers read exactly that many positions (SigLIP's pools the last one), as ``open_clip.tokenize`` gives them.
    The mask marks the tokens before the padding (the first token always, so an empty text keeps one).

    Args:
        tokenizer: what ``open_clip.get_tokenizer`` returns.
        context_length: ``L``.
    """

    def __init__(self, tokenizer: Any, context_length: int) -> None:
        self.tokenizer, self.context_length = tokenizer, context_length
        # open_clip's own BPE pads with 0; its Hugging Face based tokenizers with their tokenizer's pad id.
        self.pad_id = 0 if isinstance(tokenizer, SimpleTokenizer) else int(tokenizer.tokenizer.pad_token_id)

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of the special tokens (start, end, padding)."""
        inner = self.tokenizer if isinstance(self.tokenizer, SimpleTokenizer) else self.tokenizer.tokenizer
        return sorted({*inner.all_special_ids, self.pad_id})

    def save_pretrained(self, path: Any) -> None:
        """Not possible: open_clip's tokenizers are not Hugging Face ones (the ONNX export needs one)."""
        raise ConfigError(
            "an open_clip text tower's tokenizer cannot be saved as a Hugging Face tokenizer: "
            "exporting a model with open_clip text to ONNX is not supported yet"
        )

    def __call__(self, texts: Sequence[str], **call: Any) -> dict[str, Tensor]:
        """Token ids and mask ``(B, L)``; the Hugging Face call's options (padding, truncation, max_length,
        return_tensors) are accepted and the model's fixed length applies."""
        ids = self.tokenizer(list(texts), context_length=self.context_length)  # (B, L)
        mask = ids != self.pad_id
        mask[:, 0] = True
        return {"input_ids": ids, "attention_mask": mask.long()}


class OpenClipTextEncoder(TextEncoder, AlignedTower):
    """The text tower of an open_clip model: pooled is ``encode_text`` (after the model's projection, in the space
    of its image tower); tokens are the final-layer token states, projected the same way. With pretrained weights
    it declares the model's joint space (``aligned_space``), shared with
    :class:`encoders.open_clip_encoder.OpenClipVisionEncoder` of the same model; built after (or before) that tower
    with the same settings, both come from one load.

    Args:
        model_name: an ``open_clip.list_models()`` name, the name of a config added with ``model_config``, or
            ``hf-hub:<repo>`` (config, weights and tokenizer from the Hugging Face Hub; ``pretrained`` is not read).
        pretrained: a pretrained tag (needs the network the first time) or a local checkpoint file; None for random.
        model_config: optional custom architecture (open_clip's JSON layout: ``embed_dim``, ``vision_cfg``,
            ``text_cfg``), registered under ``model_name``; for small or unusual towers.
        trainable: True, False, N to train only the last N transformer blocks, or a peft method.
    """

    def __init__(
        self,
        model_name: str,
        pretrained: str | None = None,
        model_config: dict[str, Any] | None = None,
        trainable: Trainable = True,
    ) -> None:
        super().__init__()
        self.text_model, loaded = open_clip_part(model_name, pretrained, model_config, "text")
        self.weights_source = weights_source(model_name, pretrained)
        self.aligned_space = loaded.extras["space"]
        # open_clip's transformer can return its token states next to the pooled embedding (a Hugging Face text
        # model inside open_clip returns them at another width and length: there the pooled vector is the token).
        self.has_tokens = isinstance(self.text_model, TextTransformer)
        length = self.text_model.context_length if self.has_tokens else None
        self.text_model.output_tokens = self.has_tokens
        tokenizer = open_clip.get_tokenizer(model_name, context_length=length)
        self._tokenizer = OpenClipTokenizer(tokenizer, int(tokenizer.context_length))
        self.max_length: int = self._tokenizer.context_length
        self.output_dim: int = int(self.text_model.output_dim)
        self.trainable = trainable
        set_trainable(self.text_model, trainable)

    @property
    def tokenizer(self) -> OpenClipTokenizer:
        return self._tokenizer

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Features:
        """Encode ``(B, L)`` ids from :attr:`tokenizer`: tokens ``(B, L, D)`` (or the pooled vector as one token),
        pooled ``(B, D)`` as open_clip's ``encode_text`` gives it."""
        if not self.has_tokens:
            pooled = self.text_model(input_ids)
            mask = torch.ones(pooled.shape[0], 1, dtype=torch.bool, device=pooled.device)
            return Features(tokens=pooled.unsqueeze(1), mask=mask, pooled=pooled)
        pooled, tokens = self.text_model(input_ids)  # (B, D), (B, L, W)
        projection = self.text_model.text_projection
        if tokens.shape[-1] != pooled.shape[-1]:
            # Token states live before the final projection: project them into the pooled vector's space.
            tokens = projection(tokens) if isinstance(projection, nn.Module) else tokens @ projection
        return Features(tokens=tokens, mask=attention_mask.bool(), pooled=pooled)
