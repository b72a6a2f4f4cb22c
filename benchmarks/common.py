"""Helpers shared by the benchmark programs: machine description, seeding, logging, JSON output, F1 tables."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Lightning and transformers chatter would drown the progress lines.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_START = time.perf_counter()
# The run now going on (set by :func:`begin`): a program is one run per process from the command line, but the smoke
# tests call several programs' ``main(argv)`` one after the other in one process.
_RUN: dict[str, Any] = {"program": None, "argv": None, "load_start": None}


def say(message: str) -> None:
    """One progress line, prefixed with the seconds since the program started, flushed at once."""
    print(f"[{time.perf_counter() - _START:7.1f}s] {message}", flush=True)


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU) the same way for every variant."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(threads: int) -> None:
    """Use ``threads`` torch CPU threads (0 keeps torch's default).

    On a box whose cores other jobs also use, one thread per process avoids the OpenMP threads waiting on each
    other: measured here (2 cores, load ~15) one tagger step took 1.6 s with 1 thread and 10 s with 2.
    """
    if threads > 0:
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:
            pass  # already set once in this process


def quiet_lightning() -> None:
    """Silence Lightning's info lines (GPU available, model summary hints...); warnings stay."""
    import logging
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def machine() -> dict[str, Any]:
    """What ran the benchmark (recorded next to every number)."""
    import lightning
    import transformers

    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "transformers": transformers.__version__,
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "command": " ".join([Path(sys.executable).name, "-m", _module_name(), *_argv()]),
    }


def _module_name() -> str:
    if _RUN["program"]:
        return _RUN["program"]
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else sys.argv[0]


def _argv() -> list[str]:
    return list(sys.argv[1:] if _RUN["argv"] is None else _RUN["argv"])


def begin(program: str, argv: Sequence[str] | None) -> None:
    """Mark the start of a run of ``program`` (``benchmarks.<name>``) with ``argv``: the command
    :func:`machine` records and the load average :func:`write_json` writes beside the numbers."""
    _RUN.update(program=program, argv=None if argv is None else list(argv), load_start=load_average())


def load_average() -> dict[str, float]:
    """The machine's 1, 5 and 15 minute load averages now (``os.getloadavg``)."""
    one, five, fifteen = os.getloadavg()
    return {"1min": round(one, 2), "5min": round(five, 2), "15min": round(fifteen, 2)}


def ratio(numerator: float | None, denominator: float | None, digits: int = 4) -> float | None:
    """``numerator / denominator`` rounded, or None when either is missing or not finite or the denominator is 0
    (a cell that answered nothing, a peer that scored 0): reported as such, never divided by."""
    if numerator is None or denominator is None or not np.isfinite(numerator) or not np.isfinite(denominator):
        return None
    return None if denominator == 0 else round(float(numerator) / float(denominator), digits)


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented JSON (parent folders created), with the load average at the run's start
    (:func:`begin`) and now: other jobs on the machine slow what is measured."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    load = {"start": _RUN["load_start"] or load_average(), "end": load_average()}
    p.write_text(json.dumps({**payload, "load_average": load}, indent=2, sort_keys=False) + "\n")
    return p


def attribute_scores(y_true: Sequence[str | None], y_pred: Sequence[str]) -> dict[str, float | int]:
    """Accuracy and macro-F1 of one attribute, computed the same way for every method.

    Items whose true label is unknown (None: empty, NA or null in the manifest) are left out. Macro-F1 is
    ``sklearn.metrics.f1_score(average="macro")`` over the labels present in ``y_true`` or ``y_pred``
    (``zero_division=0``), so a class that neither occurs nor is predicted in the test split does not count.
    A true label never seen in training stays in (no method can predict it; it counts against all alike).
    """
    from sklearn.metrics import accuracy_score, f1_score

    pairs = [(t, p) for t, p in zip(y_true, y_pred, strict=True) if t is not None]
    if not pairs:
        return {"n": 0, "acc": float("nan"), "macro_f1": float("nan")}
    t, p = zip(*pairs, strict=True)
    labels = sorted(set(t) | set(p))
    return {
        "n": len(pairs),
        "acc": float(accuracy_score(t, p)),
        "macro_f1": float(f1_score(t, p, labels=labels, average="macro", zero_division=0)),
    }


def score_table(
    truth: dict[str, list[str | None]], predictions: dict[str, list[str]], attributes: Sequence[str]
) -> dict[str, Any]:
    """Per-attribute scores plus the mean accuracy and mean macro-F1 over ``attributes``."""
    per = {a: attribute_scores(truth[a], predictions[a]) for a in attributes}
    return {
        "per_attribute": per,
        "mean_acc": float(np.mean([per[a]["acc"] for a in attributes])),
        "mean_macro_f1": float(np.mean([per[a]["macro_f1"] for a in attributes])),
    }


def paired_bootstrap(
    truth: dict[str, list[str | None]],
    predictions_a: dict[str, list[str]] | Sequence[dict[str, list[str]]],
    predictions_b: dict[str, list[str]],
    attributes: Sequence[str],
    samples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Paired bootstrap of ``mean macro-F1(a) - mean macro-F1(b)`` over the test products.

    Each of ``samples`` draws resamples the products with replacement, once for both methods, and scores both
    exactly as :func:`attribute_scores` does (unknown true labels left out; macro over the labels present in the
    draw's truth or predictions). ``predictions_a`` may be several prediction sets (runs of one method with other
    seeds): ``a``'s score is then their average on the same draw. Returns the observed difference, the 2.5 / 97.5
    percentiles of the drawn differences and the share of draws in which ``a`` is ahead.
    """
    runs_a = [predictions_a] if isinstance(predictions_a, dict) else list(predictions_a)
    n = len(truth[attributes[0]])
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(samples, n))
    diff = np.zeros(samples)
    observed = 0.0
    for a in attributes:
        predicted = set(predictions_b[a]).union(*(set(r[a]) for r in runs_a))
        labels = sorted({x for x in truth[a] if x is not None} | predicted)
        code = {label: i for i, label in enumerate(labels)}
        known = np.array([x is not None for x in truth[a]])
        t = np.array([code[x] if x is not None else -1 for x in truth[a]])
        drawn, whole = [], []
        for preds in (*runs_a, predictions_b):
            p = np.array([code[x] for x in preds[a]])
            drawn.append(_macro_f1_draws(t, p, known, draws, len(labels)))
            whole.append(_macro_f1_draws(t, p, known, np.arange(n)[None], len(labels))[0])
        diff += np.mean(drawn[:-1], axis=0) - drawn[-1]
        observed += float(np.mean(whole[:-1])) - whole[-1]
    k = len(attributes)
    diff, observed = diff / k, observed / k
    return {
        "diff": float(observed),
        "ci95_low": float(np.percentile(diff, 2.5)),
        "ci95_high": float(np.percentile(diff, 97.5)),
        "share_ahead": float((diff > 0).mean()),
        "samples": samples,
    }


def _macro_f1_draws(t: np.ndarray, p: np.ndarray, known: np.ndarray, draws: np.ndarray, k: int) -> np.ndarray:
    """Macro-F1 per draw (rows of product indices): ``2 tp / (true + predicted)`` per class, over classes seen."""
    out = np.empty(len(draws))
    for i, idx in enumerate(draws):
        idx = idx[known[idx]]
        ti, pi = t[idx], p[idx]
        true_n, pred_n = np.bincount(ti, minlength=k), np.bincount(pi, minlength=k)
        tp = np.bincount(ti[ti == pi], minlength=k)
        seen = (true_n + pred_n) > 0
        out[i] = (2 * tp[seen] / (true_n[seen] + pred_n[seen])).mean() if seen.any() else np.nan
    return out


def format_table(results: dict[str, dict[str, Any]], attributes: Sequence[str]) -> str:
    """Markdown table: one row per method, ``acc / macro-F1`` per attribute, then the mean macro-F1."""
    head = "| method | " + " | ".join(f"{a} acc / F1" for a in attributes) + " | mean acc | **mean macro-F1** |"
    rule = "|---|" + "---|" * (len(attributes) + 2)
    rows = [head, rule]
    for name, res in results.items():
        cells = [
            f"{res['per_attribute'][a]['acc']:.3f} / {res['per_attribute'][a]['macro_f1']:.3f}" for a in attributes
        ]
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {res['mean_acc']:.3f} | **{res['mean_macro_f1']:.3f}** |")
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------ frozen vision cache
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


# ------------------------------------------------------------------------------- runtimes of a trained model
RUNTIMES = {"torch": "torch eager", "onnx": "onnx fp32", "onnx-int8": "onnx int8"}


def add_runtimes_argument(parser: Any, rows: str) -> None:
    """``--runtimes``: also score the trained models as users run them (see :func:`deployable_checkpoint`)."""
    parser.add_argument(
        "--runtimes",
        nargs="*",
        default=[],
        choices=list(RUNTIMES),
        help="also score each trained model as a user runs it: rebuilt with its real towers as a checkpoint, on "
        f"torch eager and/or exported to ONNX Runtime fp32 / int8 ({rows})",
    )


def deployable_checkpoint(
    trained: Any, model_config: dict[str, Any], data_args: dict[str, Any], path: Path
) -> tuple[Path, list[str]]:
    """The trained model as a checkpoint ``multimodal.load`` reads, with real towers.

    Benchmarks train on frozen tower outputs read from a feature cache; a user's checkpoint holds the towers. The
    model is rebuilt from ``model_config`` (the same architecture, pretrained towers) and given every weight of
    ``trained``; the frozen towers that ``trained`` read from a cache (no weights there) keep their pretrained
    files. Returns the path and the state keys that came from the pretrained files.
    """
    import yaml

    from multimodal.loading import CONFIG_KEY, build_model

    model = build_model(model_config, path)
    if hasattr(trained, "vocabularies"):
        model.build_heads(trained.vocabularies, trained.tag_vocabularies)
    own, state = model.state_dict(), trained.state_dict()
    pretrained = [k for k in own if k not in state]
    wrong = [k for k in pretrained if not k.startswith(("vision.", "text."))] + [k for k in state if k not in own]
    if wrong:
        raise RuntimeError(f"the trained model and its deployable rebuild differ beyond the towers: {wrong[:5]}")
    model.load_state_dict({**own, **state})
    config = {"model": model_config, "data": {"class_path": "multimodal.data.datamodule.ProductDataModule",
                                              "init_args": data_args}}  # fmt: skip
    checkpoint: dict[str, Any] = {"state_dict": model.state_dict(), CONFIG_KEY: yaml.safe_dump(config)}
    model.on_save_checkpoint(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path, pretrained


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
