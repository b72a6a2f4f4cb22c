"""What the per-task LitServe APIs share: loading in each worker, per-request problems, batched answers.

Each task has its own module (:mod:`~multimodal.serve.tag_api`, :mod:`~multimodal.serve.caption_api`,
:mod:`~multimodal.serve.search_api`), each calling that task's Python inference API.

LitServe's dynamic batching hands ``predict`` every request that arrived within ``batch_timeout`` (up to
``max_batch_size``); ``predict`` answers them with one call of the task API (in forward passes of
``--forward_batch_size``). ``decode_request`` runs per request in the inference worker: a mistake becomes a
:class:`~multimodal.serve.requests.Problem` that travels through the batch untouched and is answered as a 4xx JSON
error for that request alone.
"""

import math
from typing import Any, ClassVar

import litserve as ls

from multimodal.errors import UserError
from multimodal.serve.requests import Payload, Problem, fetched_photos, images

Item = Any  # what decode_request returns: a task's input dict, or a Problem


def plain(value: Any) -> Any:
    """A JSON-safe copy of a products-table or row value (NumPy scalars and arrays, NaN -> None)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def set_threads(threads: int) -> None:
    """The worker's intra-op threads: torch's where torch is installed, ONNX Runtime's (``OMP_NUM_THREADS``, read
    by :func:`multimodal.lite.sessions.session`) in any case."""
    import os

    from multimodal.lite import torch_importable

    os.environ["OMP_NUM_THREADS"] = str(threads)
    if torch_importable():
        import torch

        torch.set_num_threads(threads)


class TaskAPI(ls.LitAPI):
    """What the three APIs share: per-request problems, batched or single ``predict``, JSON errors.

    Args:
        checkpoint: the task's checkpoint (or, for search, the index folder).
        max_pixels: largest uploaded image, in pixels.
        max_batch_size / batch_timeout: LitServe's dynamic batching.
        threads: torch threads of the worker (None: torch's default).
        forward_batch_size: items per forward pass of the task API (None: ``cpu_forward_batch`` on a CPU, else the
            whole dynamic batch).
    """

    path: ClassVar[str] = "/predict"
    # Items per forward pass on a CPU when --forward_batch_size is not given (None: the whole dynamic batch).
    cpu_forward_batch: ClassVar[int | None] = None

    def __init__(
        self,
        checkpoint: str,
        max_pixels: int,
        max_batch_size: int = 1,
        batch_timeout: float = 0.0,
        threads: int | None = None,
        forward_batch_size: int | None = None,
        runtime: str = "torch",
        fetch_hosts: tuple[str, ...] = (),
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=self.path)
        self.runtime = runtime
        self.fetch_hosts = tuple(fetch_hosts)
        self._fetcher: Any = None
        self.checkpoint = checkpoint
        self.max_pixels = max_pixels
        self.threads = threads
        self.forward_batch_size = forward_batch_size

    def setup(self, device: str) -> None:
        if self.threads:
            set_threads(self.threads)
        if self.forward_batch_size is None:
            on_cpu = not str(device).startswith(("cuda", "mps"))
            cap = self.cpu_forward_batch if on_cpu and self.cpu_forward_batch else self.max_batch_size
            self.forward_batch_size = min(self.max_batch_size, cap)
        self.load(device)

    def load(self, device: str) -> None:
        """Load the task's model on ``device`` (once per inference worker)."""
        raise NotImplementedError

    def python_api(self, device: str) -> Any:
        """The model's Python API, as ``multimodal.load`` gives it: eager or ONNX Runtime with torch, the torch-free
        runtime from an ONNX export where torch cannot be imported."""
        import multimodal

        return multimodal.load(self.checkpoint, device=device, batch_size=self.forward_batch_size, runtime=self.runtime)

    # No ``from __future__ import annotations`` in this module: LitServe hands this annotation to FastAPI as the
    # endpoint's parameter type, so it must be the object itself (FastAPI then runs read_payload per request).
    def decode_request(self, request: Payload) -> Item:
        try:
            return self.decode(request)
        except Problem as problem:
            return problem
        except UserError as err:
            return Problem(str(err))

    def decode(self, payload: dict[str, Any]) -> Any:
        raise NotImplementedError

    def photos(self, payload: dict[str, Any]) -> list[Any]:
        """A product's photos: the uploads of field ``image`` (repeated for several), then the URLs of field
        ``image_url``, which are fetched only from the hosts the operator allowed (``--fetch_hosts``), never at a
        loopback, link-local or private address."""
        uploads = images(payload, "image", self.max_pixels)
        urls = payload.get("image_url")
        if urls is None:
            return uploads
        if not self.fetch_hosts:
            raise Problem("this service does not fetch photo URLs (its operator enables it with --fetch_hosts)", 403)
        if self._fetcher is None:
            from multimodal.data.fetch import FetchOptions, PhotoFetcher

            self._fetcher = PhotoFetcher(FetchOptions(allow_hosts=self.fetch_hosts, retries=1))
        return uploads + fetched_photos(self._fetcher, urls, self.max_pixels)

    def answer(self, items: list[Any]) -> list[Any]:
        """One output per decoded request (a dict, or a Problem)."""
        raise NotImplementedError

    def predict(self, x: Any) -> Any:
        items = list(x) if self.max_batch_size > 1 else [x]
        todo = [i for i, item in enumerate(items) if not isinstance(item, Problem)]
        outputs = list(items)
        if todo:
            try:
                answers = self.answer([items[i] for i in todo])
            except UserError as err:
                answers = [Problem(str(err))] * len(todo)
            for i, out in zip(todo, answers, strict=True):
                outputs[i] = out
        return outputs if self.max_batch_size > 1 else outputs[0]

    def encode_response(self, output: Any) -> Any:
        return output.response() if isinstance(output, Problem) else output
