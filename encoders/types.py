"""The one typed output shared by every encoder and fusion block, and the encoder interfaces."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Self

import torch
from torch import Tensor, nn

from encoders.freezing import freeze_norm_statistics


@dataclass
class Features:
    """Token features with their padding mask and one pooled vector per item.

    Attributes:
        tokens: ``(B, N, D)`` token features.
        mask: ``(B, N)`` bool, True where the token is real, False where it is padding.
        pooled: ``(B, D)`` one vector per item.
    """

    tokens: Tensor
    mask: Tensor
    pooled: Tensor

    @property
    def dim(self) -> int:
        return self.tokens.shape[-1]

    def take(self, rows: Tensor) -> Features:
        """The features of items ``rows (K,)`` (indices into the batch, repeats allowed), in that order."""
        return Features(tokens=self.tokens[rows], mask=self.mask[rows], pooled=self.pooled[rows])

    def select(self, keep: Tensor, fallback: Features) -> Features:
        """Per item, keep these features where ``keep`` is True, else take ``fallback``'s (broadcast on batch).

        Args:
            keep: ``(B,)`` bool.
            fallback: features with batch size 1 or B; its token count may differ from this one's.
        """
        b, n = self.mask.shape
        n_fb = fallback.tokens.shape[1]
        width = max(n, n_fb)
        tokens, mask = _pad_tokens(self.tokens, self.mask, width)
        fb_tokens, fb_mask = _pad_tokens(fallback.tokens.expand(b, -1, -1), fallback.mask.expand(b, -1), width)
        k = keep.view(b, 1, 1)
        return Features(
            tokens=torch.where(k, tokens, fb_tokens),
            mask=(mask & keep.view(b, 1)) | (fb_mask & ~keep.view(b, 1)),  # (ONNX Runtime has no bool Where)
            pooled=torch.where(keep.view(b, 1), self.pooled, fallback.pooled.expand(b, -1)),
        )


def _pad_tokens(tokens: Tensor, mask: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Right-pad ``(B, N, D)`` tokens and ``(B, N)`` mask to ``width`` tokens."""
    extra = width - tokens.shape[1]
    if extra == 0:
        return tokens, mask
    return nn.functional.pad(tokens, (0, 0, 0, extra)), nn.functional.pad(mask, (0, extra), value=False)


ImageTransform = Callable[[Any], Tensor]


class Tower(nn.Module):
    """Base of the vision and text encoders: frozen batch norms keep using their running statistics in training
    (:func:`encoders.freezing.freeze_norm_statistics`), so a frozen tower is the same function in training and
    at inference.

    ``weights_source`` says where a tower's pretrained weights came from (``package``, ``model``, ``pretrained``,
    ``file``, as the tower knows them), or is None for a random init: a checkpoint then stores a reference to those
    weights instead of the ones training left frozen (:mod:`multimodal.pretrained_reference`).
    """

    weights_source: dict[str, str] | None = None

    def train(self, mode: bool = True) -> Self:
        super().train(mode)
        freeze_norm_statistics(self)
        return self


class VisionEncoder(Tower, ABC):
    """Maps ``pixel_values (B, 3, H, W)`` to :class:`Features` and owns its image preprocessing."""

    output_dim: int

    @abstractmethod
    def forward(self, pixel_values: Tensor) -> Features:
        """Encode images: ``(B, 3, H, W)`` -> tokens ``(B, N, D)``, pooled ``(B, D)``."""

    def encode_photos(self, pixel_values: Tensor, photo_mask: Tensor | None = None) -> Features:
        """Encode one photo per product ``(B, 3, H, W)``, or several: ``(B, P, 3, H, W)`` with ``photo_mask (B, P)``
        (True for a real photo), through :func:`photo_features`. Only real photos are encoded."""
        if pixel_values.dim() != 5:  # one photo per product (or what a stand-in tower reads, e.g. cached ids)
            return self(pixel_values)
        b, p = pixel_values.shape[:2]
        if photo_mask is None:
            photo_mask = torch.ones(b, p, dtype=torch.bool, device=pixel_values.device)
        real = self(pixel_values[photo_mask])
        n, d = real.tokens.shape[1:]
        tokens = real.tokens.new_zeros(b, p, n, d)
        tokens[photo_mask] = real.tokens
        mask = real.mask.new_zeros(b, p, n)
        mask[photo_mask] = real.mask
        pooled = real.pooled.new_zeros(b, p, real.pooled.shape[-1])
        pooled[photo_mask] = real.pooled
        return photo_features(Features(tokens, mask, pooled), photo_mask)


def photo_features(photos: Features, photo_mask: Tensor) -> Features:
    """One :class:`Features` per product from its photos' (tokens ``(B, P, N, D)``, mask ``(B, P, N)``, pooled
    ``(B, P, D)``): the tokens of every photo side by side ``(B, P*N, D)`` (a padding photo's masked and zero), and
    the mean of the real photos' pooled vectors. No photo index is added: a product's photos are a set, so a block
    that reads tokens as a set (every fusion block) or the pooled mean gives the same output in any photo order."""
    b, p, n, d = photos.tokens.shape
    mask = photos.mask & photo_mask.unsqueeze(-1)
    tokens = photos.tokens * mask.unsqueeze(-1).to(photos.tokens.dtype)
    weight = photo_mask.unsqueeze(-1).to(photos.pooled.dtype)
    pooled = (photos.pooled * weight).sum(1) / weight.sum(1).clamp(min=1.0)
    return Features(tokens.reshape(b, p * n, d), mask.reshape(b, p * n), pooled)

    @abstractmethod
    def image_transform(self, train: bool) -> ImageTransform:
        """A picklable callable that turns an RGB PIL image into a ``(3, H, W)`` float tensor."""


class TextEncoder(Tower, ABC):
    """Maps token ids to :class:`Features` and owns its tokenizer."""

    output_dim: int
    max_length: int

    @property
    @abstractmethod
    def tokenizer(self) -> Any:
        """A Hugging Face tokenizer (callable on a list of strings)."""

    @abstractmethod
    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Features:
        """Encode ``(B, T)`` token ids with their ``(B, T)`` attention mask."""

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, Tensor]:
        """Tokenize a batch into padded ``input_ids`` and ``attention_mask`` of shape ``(B, T)``."""
        return tokenize(self.tokenizer, texts, max_length or self.max_length)


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> dict[str, Tensor]:
    """``texts`` through a Hugging Face tokenizer: padded, truncated ``input_ids`` and ``attention_mask`` ``(B, T)``."""
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
