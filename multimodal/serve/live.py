"""The service follows its index: a rebuild or an update (``multimodal index DIR --add/--remove``) swaps the index
folder's link to a new build, and the running service answers from that build within a bounded time.

In an inference worker, :class:`LiveIndex` holds one reference to a loaded build (index, query encoder, version);
a background thread looks where the link points (one ``realpath``, every ``interval`` seconds), loads a new build
off the request path and swaps the reference. A dynamic batch takes the reference once, at its start, so every
request of it is answered from one version, and the version that answered is reported with each answer. A build
that cannot be loaded leaves the previous one answering. In the HTTP process, :func:`read_build` reads the
current build's ``index.json`` for ``/info`` and the catalogue photos.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from multimodal.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    """One build, ready to answer: its index, the query encoder of its checkpoint, and its version (the build
    folder's name)."""

    index: Any  # multimodal.search.index.SearchIndex
    encoder: Any  # multimodal.search.query_encoder.QueryEncoder
    version: str


def version_of(index: Any) -> str:
    return Path(index.folder).name


def _same_checkpoint(old: Any, new: Any) -> bool:
    """Whether two builds answer with the same checkpoint (the SHA-256 their exports recorded)."""
    ours = old.info.get("export", {}).get("checkpoint_sha256")
    theirs = new.info.get("export", {}).get("checkpoint_sha256")
    return bool(ours) and ours == theirs


def load_build(folder: str | Path, device: str, runtime: str, previous: Loaded | None = None) -> Loaded:
    """The build ``folder`` links to, loaded whole; the previous build's model is reused when the checkpoint is
    the same."""
    from multimodal.lite.search import encoder_for
    from multimodal.search.index import load_index

    index = load_index(folder)
    if previous is not None and _same_checkpoint(previous.index, index):
        encoder = previous.encoder.for_index(index)
    else:  # the torch-free encoder where torch cannot be imported (or the index names only an ONNX export)
        encoder = encoder_for(index, runtime)
        if encoder is None:
            from multimodal.search.query import QueryEncoder

            encoder = QueryEncoder(index, device, runtime)
    return Loaded(index, encoder, version_of(index))


class LiveIndex:
    """The build an inference worker answers from, following the index folder's link.

    Args:
        folder: the index folder (a link to its newest build, or a plain folder).
        device / runtime: where and how the query encoder runs.
        interval: seconds between two looks at the link; 0 loads the build once and never follows it.
    """

    def __init__(self, folder: str | Path, device: str, runtime: str, interval: float) -> None:
        self.folder, self.device, self.runtime, self.interval = Path(folder), device, runtime, interval
        self.current = load_build(folder, device, runtime)
        self._failed: str | None = None  # a build that would not load: tried again only once the link moves on
        if interval > 0:
            threading.Thread(target=self._follow, name="index-follower", daemon=True).start()

    def _follow(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - the follower must outlive any surprise; the old build keeps answering
                log.exception("following index %s failed; still answering from %s", self.folder, self.current.version)

    def refresh(self) -> bool:
        """Load and swap in the build the link points to now, when it is another one; whether it swapped."""
        target = os.path.realpath(self.folder)
        if target == str(self.current.index.folder) or target == self._failed:
            return False
        try:
            loaded = load_build(self.folder, self.device, self.runtime, self.current)
        except Exception as err:  # noqa: BLE001 - whatever stops a new build from loading, the old one answers
            # a build that could not be read (damaged, or another checkpoint that fails to load) is tried again
            # once the link moves on to another build
            self._failed = target
            log.warning("index %s: build %s not loaded (%s); answering from %s", self.folder, Path(target).name,
                        err, self.current.version)  # fmt: skip
            return False
        self._failed = None
        self.current = loaded  # the one swap: a batch that already took the old reference finishes on it
        log.info("index %s: answering from build %s (%d products)", self.folder, loaded.version, loaded.index.count)
        return True


def read_build(folder: str | Path, attempts: int = 5) -> tuple[str, dict[str, Any]]:
    """The version and ``index.json`` of the build ``folder`` links to now (for the HTTP process).

    Raises:
        UserError: when no build could be read (the index folder was removed, or holds no ``index.json``).
    """
    for _ in range(attempts):
        target = os.path.realpath(folder)
        try:
            return Path(target).name, _info(target)
        except FileNotFoundError:  # an old build removed between the look and the read: look again
            continue
    raise UserError(f"index {folder} has no readable index.json")


@lru_cache(maxsize=8)
def _info(build: str) -> dict[str, Any]:
    """A build's ``index.json`` (a linked build is never rewritten, so it is read once)."""
    from multimodal.search.index import INFO_FILE

    return json.loads((Path(build) / INFO_FILE).read_text())
