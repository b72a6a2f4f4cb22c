"""The task contract: what a task (tagging, search, captioning, the next one) declares once, in its own folder.

Each task folder has a ``task.py`` holding one :class:`Task`: its LightningModule, its Python API, its batch job,
its service API and its ONNX parts, all named by import path and imported only when used, so reading the contract
imports no torch (``--help`` stays fast). The loader, ``multimodal predict``, ``multimodal serve``, the Python API
and the ONNX export and runtime find a task here, never in tables of class names. A new task is one folder and one
line in :data:`TASK_MODULES`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

# One line a task: the module that declares its ``TASK``. Read by import path (not imported here), so a task
# module may import this one without a cycle.
TASK_MODULES = (
    "multimodal.tagging.task",
    "multimodal.captioning.task",
    "multimodal.search.task",
)


@dataclass(frozen=True)
class Serving:
    """How ``multimodal serve`` offers a task.

    Attributes:
        route: the route (``/tag``).
        setting: the ``serve`` option (and ``--flag``) that gives its model (``tagger``).
        api: import path of its ``LitAPI`` class.
        reads_checkpoint: whether the option names a checkpoint of this task (else another artefact, e.g. an
            index, that its API checks itself).
    """

    route: str
    setting: str
    api: str
    reads_checkpoint: bool = True


@dataclass(frozen=True)
class OnnxParts:
    """How a task is exported to ONNX and run on ONNX Runtime.

    Attributes:
        graphs: import path of ``f(model) -> list[Graph]``, the task's inference graphs.
        settings: import path of ``f(model) -> dict``, what its runtime needs besides the graphs (None: nothing).
        runtime: import path of its ONNX Runtime task class (None: the export is for other runtimes).
    """

    graphs: str
    settings: str | None = None
    runtime: str | None = None


@dataclass(frozen=True)
class Task:
    """One task, declared once.

    Attributes:
        name: the task's short name (its folder).
        model: import path of its LightningModule; the class name is the task's identity in checkpoints,
            exports and job records.
        api: import path of its Python API class (:class:`multimodal.inference.Predictor`).
        job: import path of its batch job, ``f(args, loaded, source, image_root, options, relaunch)``.
        command: the batch command that accepts this task alone (``multimodal export``), if any.
        block_size: rows a batch job writes per block by default.
        serving: how ``multimodal serve`` offers it (None: not served).
        onnx: its ONNX export and runtime (None: not exported).
    """

    name: str
    model: str
    api: str
    job: str
    command: str | None = None
    block_size: int = 1024
    serving: Serving | None = None
    onnx: OnnxParts | None = None

    @property
    def class_name(self) -> str:
        """The LightningModule's class name (what ``Loaded.task`` and an export's manifest say)."""
        return self.model.rsplit(".", 1)[-1]


def resolve(path: str) -> Any:
    """The object at an import path (``package.module.name``), importing its module."""
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def tasks() -> tuple[Task, ...]:
    """Every task, in :data:`TASK_MODULES` order."""
    return tuple(importlib.import_module(module).TASK for module in TASK_MODULES)


def task_of(class_name: str) -> Task | None:
    """The task whose LightningModule has this class name (``Loaded.task``), or None."""
    return next((t for t in tasks() if t.class_name == class_name), None)


def task_of_command(command: str) -> Task | None:
    """The task a batch command is reserved for (``export``, ``caption``), or None (``predict``: any task)."""
    return next((t for t in tasks() if t.command == command), None)
