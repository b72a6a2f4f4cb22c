"""Multimodal product understanding: tagging, captioning and image-text search on Lightning.

``multimodal.load(path)`` turns any task's checkpoint into its Python API (:class:`~multimodal.tagging.predictor.
Tagger`, :class:`~multimodal.search.predictor.Retriever` or :class:`~multimodal.captioning.predictor.Captioner`).
Importing the package imports nothing heavy; torch is imported by the first ``load``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__version__ = "0.1.0"


def load(
    path: str | Path, device: str = "cpu", batch_size: int = 32, runtime: str = "torch", merge_adapters: bool = True
) -> Any:
    """Load a checkpoint written by ``multimodal fit`` (any task), or an ONNX export of one, as its Python API.

    No config, data module or training catalogue is needed: the checkpoint holds the architecture, the label
    vocabularies and the columns the model reads.

    Args:
        path: the checkpoint (``.ckpt``) or an ONNX export folder (``multimodal export-model``).
        device: torch device to run on (ONNX Runtime runs on the CPU).
        batch_size: items per forward pass.
        runtime: ``torch`` (eager PyTorch), ``onnx`` (ONNX Runtime fp32) or ``onnx-int8`` (dynamic int8);
            with a checkpoint, ``onnx`` exports it once to the user cache (``$MULTIMODAL_CACHE``, default
            ``~/.cache/multimodal``). Taggers and retrievers; a captioner runs on torch, or, from an export
            folder where torch is not installed, on the torch-free runtime (:mod:`multimodal.lite`).
        merge_adapters: fold peft adapters (towers trained with ``trainable: {lora: ...}``) into the weights
            they adapt (default; same outputs to rounding, plain-tower speed).

    Returns:
        A ``Tagger`` (``predict``, ``predict_proba``, ``extract_embedding``), a ``Retriever`` (``embed_text``,
        ``embed_images``, ``extract_embedding``) or a ``Captioner`` (``caption``).
    """
    from multimodal.errors import UserError
    from multimodal.lite import wanted

    if wanted(path):  # an ONNX export where torch cannot be imported: the torch-free runtime
        from multimodal.lite.loading import load_api

        return load_api(path, batch_size, runtime)
    from multimodal.loading import load as load_task
    from multimodal.task import resolve, task_of, tasks

    loaded = load_task(path, runtime=runtime, merge_adapters=merge_adapters)
    task = task_of(loaded.task)
    if task is None:
        known = sorted(t.class_name for t in tasks())
        raise UserError(f"{path} holds a {loaded.task}, which has no Python API (known: {known})")
    return resolve(task.api)(loaded, device=device, batch_size=batch_size)
