"""The two towers of one contrastive model (CLIP, SigLIP): the joint space they share and the one load they share.

A model trained contrastively maps photos and texts into one space: its image tower and its text tower are a pair.
Each tower built from such a model says so (:class:`AlignedTower`, ``aligned_space``), so that a task holding both
can keep the pair's own similarities at the start (:func:`multimodal.search.aligned.align_projections`).

Both towers come from one model file: :func:`take_part` loads it once for the two of them. The parts of the latest
load that no tower has taken yet wait for the other tower; a part is handed out once, so two tasks built in one
process never share parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AlignedSpace:
    """The joint space of one pretrained pair.

    Attributes:
        name: the model the pair comes from (``open_clip:ViT-B-16:<pretrained>``, ``hf:<path>``): two towers with
            the same name share one space.
        logit_scale: the pair's learned log inverse temperature (its similarities are ``exp(logit_scale) * cos``).
    """

    name: str
    logit_scale: float


class AlignedTower:
    """Mixin of a tower whose pooled output lives in a pretrained pair's joint space (None: no such space)."""

    aligned_space: AlignedSpace | None = None


@dataclass
class LoadedPair:
    """One loaded model, cut into parts: ``parts`` (name -> module) are the ones not taken yet; ``extras`` holds what
    every tower may read (transforms, logit scale)."""

    parts: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)


_latest: tuple[Hashable, LoadedPair] | None = None


def take_part(key: Hashable, part: str, load: Callable[[], LoadedPair]) -> tuple[Any, LoadedPair]:
    """The part ``part`` of the model ``key``: from the latest load when it still holds that part, else from a new
    ``load()``, whose other parts then wait for their tower. Returns the part and the load (for its ``extras``)."""
    global _latest
    if _latest is None or _latest[0] != key or part not in _latest[1].parts:
        _latest = (key, load())
    loaded = _latest[1]
    module = loaded.parts.pop(part)
    if not loaded.parts:
        _latest = None  # every part taken: nothing left to keep alive
    return module, loaded


def forget_pending() -> None:
    """Drop the parts waiting for a tower (frees their memory)."""
    global _latest
    _latest = None
