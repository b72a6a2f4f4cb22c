"""open_clip image towers (any ``open_clip.list_models()`` name, or ``hf-hub:<repo>``) as vision encoders."""

from __future__ import annotations

from typing import Any

import torch
from open_clip.transformer import VisionTransformer
from torch import Tensor

from encoders.freezing import Trainable, set_trainable
from encoders.open_clip_loading import open_clip_part, weights_source
from encoders.pair import AlignedTower
from encoders.types import Features, ImageTransform, VisionEncoder


class OpenClipVisionEncoder(VisionEncoder, AlignedTower):
    """The visual tower of an open_clip model. With pretrained weights it declares the model's joint space
    (``aligned_space``), shared with :class:`encoders.open_clip_text.OpenClipTextEncoder` of the same model.

    Args:
        model_name: an ``open_clip.list_models()`` name, the name of a config added with ``model_config``, or
            ``hf-hub:<repo>`` (config and weights from the Hugging Face Hub; ``pretrained`` is not read).
        pretrained: a pretrained tag (needs the network the first time) or a local checkpoint file; None for random.
        model_config: optional custom architecture (open_clip's JSON layout: ``embed_dim``, ``vision_cfg``,
            ``text_cfg``), registered under ``model_name``; for small or unusual towers.
        trainable: True, False, or N to train only the last N transformer blocks.
    """

    def __init__(
        self,
        model_name: str,
        pretrained: str | None = None,
        model_config: dict[str, Any] | None = None,
        trainable: Trainable = True,
    ) -> None:
        super().__init__()
        self.visual, loaded = open_clip_part(model_name, pretrained, model_config, "visual")
        self._train_tf, self._eval_tf = loaded.extras["train_transform"], loaded.extras["eval_transform"]
        self.weights_source = weights_source(model_name, pretrained)
        self.aligned_space = loaded.extras["space"]
        # ViTs can return their patch tokens next to the pooled embedding.
        self.has_tokens = isinstance(self.visual, VisionTransformer)
        if self.has_tokens:
            self.visual.output_tokens = True
        self.output_dim: int = self.visual.output_dim
        self.trainable = trainable
        set_trainable(self.visual, trainable)

    def image_transform(self, train: bool) -> ImageTransform:
        return self._train_tf if train else self._eval_tf

    def forward(self, pixel_values: Tensor) -> Features:
        if self.has_tokens:
            pooled, tokens = self.visual(pixel_values)  # (B, D), (B, N, W)
            if tokens.shape[-1] != pooled.shape[-1]:
                # Patch tokens live before the final projection: project them into the same space.
                tokens = tokens @ self.visual.proj if self.visual.proj is not None else tokens
        else:
            pooled = self.visual(pixel_values)
            tokens = pooled.unsqueeze(1)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return Features(tokens=tokens, mask=mask, pooled=pooled)
