"""The task contract: what a task (tagging, search, captioning, the next one) declares once, in its own folder.

Each task folder has a ``task.py`` holding one :class:`Task`: its LightningModule, its Python API, its batch job,
its service API and its ONNX parts, all named by import path and imported only when used, so reading the contract
imports no torch (``--help`` stays fast). The loader, ``multimodal predict``, ``multimodal serve``, the Python API
and the ONNX export and runtime find a task here, never in tables of class names. A built-in task is one folder and
one line in :data:`TASK_MODULES`; a task that lives in another package is registered with no edit to this one, by
an entry point in the group :data:`ENTRY_POINT_GROUP` (its value: the module declaring ``TASK``) or, for one run,
by the environment variable :data:`TASKS_VARIABLE` (module paths, comma-separated).
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass
from typing import Any

from multimodal.errors import UserError

# One line a task: the module that declares its ``TASK``. Read by import path (not imported here), so a task
# module may import this one without a cycle.
TASK_MODULES = (
    "multimodal.tagging.task",
    "multimodal.captioning.task",
    "multimodal.search.task",
)
ENTRY_POINT_GROUP = "multimodal.tasks"  # pyproject.toml: [project.entry-points."multimodal.tasks"] name = "pkg.task"
TASKS_VARIABLE = "MULTIMODAL_TASKS"


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
        lite: import path of its torch-free runtime module (:mod:`multimodal.lite`), declaring ``MODEL`` (the
            task on an export folder), ``API`` (its Python API) and ``JOB`` (its batch job); None: none.
    """

    graphs: str
    settings: str | None = None
    runtime: str | None = None
    lite: str | None = None


@dataclass(frozen=True)
class Task:
    """One task, declared once.

    Attributes:
        name: the task's short name (its folder).
        model: import path of its LightningModule; the class name is the task's identity in checkpoints,
            exports and job records.
        api: import path of its Python API class (:class:`multimodal.inference.Predictor`).
        job: import path of its batch job, ``f(job: multimodal.batch_job.Job) -> summary``.
        command: the batch command that accepts this task alone (``multimodal export``), if any.
        block_size: rows a batch job writes per block by default.
        serving: how ``multimodal serve`` offers it (None: not served).
        onnx: its ONNX export and runtime (None: not exported).
        row_schema: import path of ``f(columns, top_k) -> [(name, Spark SQL type)]``, the task's output columns
            of a batch row, for engines that need a schema before the first row (Spark; None: not declared).
    """

    name: str
    model: str
    api: str
    job: str
    command: str | None = None
    block_size: int = 1024
    serving: Serving | None = None
    onnx: OnnxParts | None = None
    row_schema: str | None = None

    @property
    def class_name(self) -> str:
        """The LightningModule's class name (what ``Loaded.task`` and an export's manifest say)."""
        return self.model.rsplit(".", 1)[-1]


def resolve(path: str) -> Any:
    """The object at an import path (``package.module.name``), importing its module."""
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


@functools.cache
def _entry_point_modules() -> tuple[tuple[str, str], ...]:
    """``(module, where it was registered)`` of the installed entry points; read once a process (the scan of the
    installed packages takes about 10 ms, and :func:`tasks` is called often)."""
    from importlib.metadata import entry_points

    found = entry_points(group=ENTRY_POINT_GROUP)  # ``ep.module``: a value written ``pkg.task:TASK`` works too
    return tuple((ep.module, f"entry point '{ep.name}' ({ENTRY_POINT_GROUP})") for ep in found)


def registered_modules() -> list[tuple[str, str]]:
    """``(module, where it was registered)`` of the tasks registered outside this package: the entry points, then
    :data:`TASKS_VARIABLE`; a module named twice (or a built-in one) counts once."""
    named = [*_entry_point_modules()]
    named += [(m.strip(), TASKS_VARIABLE) for m in os.environ.get(TASKS_VARIABLE, "").split(",") if m.strip()]
    seen, out = set(TASK_MODULES), []
    for module, where in named:
        if module not in seen:
            seen.add(module)
            out.append((module, where))
    return out


def registered_packages() -> tuple[str, ...]:
    """The top-level packages of the registered task modules (the loader trusts the classes a stored config names
    from them, as it trusts this package's)."""
    return tuple(dict.fromkeys(module.split(".", 1)[0] for module, _ in registered_modules()))


def _registered(module: str, where: str) -> Task:
    """The ``TASK`` of a registered module; a one-line error when it does not import or declares none."""
    try:
        declared = getattr(importlib.import_module(module), "TASK", None)
    except ImportError as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"task module '{module}' (from {where}) cannot be imported: {first}") from None
    if not isinstance(declared, Task):
        raise UserError(f"task module '{module}' (from {where}) declares no TASK (a multimodal.task.Task)")
    return declared


def tasks() -> tuple[Task, ...]:
    """Every task: the built-in ones in :data:`TASK_MODULES` order, then the registered ones
    (:func:`registered_modules`); a one-line error for a registered task whose class name, name, route or serve
    option another task already has."""
    found = [importlib.import_module(module).TASK for module in TASK_MODULES]
    for module, where in registered_modules():
        task = _registered(module, where)
        for other in found:
            clash = _clash(task, other)
            if clash:
                raise UserError(f"task module '{module}' (from {where}) declares {clash} of task '{other.name}'")
        found.append(task)
    return tuple(found)


def registered_tasks() -> tuple[Task, ...]:
    """The registered tasks (those :func:`tasks` lists after the built-in ones)."""
    return tasks()[len(TASK_MODULES) :]


def _clash(task: Task, other: Task) -> str | None:
    """What ``task`` declares that ``other`` already has (None: nothing)."""
    if task.class_name == other.class_name:
        return f"the class name {task.class_name}, already that"
    if task.name == other.name:
        return f"the name '{task.name}', already that"
    if task.command is not None and task.command == other.command:
        return f"the command '{task.command}', already that"
    if task.serving is not None and other.serving is not None:
        if task.serving.route == other.serving.route:
            return f"the route /{task.serving.route}, already that"
        if task.serving.setting == other.serving.setting:
            return f"the serve option --{task.serving.setting}, already that"
    return None


def task_of(class_name: str) -> Task | None:
    """The task whose LightningModule has this class name (``Loaded.task``), or None."""
    return next((t for t in tasks() if t.class_name == class_name), None)


def task_of_command(command: str) -> Task | None:
    """The task a batch command is reserved for (``export``, ``caption``), or None (``predict``: any task)."""
    return next((t for t in tasks() if t.command == command), None)
