"""timm backbones (any model name) as vision encoders."""

from __future__ import annotations

import timm
import torch
from timm.data import create_transform, resolve_model_data_config
from torch import Tensor

from encoders.freezing import Trainable, set_trainable
from encoders.types import Features, ImageTransform, VisionEncoder
from encoders.weights import load_state_file


class TimmVisionEncoder(VisionEncoder):
    """A timm model without its classifier: feature map / patch tokens plus the pooled pre-logits vector.

    Args:
        model_name: any ``timm.list_models()`` name.
        checkpoint_path: optional local weights file (``.pth``/``.pt``/``.bin`` or ``.safetensors``) in timm's
            key names; classifier keys are ignored.
        image_size: square input size; defaults to the model's own.
        trainable: True, False, or N to train only the last N blocks.
        model_kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``, ``img_size``, ``embed_dim``).
    """

    def __init__(
        self,
        model_name: str,
        checkpoint_path: str | None = None,
        image_size: int | None = None,
        trainable: Trainable = True,
        model_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        if model_name not in timm.list_models():
            raise ValueError(f"unknown timm model '{model_name}' (see timm.list_models())")
        self.model = timm.create_model(model_name, pretrained=False, num_classes=0, **(model_kwargs or {}))
        if checkpoint_path is not None:
            self.load_weights(load_state_file(checkpoint_path))
            self.weights_source = {"package": "timm", "model": model_name, "file": str(checkpoint_path)}
        self.output_dim: int = self.model.num_features
        self.data_config = resolve_model_data_config(self.model)
        if image_size is not None:
            self.data_config["input_size"] = (3, image_size, image_size)
        self.trainable = trainable
        set_trainable(self.model, trainable)

    def load_weights(self, state: dict[str, Tensor]) -> None:
        """Load timm-named weights, ignoring the classifier; any other missing key is an error."""
        from encoders.adapters import adapter_state_names, base_layer_names

        state = {k: v for k, v in state.items() if not k.startswith(("classifier.", "head.", "fc."))}
        state = base_layer_names(self.model, state)  # peft adapters wrap layers: their weights moved
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        own = adapter_state_names(self.model)  # the adapters' own weights are not in a pretrained file
        missing = [k for k in missing if k not in own]
        if missing or unexpected:
            raise ValueError(f"weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def image_transform(self, train: bool) -> ImageTransform:
        return create_transform(**self.data_config, is_training=train)

    def forward(self, pixel_values: Tensor) -> Features:
        fmap = self.model.forward_features(pixel_values)
        pooled = self.model.forward_head(fmap, pre_logits=True)  # (B, D)
        if fmap.ndim == 4:  # CNN feature map (B, D, H, W) -> (B, H*W, D)
            tokens = fmap.flatten(2).transpose(1, 2)
        else:  # transformer tokens (B, N, D)
            tokens = fmap
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return Features(tokens=tokens, mask=mask, pooled=pooled)
