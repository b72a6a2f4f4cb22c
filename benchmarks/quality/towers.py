"""Frozen towers, run once and read back: their outputs cached for training by stand-in encoders (so the quality
benchmarks train only what changes and every variant sees the same features); and the trained model rebuilt as
users run it, a checkpoint with its real towers loaded by ``multimodal.load`` on torch eager or ONNX Runtime."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import say
from benchmarks.harness import Option


class CachedFeatureTransform:
    """Image "transform" that returns the frozen vision tower's precomputed output for a decoded image.

    The key is an MD5 of the decoded RGB pixels, so the dataset's own loading (EXIF rotation, RGB conversion)
    runs unchanged. Output: ``(3, 1 + N, D)``: row 0 is the pooled vector, rows 1.. the N tokens, repeated over a
    dummy channel axis because the dataset makes ``(3, H, W)`` zeros for a product without a photo.
    """

    def __init__(self, cache: dict[str, Any], shape: tuple[int, int]) -> None:
        self.cache, self.shape = cache, shape

    def __call__(self, image: Any) -> torch.Tensor:
        if image.size == (64, 64) and not image.getbbox():  # the data module's blank probe image
            return torch.zeros(3, *self.shape)
        key = image_key(image)
        if key not in self.cache:
            raise KeyError(f"image {image.size} not in the vision feature cache (cache built from another catalogue?)")
        return self.cache[key].unsqueeze(0).expand(3, -1, -1)


def image_key(image: Any) -> str:
    import hashlib

    return hashlib.md5(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()


def build_vision_cache(records: Any, image_root: Path, encoder: Any, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Run a frozen vision encoder (eval transform) once over every readable product photo.

    Returns ``{image_key: (1 + N, D) float32}`` with the pooled vector in row 0 and the tokens after it.
    """
    from multimodal.data.images import load_image, resolve_image_path
    from multimodal.errors import BadSampleError

    transform = encoder.image_transform(train=False)
    encoder.eval()
    cache: dict[str, torch.Tensor] = {}
    keys: list[str] = []
    pixels: list[torch.Tensor] = []

    def flush() -> None:
        with torch.inference_mode():
            f = encoder(torch.stack(pixels))
        for k, pooled, tokens in zip(keys, f.pooled, f.tokens, strict=True):
            cache[k] = torch.cat([pooled[None], tokens]).clone()
        keys.clear()
        pixels.clear()

    todo = [r for r in records if r.image is not None]
    for n, rec in enumerate(todo, 1):
        try:
            image = load_image(resolve_image_path(image_root, rec.image))
        except BadSampleError:
            continue  # the dataset will report it as skipped
        key = image_key(image)
        if key in cache or key in keys:
            continue
        keys.append(key)
        pixels.append(transform(image))
        if len(keys) == batch_size:
            flush()
            say(f"vision cache: {n}/{len(todo)} photos")
    if keys:
        flush()
    return cache


def cached_vision_encoder(cache: dict[str, torch.Tensor], output_dim: int, tokens: int) -> Any:
    """A :class:`encoders.types.VisionEncoder` that reads a frozen tower's cached output from ``pixel_values``."""
    from encoders.types import Features, VisionEncoder

    class CachedVisionEncoder(VisionEncoder):
        """Frozen vision tower whose outputs were computed once (see :func:`build_vision_cache`); no parameters."""

        def __init__(self) -> None:
            super().__init__()
            self.output_dim = output_dim
            self.transform = CachedFeatureTransform(cache, (1 + tokens, output_dim))

        def image_transform(self, train: bool) -> Any:
            return self.transform  # the frozen tower saw the eval transform: no train-time augmentation

        def forward(self, pixel_values: torch.Tensor) -> Features:
            x = pixel_values[:, 0]  # (B, 1 + N, D)
            tokens = x[:, 1:]
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
            return Features(tokens=tokens, mask=mask, pooled=x[:, 0])

    return CachedVisionEncoder()


def cached_text_encoder(base: Any, cache: dict[str, torch.Tensor] | None = None) -> Any:
    """Wrap a *frozen* Hugging Face text encoder so each distinct text is encoded once (in eval mode) and reused.

    The cache key is the unpadded token ids; a miss runs the frozen model on the missing rows only. The output
    is the same :class:`encoders.types.Features` the wrapped encoder returns (tokens, mask, pooled). Pass the
    same ``cache`` dict to share it between models built on the same frozen weights.
    """
    from encoders.text import pool_tokens
    from encoders.types import Features, TextEncoder

    class CachedTextEncoder(TextEncoder):
        def __init__(self) -> None:
            super().__init__()
            self.base = base.requires_grad_(False)
            self.output_dim, self.max_length = base.output_dim, base.max_length
            self.cache: dict[str, torch.Tensor] = {} if cache is None else cache

        @property
        def tokenizer(self) -> Any:
            return self.base.tokenizer

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Features:
            lengths = attention_mask.sum(1).tolist()
            keys = [input_ids[i, :n].cpu().numpy().tobytes().hex() for i, n in enumerate(lengths)]
            missing = [i for i, k in enumerate(keys) if k not in self.cache]
            if missing:
                self.base.eval()  # frozen: no dropout, so a cached text always gives the same features
                with torch.no_grad():
                    out = self.base(input_ids[missing], attention_mask[missing])
                for j, i in enumerate(missing):
                    self.cache[keys[i]] = out.tokens[j, : lengths[i]].clone()
            tokens = input_ids.new_zeros(*input_ids.shape, self.output_dim, dtype=torch.float32)  # (B, T, D)
            for i, k in enumerate(keys):
                tokens[i, : lengths[i]] = self.cache[k]
            mask = attention_mask.bool()
            return Features(tokens=tokens, mask=mask, pooled=pool_tokens(tokens, mask, self.base.pooling))

    return CachedTextEncoder()


RUNTIMES = {"torch": "torch eager", "onnx": "onnx fp32", "onnx-int8": "onnx int8"}


def runtimes_option(rows: str) -> Option:
    """``--runtimes``: also score the trained models as users run them (see :func:`deployable_checkpoint`)."""
    return Option([], nargs="*", choices=list(RUNTIMES), type=str,
                  help="also score each trained model as a user runs it: rebuilt with its real towers as a checkpoint, "
                  f"on torch eager and/or exported to ONNX Runtime fp32 / int8 ({rows})")  # fmt: skip


def deployable_checkpoint(
    trained: Any, model_config: dict[str, Any], data_args: dict[str, Any], path: Path
) -> tuple[Path, list[str]]:
    """The trained model as a checkpoint ``multimodal.load`` reads, with real towers.

    Benchmarks train on frozen tower outputs read from a feature cache; a user's checkpoint holds the towers. The
    model is rebuilt from ``model_config`` (the same architecture, pretrained towers) and given every weight of
    ``trained``; the frozen towers that ``trained`` read from a cache (no weights there) keep their pretrained
    files. Returns the path and the state keys that came from the pretrained files.
    """
    from multimodal.loading import build_model, save_checkpoint

    model = build_model(model_config, path)
    if hasattr(trained, "vocabularies"):
        model.build_heads(trained.vocabularies, trained.tag_vocabularies)
    own, state = model.state_dict(), trained.state_dict()
    pretrained = [k for k in own if k not in state]
    wrong = [k for k in pretrained if not k.startswith(("vision.", "text."))] + [k for k in state if k not in own]
    if wrong:
        raise RuntimeError(f"the trained model and its deployable rebuild differ beyond the towers: {wrong[:5]}")
    model.load_state_dict({**own, **state})
    data = {"class_path": "multimodal.data.datamodule.ProductDataModule", "init_args": data_args}
    return save_checkpoint(model, path, {"model": model_config, "data": data}), pretrained


def runtime_apis(ckpt: Path, work: Path, runtimes: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Python API of ``ckpt`` on each runtime (``torch``, ``onnx``, ``onnx-int8``), keyed by
    :data:`RUNTIMES` label; the ONNX export (``multimodal export-model``'s code, int8 included) is made once in
    ``work``. Also returns the export's manifest (empty without ONNX runtimes)."""
    import multimodal
    from multimodal.onnx.export import export_model

    info: dict[str, Any] = {}
    folder = work / "onnx"
    if any(r != "torch" for r in runtimes):
        start = time.perf_counter()
        info = export_model(ckpt, folder, "int8", progress=False)
        info["export_seconds"] = round(time.perf_counter() - start, 1)
    apis = {}
    for runtime in runtimes:
        apis[RUNTIMES[runtime]] = multimodal.load(ckpt if runtime == "torch" else folder, runtime=runtime)
    return apis, info
