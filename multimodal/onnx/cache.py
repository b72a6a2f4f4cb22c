"""Which ONNX export ``--runtime onnx`` (or ``onnx-int8``) runs for a checkpoint, so that a checkpoint has one
export per precision on disk, not one per command that asked for it.

The rule, for a checkpoint C and a precision (fp32 for ``onnx``, int8 for ``onnx-int8``):

1. ``multimodal export-model --ckpt_path C --out D`` records D for (SHA-256 of C, each precision D holds) in a
   small pointer file of the cache, ``$MULTIMODAL_CACHE/onnx/<sha>[-int8].json`` (default
   ``~/.cache/multimodal``), and removes the cache's own export of C at that precision (D replaces it). When the
   cache holds an fp32 export of C with the options asked for, export-model moves it to D instead of exporting
   again.
2. ``--runtime onnx --ckpt_path C`` runs D if it still exists, is an export of C and its files match their
   hashes; else the cache's own export ``$MULTIMODAL_CACHE/onnx/<sha>[-int8]/`` if it is whole; else it exports C
   there once. Each run says on stderr, in one line, which export it uses, or what it exports, where and why.
3. The cache's int8 export holds the int8 graphs alone. It is quantized from the fp32 export step 2 would run
   when there is one (seconds), else exported and quantized, the fp32 graphs removed once quantized.

An export folder given to ``--ckpt_path`` runs as it is, with no pointer involved.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from multimodal.errors import UserError
from multimodal.onnx.export import (
    MANIFEST,
    check_files,
    export_model,
    file_hashes,
    is_onnx_export,
    quantize_int8,
    read_model_manifest,
)


def cache_root() -> Path:
    """Where the cache's exports and pointers live."""
    return Path(os.environ.get("MULTIMODAL_CACHE") or Path.home() / ".cache" / "multimodal") / "onnx"


def _name(sha: str, int8: bool) -> str:
    return f"{sha[:20]}{'-int8' if int8 else ''}"


def precisions(info: dict[str, Any]) -> list[bool]:
    """The precisions (``int8`` flags) an export's manifest holds every graph in."""
    graphs = list(info["graphs"].values())
    return [int8 for int8, key in ((False, "file"), (True, "int8_file")) if all(key in g for g in graphs)]


def why_not(folder: Path, sha: str, int8: bool) -> str | None:
    """Why ``folder`` cannot run the checkpoint of SHA-256 ``sha`` at this precision; None when it can."""
    if not is_onnx_export(folder):
        return f"{folder} is gone"
    try:
        info = read_model_manifest(folder)
        if info.get("checkpoint_sha256") != sha:
            return f"{folder} now holds an export of another checkpoint"
        if int8 not in precisions(info):
            return f"{folder} has no {'int8' if int8 else 'fp32'} graphs"
        check_files(folder, info, int8)
    except UserError as err:
        return str(err)
    return None


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def record(folder: Path, info: dict[str, Any]) -> None:
    """After ``export-model``: point the cache at ``folder`` for each precision it holds, and remove the cache's
    own export of that checkpoint and precision (``folder`` replaces it)."""
    sha, root = info.get("checkpoint_sha256"), cache_root()
    folder = folder.resolve()
    if not sha or folder.parent == root.resolve():
        return
    root.mkdir(parents=True, exist_ok=True)
    for int8 in precisions(info):
        fd, tmp = tempfile.mkstemp(prefix=".pointer.", dir=root)
        with os.fdopen(fd, "w") as f:
            json.dump({"folder": str(folder), "checkpoint_sha256": sha}, f)
        os.replace(tmp, root / f"{_name(sha, int8)}.json")
        own = root / _name(sha, int8)
        if own.exists():
            shutil.rmtree(own, ignore_errors=True)
            _say(f"removed the cached ONNX export {own}: {folder} replaces it")


def adopt(ckpt_path: str | Path, sha: str, wanted: dict[str, Any], out: Path) -> bool:
    """``export-model`` to ``out``: move the cache's fp32 export of the checkpoint there when it was made with the
    options ``wanted`` (then nothing is exported again); False when there is none."""
    own = cache_root() / _name(sha, False)
    if not own.exists() or why_not(own, sha, False) is not None:
        return False
    info = read_model_manifest(own)
    if {k: info.get(k) for k in wanted} != wanted or False not in precisions(info):
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        own.rename(out)  # one rename on the same file system
    except OSError:
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        shutil.copytree(own, work, dirs_exist_ok=True)
        work.rename(out)
        shutil.rmtree(own, ignore_errors=True)
    _say(f"moved the cached ONNX export of {ckpt_path} from {own} to {out} (not exported again)")
    return True


def _pointed(pointer: Path) -> Path | None:
    """The folder a pointer file names (None: no pointer, or one that cannot be read)."""
    try:
        return Path(json.loads(pointer.read_text())["folder"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _find(sha: str, int8: bool) -> tuple[Path | None, str]:
    """The export to run for the checkpoint of SHA-256 ``sha`` at this precision and what it is, or None and why
    there is none; a pointer to a folder that cannot be used is dropped, and so is a damaged cache copy."""
    root = cache_root()
    pointer, own = root / f"{_name(sha, int8)}.json", root / _name(sha, int8)
    why = f"no {'int8' if int8 else 'fp32'} export of this checkpoint yet"
    recorded = _pointed(pointer)
    if recorded is not None:
        problem = why_not(recorded, sha, int8)
        if problem is None:
            return recorded, "the ONNX export"
        pointer.unlink(missing_ok=True)  # the user's folder itself is left as it is
        why = f"the export recorded for it cannot be used: {problem}"
    if own.exists():
        problem = why_not(own, sha, int8)
        if problem is None:
            return own, "the cached ONNX export"
        shutil.rmtree(own)  # the cache's own copy: made again
        why = f"the cached export cannot be used: {problem}"
    return None, why


def export_for(ckpt_path: str | Path, int8: bool) -> Path:
    """The export ``--runtime onnx`` (``int8``: ``onnx-int8``) runs for the checkpoint at ``ckpt_path``, by the
    rule of this module; its files were checked against their hashes."""
    from multimodal.loading import file_sha256

    sha, runtime = file_sha256(ckpt_path), "onnx-int8" if int8 else "onnx"
    folder, what = _find(sha, int8)
    if folder is not None:
        _say(f"--runtime {runtime}: using {what} {folder} of {ckpt_path}")
        return folder
    own = cache_root() / _name(sha, int8)
    source = _find(sha, False)[0] if int8 else None
    try:
        if source is not None:  # quantizing its graphs is all an int8 export adds
            _say(f"--runtime {runtime}: quantizing the ONNX export {source} of {ckpt_path} into {own} ({what})")
            quantized_copy(source, own)
        else:
            _say(f"--runtime {runtime}: exporting {ckpt_path} to ONNX in {own} ({what}); later runs reuse it")
            export_model(ckpt_path, own, "int8" if int8 else None, progress=False, keep_fp32=not int8)
    except OSError:  # another run renamed the same export into place first
        if why_not(own, sha, int8) is not None:
            raise
    return own


def quantized_copy(source: Path, out: Path) -> None:
    """An int8-only export at ``out`` of the fp32 export ``source``: its graphs quantized, the rest copied."""
    info = read_model_manifest(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        graphs_and_manifest = shutil.ignore_patterns("*.onnx", MANIFEST)
        shutil.copytree(source, work, ignore=graphs_and_manifest, dirs_exist_ok=True)
        for name, graph in info["graphs"].items():
            graph["int8_file"] = f"{name}.int8.onnx"
            quantize_int8(source / graph.pop("file"), work / graph["int8_file"])
        info.update(quantize="int8", files=file_hashes(work))
        (work / MANIFEST).write_text(json.dumps(info, indent=2))
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
