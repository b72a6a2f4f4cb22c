"""What a trained model is once loaded: the model, the columns it reads and where it came from.

A leaf module (no torch, no loader, no ONNX at import): the loader (:mod:`multimodal.loading`) and the ONNX Runtime
(:mod:`multimodal.onnx.runtime`) both build :class:`Loaded`, and neither needs the other to name it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multimodal.errors import UserError


@dataclass(frozen=True)
class Columns:
    """Which manifest columns a model reads (from its training data config)."""

    id: str = "id"
    image: str = "image"
    texts: tuple[str, ...] = ()
    attributes: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    tag_separator: str = "|"
    max_images: int = 4  # photos read per product (multimodal.data.photos)

    @classmethod
    def from_data_config(cls, init_args: dict[str, Any]) -> Columns:
        return cls(
            max_images=init_args.get("max_images") or 4,
            id=init_args.get("id_column") or "id",
            image=init_args.get("image_column") or "image",
            texts=tuple(init_args.get("text_columns") or ()),
            attributes=tuple(init_args.get("attributes") or ()),
            tags=tuple(init_args.get("tag_columns") or ()),
            tag_separator=init_args.get("tag_separator") or "|",
        )

    @classmethod
    def from_manifest(cls, columns: dict[str, Any]) -> Columns:
        """The columns an ONNX export's ``model.json`` records (its lists as tuples)."""
        return cls(**{**columns, **{k: tuple(columns.get(k) or ()) for k in ("texts", "attributes", "tags")}})


@dataclass
class Loaded:
    """A task rebuilt from a checkpoint: the model (eval mode, on the CPU), the columns it reads, the stored
    data settings (manifest, image root, batch size of training: defaults only) and the whole stored config."""

    model: Any  # the task's LightningModule, or its ONNX Runtime stand-in (multimodal.onnx.runtime.OnnxTask)
    columns: Columns
    data: dict[str, Any]
    config: dict[str, Any]
    path: Path
    checkpoint_sha256: str | None = None  # of the checkpoint an ONNX export was made from
    runtime: str = "torch"  # torch, onnx or onnx-int8 (ONNX Runtime, fp32 or int8 graphs)

    @property
    def task(self) -> str:
        """The task's class name (an ONNX stand-in names the class its export was made from)."""
        return type(self.model).__name__ if self.runtime == "torch" else self.model.info["task"]

    def sha256(self) -> str:
        """SHA-256 of the checkpoint (for an ONNX export: of the checkpoint it was exported from)."""
        return self.checkpoint_sha256 or file_sha256(self.path)

    def checkpoint_file(self) -> Path:
        """The checkpoint file itself (an ONNX export names its source; it must still be there, unchanged)."""
        if self.path.is_file():
            return self.path
        source = Path(self.model.info.get("checkpoint") or "")
        if not source.is_file() or file_sha256(source) != self.checkpoint_sha256:
            raise UserError(
                f"{self.path} is an ONNX export and its checkpoint {source} is gone or changed: this job needs the "
                "checkpoint itself (give it with --ckpt_path and --runtime onnx)"
            )
        return source


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
