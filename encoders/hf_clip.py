"""Hugging Face CLIP and SigLIP models (``CLIPModel``, ``SiglipModel``) as a vision tower and a text tower that keep
the model's joint space: pooled is ``get_image_features`` / ``get_text_features`` (after the model's projection)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer, CLIPModel, SiglipModel

from encoders.errors import ConfigError
from encoders.freezing import Trainable, set_trainable
from encoders.hf_loading import load_pretrained
from encoders.hf_vision import HFImageTransform
from encoders.pair import AlignedSpace, AlignedTower, LoadedPair, take_part
from encoders.types import Features, ImageTransform, TextEncoder, VisionEncoder


def _load(model_name_or_path: str) -> LoadedPair:
    model = load_pretrained(AutoModel, model_name_or_path)
    if not isinstance(model, CLIPModel | SiglipModel):
        raise ConfigError(f"{model_name_or_path} is a {type(model).__name__}, not a CLIPModel or SiglipModel")
    model.train()  # from_pretrained returns eval mode; Lightning keeps module modes as found
    clip = isinstance(model, CLIPModel)
    parts = {
        "vision": (model.vision_model, model.visual_projection if clip else None),
        "text": (model.text_model, model.text_projection if clip else None),
    }
    space = AlignedSpace(f"hf:{model_name_or_path}", float(model.logit_scale.detach().reshape(-1)[0]))
    return LoadedPair(parts=parts, extras={"space": space, "clip": clip})


def hf_clip_part(model_name_or_path: str, part: str) -> tuple[tuple[nn.Module, nn.Module | None], LoadedPair]:
    """``(model, projection or None)`` of the ``vision`` or ``text`` side of a CLIP / SigLIP model, loaded once for
    both towers; with the load's extras (``space``, ``clip``: True for CLIP, False for SigLIP)."""
    return take_part(("hf", model_name_or_path), part, lambda: _load(model_name_or_path))


def _project(projection: nn.Module | None, x: Tensor) -> Tensor:
    return projection(x) if projection is not None else x


class MaxLengthPadding:
    """A Hugging Face tokenizer that pads every text to ``length`` whatever the call asks (picklable): SigLIP read
    fixed-length text in training and pools its last position, so a text's vector must not depend on its batch.

    Args:
        tokenizer: the Hugging Face tokenizer.
        length: tokens per text.
    """

    def __init__(self, tokenizer: Any, length: int) -> None:
        self.tokenizer, self.length = tokenizer, length

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.vocab_size)

    @property
    def all_special_ids(self) -> list[int]:
        return list(self.tokenizer.all_special_ids)

    def save_pretrained(self, path: Any) -> Any:
        return self.tokenizer.save_pretrained(path)

    def __call__(self, texts: Sequence[str], **call: Any) -> dict[str, Tensor]:
        """``input_ids`` and ``attention_mask`` ``(B, length)``; the call's other options are accepted."""
        enc = self.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.length,
            return_tensors="pt",
            return_attention_mask=True,
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


class HFClipVisionEncoder(VisionEncoder, AlignedTower):
    """The image tower of a Hugging Face CLIP or SigLIP model, by hub id or local directory: pooled is the model's
    ``get_image_features``; tokens are the last hidden states, projected the same way. It declares the model's joint
    space (``aligned_space``), shared with :class:`HFClipTextEncoder` of the same model.

    Args:
        model_name_or_path: hub id or local directory holding the model and ``preprocessor_config.json``.
        trainable: True, False, N to train only the last N layers (and the projection), or a peft method.
    """

    def __init__(self, model_name_or_path: str, trainable: Trainable = True) -> None:
        super().__init__()
        (self.vision_model, self.projection), loaded = hf_clip_part(model_name_or_path, "vision")
        self.weights_source = {"package": "transformers", "model": model_name_or_path}
        self.aligned_space = loaded.extras["space"]
        self.processor = AutoImageProcessor.from_pretrained(model_name_or_path)
        hidden = int(self.vision_model.config.hidden_size)
        self.output_dim: int = self.projection.out_features if self.projection is not None else hidden
        self.trainable = trainable
        set_trainable(self, trainable)

    def image_transform(self, train: bool) -> ImageTransform:
        # HF processors resize and normalise only; training augmentation is left to the processor's settings.
        return HFImageTransform(self.processor)

    def forward(self, pixel_values: Tensor) -> Features:
        out = self.vision_model(pixel_values=pixel_values)
        tokens = _project(self.projection, out.last_hidden_state)  # (B, N, D)
        pooled = _project(self.projection, out.pooler_output)  # (B, D)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return Features(tokens=tokens, mask=mask, pooled=pooled)


class HFClipTextEncoder(TextEncoder, AlignedTower):
    """The text tower of a Hugging Face CLIP or SigLIP model, by hub id or local directory, with the model's
    tokenizer: pooled is the model's ``get_text_features``; tokens are the last hidden states, projected the same
    way. It declares the model's joint space (``aligned_space``), shared with :class:`HFClipVisionEncoder`.

    CLIP reads its attention mask (padding to the batch's longest text changes nothing: its attention is causal
    and it pools the end token). SigLIP was trained on unmasked text padded to its full length and pools the last
    position: its tokenizer always pads to that length and the model reads no mask.

    Args:
        model_name_or_path: hub id or local directory holding the model and its tokenizer.
        max_length: tokens kept per text (default and, for SigLIP, the only value: the model's text length).
        trainable: True, False, N to train only the last N layers (and the projection), or a peft method.
    """

    def __init__(self, model_name_or_path: str, max_length: int | None = None, trainable: Trainable = True) -> None:
        super().__init__()
        (self.text_model, self.projection), loaded = hf_clip_part(model_name_or_path, "text")
        self.weights_source = {"package": "transformers", "model": model_name_or_path}
        self.aligned_space = loaded.extras["space"]
        self.reads_mask: bool = loaded.extras["clip"]
        limit = int(self.text_model.config.max_position_embeddings)
        length = limit if max_length is None else max_length
        if not 0 < length <= limit or (not self.reads_mask and length != limit):
            allowed = f"exactly {limit} for SigLIP" if not self.reads_mask else f"1 to {limit}"
            raise ConfigError(f"text.max_length {max_length} does not fit {model_name_or_path} ({allowed})")
        tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
        self._tokenizer = tokenizer if self.reads_mask else MaxLengthPadding(tokenizer, length)
        self.max_length = length
        # CLIP projects after its text model; SigLIP's text model ends in its own projection (``head``).
        last = self.projection if self.projection is not None else self.text_model.head
        self.output_dim: int = int(last.out_features)
        self.trainable = trainable
        set_trainable(self, trainable)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Features:
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask if self.reads_mask else None)
        tokens = _project(self.projection, out.last_hidden_state)  # (B, T, D)
        pooled = _project(self.projection, out.pooler_output)  # (B, D)
        return Features(tokens=tokens, mask=attention_mask.bool(), pooled=pooled)
