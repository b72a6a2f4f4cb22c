"""Helpers shared by the benchmark programs: machine description, seeding, threads, logging, ratios, JSON output.

The quality benchmarks' scores, feature caches and deployable checkpoints are in :mod:`benchmarks.quality`.
"""

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
