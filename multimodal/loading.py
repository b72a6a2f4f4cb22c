"""The one checkpoint loader: any task's checkpoint alone -> the trained model and the columns it reads.

``multimodal fit`` stores its resolved config (YAML text) in every checkpoint (:class:`StoreConfig`). The
``model`` section rebuilds the architecture (encoders, tokenizer and transform settings, fusion block); the task
restores what it learned from the data (label vocabularies) in ``on_load_checkpoint``; the ``data`` section names
the columns the model reads. Loading builds no data module and reads no catalogue, and the checkpoint is read
safely (``weights_only=True``). Predict, export, search, caption, serve and the Python API all load through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from multimodal.artefact import Columns, Loaded, file_sha256  # noqa: F401 - re-exported: the loader's types
from multimodal.errors import UserError

if TYPE_CHECKING:
    import lightning as L

CONFIG_KEY = "multimodal_config"
# Class paths of checkpoints written before the package was laid out by job.
MOVED_CLASSES = {
    "multimodal.tasks.tagging.ProductTagger": "multimodal.tagging.tagger.ProductTagger",
    "multimodal.tasks.retrieval.ProductRetriever": "multimodal.search.retriever.ProductRetriever",
    "multimodal.tasks.captioning.ProductCaptioner": "multimodal.captioning.captioner.ProductCaptioner",
    "multimodal.datamodule.ProductDataModule": "multimodal.data.datamodule.ProductDataModule",
}


def store_config_callback(config_yaml: str) -> Any:
    """A Lightning callback that saves the run's resolved config in every checkpoint under ``CONFIG_KEY``."""
    from lightning.pytorch.callbacks import Callback

    class StoreConfig(Callback):
        def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
            checkpoint[CONFIG_KEY] = config_yaml

    return StoreConfig()


def save_checkpoint(model: L.LightningModule, path: str | Path, config: dict[str, Any]) -> Path:
    """Write ``model`` as the artefact ``multimodal fit`` writes, readable by :func:`load`; returns the path.

    The checkpoint holds the state dict, the stored config (``config``: ``{"model": {"class_path", "init_args"},
    "data": {"class_path", "init_args"}}``, as YAML text under :data:`CONFIG_KEY`) and what the model's own
    ``on_save_checkpoint`` adds (label vocabularies, ...): the same hook Lightning's checkpoints go through, so
    there is one mechanism. Written to a temporary sibling and renamed (a reader never sees half a file); the
    parent folder is created.

    Args:
        model: the trained task (any LightningModule of this package).
        path: where the checkpoint goes.
        config: the stored config the loader rebuilds the model from.
    """
    import os
    import tempfile

    import torch
    import yaml

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    checkpoint: dict[str, Any] = {"state_dict": model.state_dict(), CONFIG_KEY: yaml.safe_dump(config)}
    model.on_save_checkpoint(checkpoint)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint safely, with a one-line error for a missing or foreign file (``mmap``: tensors stay on
    disk until touched, for a quick look at what a checkpoint holds)."""
    import pickle

    import torch

    p = Path(path)
    if not p.is_file():
        raise UserError(f"checkpoint not found: {p}")
    try:
        checkpoint = torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"{p} is not a checkpoint of this project (it cannot be read safely with weights_only=True: {first})"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"{p} is not a Lightning checkpoint (no state_dict)")
    return checkpoint


def stored_config(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The resolved config ``multimodal fit`` stored in the checkpoint, with moved class paths updated."""
    import yaml

    text = checkpoint.get(CONFIG_KEY)
    if text is None:
        raise UserError(
            f"{path} has no stored config: it was not written by `multimodal fit` (train with `multimodal fit`, "
            "or resume it once with `multimodal fit --config <its config> --ckpt_path <it>` to re-save it)"
        )
    config = yaml.safe_load(text) or {}
    for section in ("model", "data"):
        part = config.get(section)
        if isinstance(part, dict) and part.get("class_path") in MOVED_CLASSES:
            part["class_path"] = MOVED_CLASSES[part["class_path"]]
    return config


# Packages a stored config may name classes of: nothing else is imported on a checkpoint's word.
TRUSTED_PACKAGES = ("multimodal", "encoders", "fusion", "torch", "timm", "open_clip", "transformers", "lightning")


def check_trusted(config: Any, path: str | Path, where: str = "model", trusted: tuple[str, ...] | None = None) -> None:
    """Refuse a stored config that names a class outside :data:`TRUSTED_PACKAGES` and the packages of the
    registered tasks (``trusted``, default :func:`multimodal.task.registered_packages`: the user's own
    registration, never the checkpoint's word) or asks for remote code, before anything it names is imported."""
    from multimodal.task import ENTRY_POINT_GROUP, TASKS_VARIABLE, registered_packages

    trusted = TRUSTED_PACKAGES + registered_packages() if trusted is None else trusted
    if isinstance(config, dict):
        for key, value in config.items():
            if key == "class_path" and str(value).split(".", 1)[0] not in trusted:
                raise UserError(
                    f"{path}: the stored config names class '{value}' at {where}, outside the trusted packages "
                    f"({', '.join(trusted)}); refusing to import it (a task of another package is trusted once "
                    f"registered: an entry point in group {ENTRY_POINT_GROUP}, or {TASKS_VARIABLE})"
                )
            if key == "trust_remote_code" and value:
                raise UserError(f"{path}: the stored config asks for trust_remote_code at {where}; refusing it")
            check_trusted(value, path, f"{where}.{key}", trusted)
    elif isinstance(config, list):
        for i, value in enumerate(config):
            check_trusted(value, path, f"{where}[{i}]", trusted)


def build_model(model_config: dict[str, Any], path: str | Path) -> Any:
    """Instantiate the ``model`` section of a stored config through jsonargparse (as LightningCLI does)."""
    import lightning as L
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningModule, "model")
    try:
        cfg = parser.parse_object({"model": model_config})
        instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in 4.49
        return instantiate(cfg).model
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - a stored config that no longer builds is a user-facing problem
        text = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
        raise UserError(f"{path}: the stored model config cannot be rebuilt: {text[:400]}") from err


def describe(path: str | Path) -> tuple[str, Columns]:
    """The task class name and the columns of a checkpoint (or ONNX export), without building its model (tensors
    stay on disk)."""
    from multimodal.onnx.manifest import is_onnx_export, read_model_manifest

    if is_onnx_export(path):
        info = read_model_manifest(path)
        return info["task"], Columns.from_manifest(info["columns"])
    config = stored_config(read_checkpoint(path, mmap=True), path)
    class_path = str((config.get("model") or {}).get("class_path", ""))
    data = dict(((config.get("data") or {}).get("init_args")) or {})
    return class_path.rsplit(".", 1)[-1] or "model", Columns.from_data_config(data)


def load(
    path: str | Path, task: type | str | None = None, runtime: str = "torch", merge_adapters: bool = True
) -> Loaded:
    """Rebuild the task that wrote ``path`` and load its weights; no data module, config file or catalogue.

    Args:
        path: a checkpoint written by ``multimodal fit``, or an ONNX export folder (``multimodal export-model``).
        task: if given, the model must be an instance of this class (or of the class at this import path), else a
            one-line error naming both.
        runtime: ``torch`` (eager), ``onnx`` or ``onnx-int8`` (ONNX Runtime; a checkpoint is exported once to the
            user cache). An export folder runs on ONNX Runtime whatever this says, unless it is ``onnx-int8``.
        merge_adapters: fold the peft adapters of a tower trained with ``trainable: {lora: ...}`` into its weights
            (the same outputs to rounding, at the cost of the plain tower); False keeps them apart.
    """
    from multimodal.lite import torch_importable
    from multimodal.onnx.manifest import is_onnx_export

    if runtime not in ("torch", "onnx", "onnx-int8"):
        raise UserError(f"runtime must be torch, onnx or onnx-int8, not '{runtime}'")
    if is_onnx_export(path) or runtime != "torch" or not torch_importable():
        return _load_onnx(Path(path), task, runtime)
    if isinstance(task, str):
        from multimodal.task import resolve

        task = resolve(task)
    checkpoint = read_checkpoint(path)
    config = stored_config(checkpoint, path)
    model_config = config.get("model") or {}
    name = str(model_config.get("class_path", "")).rsplit(".", 1)[-1] or "model"
    if task is not None and name != task.__name__:
        raise UserError(f"{path} holds a {name} checkpoint, not a {task.__name__}")
    check_trusted(model_config, path)
    model = build_model(model_config, path)
    if task is not None and not isinstance(model, task):
        raise UserError(f"{path} holds a {type(model).__name__} checkpoint, not a {task.__name__}")
    _load_weights(model, checkpoint, path)
    if merge_adapters:
        from encoders.adapters import merge_adapters as merge

        merge(model)
    data = dict(((config.get("data") or {}).get("init_args")) or {})
    return Loaded(model, Columns.from_data_config(data), data, config, Path(path))


def _load_weights(model: Any, checkpoint: dict[str, Any], path: str | Path) -> None:
    """Put the checkpoint's weights (and the pretrained weights it refers to) into ``model``, in eval mode."""
    from multimodal.pretrained_reference import restore_pretrained

    restore_pretrained(model, checkpoint, str(path))  # first, so that its errors name the file
    model.on_load_checkpoint(checkpoint)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"{path}: the weights do not fit the stored architecture ({first})") from None
    model.eval()


def _load_onnx(path: Path, task: type | str | None, runtime: str) -> Loaded:
    """An export folder, or the export ``--runtime onnx`` runs for a checkpoint (:mod:`multimodal.onnx.cache`),
    on ONNX Runtime; its files are checked against their hashes and its labels against its graphs. Where torch
    cannot be imported, an export runs on :mod:`multimodal.lite` and a checkpoint is a one-line error."""
    from multimodal.lite import wanted

    if wanted(path):
        from multimodal.lite.loading import load as load_lite

        return load_lite(path, task, runtime)
    from multimodal.onnx.cache import export_for
    from multimodal.onnx.manifest import is_onnx_export
    from multimodal.onnx.runtime import load_onnx

    int8 = runtime == "onnx-int8"
    hashed = not is_onnx_export(path)
    if hashed:
        read_checkpoint(path, mmap=True)  # a missing or foreign file: its one-line error first
        path = export_for(path, int8)  # checks the files of the export it picks
    loaded = load_onnx(path, int8, hashed)
    wanted = task if isinstance(task, str) or task is None else task.__name__
    if wanted is not None and loaded.task != wanted.rsplit(".", 1)[-1]:
        raise UserError(f"{path} holds a {loaded.task} export, not a {wanted.rsplit('.', 1)[-1]}")
    return loaded
