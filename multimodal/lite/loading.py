"""An export folder loaded without torch: its task found through the task contract (``OnnxParts.lite``), as the
:class:`multimodal.artefact.Loaded` the batch jobs and the Python API read."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from multimodal.artefact import Columns, Loaded
from multimodal.errors import UserError
from multimodal.onnx.manifest import read_model_manifest


def lite_module(folder: str | Path, task_name: str) -> Any:
    """The torch-free runtime module of the task an export was made from; a one-line error when it has none."""
    from multimodal.task import task_of

    task = task_of(task_name)
    if task is None or task.onnx is None or task.onnx.lite is None:
        from multimodal.lite import FULL_INSTALL

        raise UserError(f"{folder} is a {task_name} export, which runs with the full install ({FULL_INSTALL})")
    return importlib.import_module(task.onnx.lite)


def load(path: str | Path, task: type | str | None = None, runtime: str = "onnx") -> Loaded:
    """The task of an export folder on ONNX Runtime without torch (``runtime``: ``onnx`` or ``onnx-int8``; the
    full install's ``torch`` means the export's fp32 graphs here); ``task``: the class (or its import path) the
    export must have been made from."""
    if runtime not in ("torch", "onnx", "onnx-int8"):
        raise UserError(f"runtime must be torch, onnx or onnx-int8, not '{runtime}'")
    folder = Path(path)
    info = read_model_manifest(folder)
    wanted = task if isinstance(task, str) or task is None else task.__name__
    if wanted is not None and info["task"] != wanted.rsplit(".", 1)[-1]:
        raise UserError(f"{folder} holds a {info['task']} export, not a {wanted.rsplit('.', 1)[-1]}")
    int8 = runtime == "onnx-int8"
    model = lite_module(folder, info["task"]).MODEL(folder, int8)
    columns = Columns.from_manifest(info["columns"])
    data, sha = dict(info.get("data") or {}), info.get("checkpoint_sha256")
    return Loaded(model, columns, data, {}, folder, sha, "onnx-int8" if int8 else "onnx")


def load_api(path: str | Path, batch_size: int = 32, runtime: str = "onnx") -> Any:
    """``multimodal.load(path)`` without torch: the export's Python API."""
    loaded = load(path, runtime=runtime)
    return lite_module(path, loaded.task).API(loaded, batch_size=batch_size)
