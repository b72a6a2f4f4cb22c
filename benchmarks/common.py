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


def say(message: str) -> None:
    """One progress line, prefixed with the seconds since the program started, flushed at once."""
    print(f"[{time.perf_counter() - _START:7.1f}s] {message}", flush=True)


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU) the same way for every variant."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
        "command": " ".join([Path(sys.executable).name, "-m", _module_name(), *sys.argv[1:]]),
    }


def _module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else sys.argv[0]


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented JSON (parent folders created)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
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


def format_table(results: dict[str, dict[str, Any]], attributes: Sequence[str]) -> str:
    """Markdown table: one row per method, ``acc / macro-F1`` per attribute, then the mean macro-F1."""
    head = "| method | " + " | ".join(f"{a} acc / F1" for a in attributes) + " | mean acc | **mean macro-F1** |"
    rule = "|---|" + "---|" * (len(attributes) + 2)
    rows = [head, rule]
    for name, res in results.items():
        cells = [f"{res['per_attribute'][a]['acc']:.3f} / {res['per_attribute'][a]['macro_f1']:.3f}" for a in attributes]
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {res['mean_acc']:.3f} | **{res['mean_macro_f1']:.3f}** |")
    return "\n".join(rows)
