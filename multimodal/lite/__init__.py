"""The torch-free runtime: an ONNX export (``multimodal export-model``) run with ONNX Runtime, NumPy, PIL and
``tokenizers`` alone, for the tagger, the retriever and the captioner: what the runtime install
(``pip install multimodal-products``, no ``[full]``) runs.

``multimodal.load``, ``multimodal predict`` / ``export`` and ``multimodal search`` come here when they are given an
ONNX export folder and torch cannot be imported (a slim install); with torch installed they keep the ONNX path of
:mod:`multimodal.onnx.runtime`. Nothing in this package imports torch, torchvision, lightning, transformers, timm or
open_clip.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

from multimodal.errors import UserError

FULL_INSTALL = 'pip install "multimodal-products[full]"'


@functools.cache
def torch_importable() -> bool:
    """Whether torch can be imported here, found without importing it (``--help`` and argument errors stay fast):
    absent, or refused by an import hook, it cannot."""
    if "torch" in sys.modules:
        return sys.modules["torch"] is not None
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def wanted(path: str | Path) -> bool:
    """Whether ``path`` runs on this runtime: an ONNX export where torch cannot be imported.

    Raises:
        UserError: torch cannot be imported and ``path`` is not an ONNX export (a checkpoint needs the full
            install), in one line.
    """
    from multimodal.onnx.manifest import is_onnx_export

    if torch_importable():
        return False
    if is_onnx_export(path):
        return True
    if not Path(path).exists():
        raise UserError(f"checkpoint or ONNX export not found: {path}")
    raise UserError(
        f"{path} is a checkpoint: it needs the full install ({FULL_INSTALL}); export it with "
        "`multimodal export-model` to run it here"
    )


def require_full(command: str) -> None:
    """A one-line error when ``multimodal <command>`` needs torch and it cannot be imported here."""
    if not torch_importable():
        raise UserError(
            f"`multimodal {command}` needs the full install ({FULL_INSTALL}); this is the runtime install, which "
            "runs ONNX exports (predict, export, caption, index, search, serve)"
        )
