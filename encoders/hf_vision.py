"""Hugging Face vision models (ViT, DINOv2, SigLIP vision, ConvNeXt...) as vision encoders."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from torch import Tensor
from transformers import AutoImageProcessor, AutoModel

from encoders.freezing import Trainable, set_trainable
from encoders.hf_loading import load_pretrained
from encoders.types import Features, ImageTransform, VisionEncoder


class HFImageTransform:
    """Picklable wrapper around a Hugging Face image processor: PIL image -> ``(3, H, W)`` tensor."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image) -> Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]


class HFVisionEncoder(VisionEncoder):
    """Any Hugging Face vision ``AutoModel`` with its image processor, by hub id or local directory.

    Tokens are ``last_hidden_state`` (a ``(B, C, H, W)`` map is flattened to ``(B, H*W, C)``); pooled is the
    model's ``pooler_output`` when it has one, else the mean of the tokens.

    Args:
        model_name_or_path: hub id or local directory holding the model and ``preprocessor_config.json``.
        trainable: True, False, or N to train only the last N layers.
    """

    def __init__(self, model_name_or_path: str, trainable: Trainable = True) -> None:
        super().__init__()
        self.model = load_pretrained(AutoModel, model_name_or_path)
        self.weights_source = {"package": "transformers", "model": model_name_or_path}
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps module modes as found
        self.processor = AutoImageProcessor.from_pretrained(model_name_or_path)
        config = self.model.config
        self.output_dim: int = getattr(config, "hidden_size", None) or config.hidden_sizes[-1]
        self.trainable = trainable
        set_trainable(self.model, trainable)

    def image_transform(self, train: bool) -> ImageTransform:
        # HF processors resize and normalise only; training augmentation is left to the processor's settings.
        return HFImageTransform(self.processor)

    def forward(self, pixel_values: Tensor) -> Features:
        out = self.model(pixel_values=pixel_values)
        tokens = out.last_hidden_state
        if tokens.ndim == 4:  # (B, C, H, W) -> (B, H*W, C)
            tokens = tokens.flatten(2).transpose(1, 2)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None or pooled.ndim != 2:
            pooled = tokens.mean(1)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return Features(tokens=tokens, mask=mask, pooled=pooled)
