"""The folder format of an ONNX export: its manifest (``model.json``) and the hashes of its files.

Light on purpose (no torch, no onnxruntime): loading checks a folder against these before a graph is read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from multimodal.errors import UserError

MANIFEST = "model.json"
FORMAT_VERSION = 1


def is_onnx_export(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding an export manifest."""
    p = Path(path)
    return p.is_dir() and (p / MANIFEST).is_file()


def read_model_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of an export folder; a one-line error when it is unreadable or of another format."""
    path = Path(folder) / MANIFEST
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path} cannot be read as an ONNX export manifest ({err})") from None
    if info.get("format") != "multimodal-onnx" or info.get("version") != FORMAT_VERSION:
        raise UserError(f"{path} is not an ONNX export of this project (format / version differ)")
    return info


def file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` but the manifest, by path relative to it (``/`` separated)."""
    from multimodal.artefact import file_sha256

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in files}


def check_files(folder: str | Path, info: dict[str, Any], int8: bool | None = None) -> None:
    """Refuse an export whose files differ from the hashes recorded at export, naming the first such file.

    Args:
        folder: the export folder.
        info: its manifest.
        int8: check only the graphs of this precision (``None``: every graph); an export without recorded
            hashes (written before they were) passes.
    """
    from multimodal.artefact import file_sha256

    skip = set()
    if int8 is not None:  # the graphs of the other precision are not read by this run
        skip = {g.get("file" if int8 else "int8_file") for g in info.get("graphs", {}).values()}
    for name, sha in (info.get("files") or {}).items():
        if name in skip:
            continue
        path = Path(folder) / name
        if not path.is_file():
            raise UserError(f"{path} is missing: the ONNX export {folder} was changed since the export")
        if file_sha256(path) != sha:
            raise UserError(f"{path} was changed since the export (its SHA-256 differs from {MANIFEST})")
