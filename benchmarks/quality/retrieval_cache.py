"""A folder that keeps the frozen towers' outputs of retrieval quality between runs (``--cache``): each entry is
named by a hash of what it was computed from (the photos' ids and size, or the texts themselves), so a run with
other data, sizes or texts computes its own and never reads a stale one."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import say


def key_of(*parts: Any) -> str:
    """A short hash of JSON-able ``parts``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cached(folder: str | None, what: str, key: str, compute: Callable[[], Any]) -> Any:
    """``compute()``, or the value a previous run stored under ``what`` and ``key`` in ``folder`` (None or empty:
    no cache). A new value is written to a temporary file first, so a killed run leaves no half entry."""
    if not folder:
        return compute()
    file = Path(folder) / f"{what}-{key}.pt"
    if file.is_file():
        say(f"{what}: read from the cache {file}")
        return torch.load(file, map_location="cpu", weights_only=True)
    value = compute()
    file.parent.mkdir(parents=True, exist_ok=True)
    partial = file.with_suffix(f".{os.getpid()}.tmp")
    torch.save(value, partial)
    partial.replace(file)
    return value
