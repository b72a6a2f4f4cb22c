"""A content-addressed, size-limited cache of fetched photos on local disk, safe for several processes at once.

Layout under the cache folder::

    blobs/<h[:2]>/<h>      a photo's bytes, named by h = sha256(bytes): the same photo under two URLs is stored once
    urls/<u[:2]>/<u>       for u = sha256(URL): the text h of the blob that URL answered

Every file is written to a temporary sibling and renamed into place, so a reader in another process sees a whole
file or none. A hit touches the blob and the URL entry (their mtime is the "last used" clock); once the blobs pass
the size limit, the least recently used are removed down to 90% of it (the margin spares a scan per write), with
the URL entries left pointing at nothing. A blob whose bytes no longer match its name is dropped, never served.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

EVICT_TO = 0.9  # evict down to this share of the limit
RESCAN_SHARE = 0.1  # other processes write too: recount the folder after writing this share of the limit


def default_cache_dir() -> Path:
    """``$MULTIMODAL_CACHE/photos``, by default ``~/.cache/multimodal/photos``."""
    return Path(os.environ.get("MULTIMODAL_CACHE") or Path.home() / ".cache" / "multimodal") / "photos"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _touch(*paths: Path) -> None:
    for path in paths:
        try:
            os.utime(path)
        except OSError:
            pass  # evicted meanwhile by another process: the bytes in hand are still good


class PhotoCache:
    """Photos by URL, stored once per content, at most ``max_bytes`` of blobs (least recently used evicted).

    Args:
        root: the cache folder (created on the first write).
        max_bytes: the size limit of the stored photos.
    """

    def __init__(self, root: Path | str, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._total: int | None = None  # bytes of blobs, as last counted plus this process's writes since
        self._since_scan = 0

    def _blob(self, digest: str) -> Path:
        return self.root / "blobs" / digest[:2] / digest

    def _entry(self, url: str) -> Path:
        key = _sha256(url.encode())
        return self.root / "urls" / key[:2] / key

    def get(self, url: str) -> bytes | None:
        """The photo cached for ``url``, or None (never cached, evicted, or damaged on disk)."""
        entry = self._entry(url)
        try:
            digest = entry.read_text().strip()
            data = self._blob(digest).read_bytes()
        except (OSError, UnicodeDecodeError):
            return None
        if _sha256(data) != digest:  # a damaged blob is removed, and the photo fetched again
            self._blob(digest).unlink(missing_ok=True)
            return None
        _touch(self._blob(digest), entry)
        return data

    def put(self, url: str, data: bytes) -> None:
        """Store ``data`` as the answer of ``url`` (a photo larger than the whole cache is not stored)."""
        if len(data) > self.max_bytes:
            return
        digest = _sha256(data)
        blob = self._blob(digest)
        if blob.is_file():
            _touch(blob)
        else:
            _write_atomic(blob, data)
            self._count(len(data))
        _write_atomic(self._entry(url), digest.encode())

    def total_bytes(self) -> int:
        """Bytes of the stored photos, counted on disk."""
        return sum(size for _, size, _ in self._scan())

    def _count(self, added: int) -> None:
        if self._total is None or self._since_scan > RESCAN_SHARE * self.max_bytes:
            self._total, self._since_scan = self.total_bytes(), 0
        else:
            self._total += added
            self._since_scan += added
        if self._total > self.max_bytes:
            self.evict()

    def _scan(self) -> list[tuple[Path, int, float]]:
        """Every blob as (path, size, last used), oldest first."""
        found = []
        for path in (self.root / "blobs").glob("*/*"):
            if path.name.startswith(".tmp-"):
                continue
            try:
                stat = path.stat()
            except OSError:
                continue  # removed by another process meanwhile
            found.append((path, stat.st_size, stat.st_mtime))
        return sorted(found, key=lambda item: item[2])

    def evict(self) -> None:
        """Remove least recently used blobs until they take at most 90% of the limit, then their URL entries."""
        blobs = self._scan()
        total = sum(size for _, size, _ in blobs)
        cutoff = None
        for path, size, used in blobs:
            if total <= EVICT_TO * self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
            cutoff = used
        self._total, self._since_scan = total, 0
        if cutoff is not None:
            self._drop_dangling(cutoff)

    def _drop_dangling(self, cutoff: float) -> None:
        """Remove URL entries last used no later than ``cutoff`` whose blob is gone (the rest keep serving)."""
        for entry in (self.root / "urls").glob("*/*"):
            try:
                if entry.stat().st_mtime <= cutoff and not self._blob(entry.read_text().strip()).is_file():
                    entry.unlink(missing_ok=True)
            except (OSError, UnicodeDecodeError):
                continue
