"""Loading an open_clip model once for its two towers (:class:`encoders.open_clip_encoder.OpenClipVisionEncoder`,
:class:`encoders.open_clip_text.OpenClipTextEncoder`), by name, pretrained tag, ``hf-hub:`` name or local file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import open_clip
from torch import nn

from encoders.errors import ConfigError
from encoders.pair import AlignedSpace, LoadedPair, take_part

SCHEMAS = ("hf-hub:", "local-dir:")  # names that carry their own config and weights (``pretrained`` is not read)


def check_model(model_name: str, pretrained: str | None, model_config: dict[str, Any] | None) -> None:
    """Register a custom architecture under ``model_name``; a one-line error for an unknown name or a missing file."""
    if model_config is not None:
        open_clip.factory._MODEL_CONFIGS[model_name] = model_config
    elif not model_name.startswith(SCHEMAS) and model_name not in open_clip.list_models():
        raise ConfigError(f"unknown open_clip model '{model_name}' (see open_clip.list_models(), or use hf-hub:<repo>)")
    if pretrained is not None and Path(pretrained).suffix and not Path(pretrained).is_file():
        raise FileNotFoundError(f"open_clip checkpoint not found: {pretrained}")


def has_weights(model_name: str, pretrained: str | None) -> bool:
    """Whether the model loads pretrained weights (a tag or file, or a name whose schema brings them)."""
    return pretrained is not None or model_name.startswith(SCHEMAS)


def weights_source(model_name: str, pretrained: str | None) -> dict[str, str] | None:
    """Where the towers' weights come from (None for a random init), as :class:`encoders.types.Tower` records it."""
    if not has_weights(model_name, pretrained):
        return None
    source = {"package": "open_clip", "model": model_name}
    return {**source, "pretrained": str(pretrained)} if pretrained is not None else source


def _load(model_name: str, pretrained: str | None) -> LoadedPair:
    # Every text tower as ``model.text`` (a CLIP checkpoint is converted on load), so the text part is one module.
    model, train_tf, eval_tf = open_clip.create_model_and_transforms(
        model_name, pretrained=pretrained, force_custom_text=True
    )
    scale = float(model.logit_scale.detach().reshape(-1)[0])
    name = f"open_clip:{model_name}" + (f":{pretrained}" if pretrained is not None else "")
    space = AlignedSpace(name, scale) if has_weights(model_name, pretrained) else None
    extras = {"train_transform": train_tf, "eval_transform": eval_tf, "space": space}
    return LoadedPair(parts={"visual": model.visual, "text": model.text}, extras=extras)


def open_clip_part(
    model_name: str, pretrained: str | None, model_config: dict[str, Any] | None, part: str
) -> tuple[nn.Module, LoadedPair]:
    """The ``visual`` or ``text`` tower of an open_clip model, loaded once for both towers; with the load's extras
    (``train_transform``, ``eval_transform``, ``space``: its :class:`encoders.pair.AlignedSpace` or None)."""
    check_model(model_name, pretrained, model_config)
    config = json.dumps(model_config, sort_keys=True) if model_config is not None else None
    return take_part(("open_clip", model_name, pretrained, config), part, lambda: _load(model_name, pretrained))
