"""A folder published as a series of complete builds behind one symbolic link, kept while readers use them.

``<name>`` is a link to ``.<name>.builds/<build>``. A writer fills a new build folder, then swaps the link with one
atomic rename (:func:`publish`); a reader resolves the link once and reads that one build (:func:`hold`).

Each build holds an empty ``.lock`` file. A reader takes a shared ``fcntl.flock`` on it before it reads the build
and keeps it as long as it uses the build's files; the writer deletes an old build only when it gets an exclusive
lock without waiting (:func:`prune`), else leaves it for a later prune. A build is first renamed aside (so no reader
can reach it any more) and then deleted. A reader that resolved a build deleted before it got its lock resolves the
link again, a bounded number of times. The OS releases a dead reader's lock, so builds never stay held forever.
There is one writer at a time (the caller holds :func:`multimodal.writers.output_lock` on ``<name>``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import IO

from multimodal.errors import UserError

LOCK_FILE = ".lock"
DELETING = ".deleting-"  # prefix of a build renamed aside to be deleted (no link ever points there)
ATTEMPTS = 50  # re-resolutions of the link before a reader gives up: each failure means two swaps meanwhile
# A folder written before builds were kept is moved here before the first link is made: two renames, so a reader
# (or a writer killed between them) can meet neither the folder nor the link; this build is then the current one.
MIGRATED = "0-previous"


def builds_of(folder: Path) -> Path:
    """The hidden sibling holding the builds of ``folder``."""
    return folder.with_name(f".{folder.name}.builds")


def new_build(folder: Path) -> Path:
    """An empty build folder for ``folder`` (with its lock file), not yet published."""
    build = builds_of(folder) / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    build.mkdir(parents=True)
    (build / LOCK_FILE).touch()
    return build


def publish(folder: Path, build: Path) -> None:
    """Point ``folder`` at ``build`` with one atomic rename, then prune the builds older than the one replaced."""
    previous = folder.resolve() if folder.is_symlink() else None
    if folder.exists() and not folder.is_symlink():  # a folder written before builds were kept: move it aside
        previous = builds_of(folder) / MIGRATED
        (folder / LOCK_FILE).touch()  # its readers lock it as any build
        os.replace(folder, previous)
    link = folder.with_name(f".{folder.name}.{os.getpid()}.link")
    link.unlink(missing_ok=True)
    link.symlink_to(build.relative_to(folder.parent))
    os.replace(link, folder)  # the one atomic step: readers resolve either the old build or this one
    prune(folder, keep={build, previous})


def prune(folder: Path, keep: set[Path | None]) -> list[Path]:
    """Delete the builds of ``folder`` not in ``keep`` that no reader holds; returns those left for later.

    Keeping the build just replaced spares its readers a retry; any other build is kept only while locked.
    """
    kept = {path.resolve() for path in keep if path is not None}
    held = []
    for old in sorted(builds_of(folder).iterdir()):
        if old.resolve() in kept:
            continue
        if old.name.startswith(DELETING):  # left by a writer killed while deleting: nobody can reach it
            shutil.rmtree(old, ignore_errors=True)
            continue
        try:
            # read-write: an exclusive lock over NFS needs it; a build older than lock files gets one
            fd = os.open(old / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held.append(old)  # a reader is on it: a later prune deletes it
            os.close(fd)
            continue
        try:
            aside = old.with_name(f"{DELETING}{old.name}")
            os.replace(old, aside)  # from here no reader resolves it; one that was waiting re-resolves
            shutil.rmtree(aside, ignore_errors=True)
        finally:
            os.close(fd)
    return held


def _current(folder: Path) -> Path:
    """The build ``folder`` names now: its link's target, or the migrated old folder while no link exists yet."""
    if not folder.exists() and not folder.is_symlink() and (builds_of(folder) / MIGRATED).is_dir():
        return builds_of(folder) / MIGRATED
    return folder.resolve()


def hold(folder: Path, marker: str) -> tuple[Path, IO[bytes] | None]:
    """Resolve ``folder`` to one build and take a shared lock on it; returns the build and the open lock file.

    The lock lasts until the file is closed (or the process ends). ``marker`` is a file every build has: without
    it the folder is not one of these (the caller reports that). A build written before lock files, or one whose
    lock cannot be opened, is returned without a lock (``None``).
    """
    missing = None
    for _ in range(ATTEMPTS):
        build = _current(folder)
        if not (build / marker).is_file():
            if folder.is_symlink() and build != missing:  # the link moved on and its build was deleted: again
                missing = build
                continue
            return build, None  # not one of these folders (or a link to nothing): the caller says so
        lock = build / LOCK_FILE
        try:
            fd = os.open(lock, os.O_RDONLY)
        except FileNotFoundError:
            if (build / marker).is_file():
                return build, None  # a build older than lock files
            continue  # renamed aside meanwhile
        except OSError:
            return build, None
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a writer is deleting this very build
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                return build, os.fdopen(fd, "rb")
        except FileNotFoundError:
            pass  # deleted while this reader waited for its lock
        os.close(fd)
    raise UserError(f"{folder} was replaced {ATTEMPTS} times while it was being opened: try again")
