"""``caption_quality --merge``: one table from runs made apart (one process per method and seed, other flags per
method), per-seed and mean CIDEr of greedy decoding and each ``--compare`` decoding, ratios to the peer's."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from benchmarks.common import say, write_json
from benchmarks.quality.caption_models import COPYING, DECODING, PEER

RUN_FLAGS = ("retrieval", "word_dropout", "conditioning", "lm_adapter", "head_init", "lm_warmup_steps", "self_critical")


def public_command(command: str) -> str:
    """``command`` without ``--out`` / ``--features_cache`` and with ``--data``'s folder as ``data/<name>``."""
    words, out, skip = command.split(), [], False
    for i, word in enumerate(words):
        if skip:
            skip = False
            continue
        if word in ("--out", "--features_cache"):
            skip = True
        elif i > 0 and words[i - 1] == "--data":
            out.append(f"data/{Path(word).name}")
        else:
            out.append(word)
    return " ".join(out)


def merge(paths: list[str], out: str) -> None:
    """One table from separate runs: a row per method and per-method flags (``--retrieval 3`` ...), per-seed and
    mean CIDEr of greedy decoding and of each ``--compare`` decoding, ratios of the means to the peer's."""
    rows, runs = _collect(paths)
    decodings = sorted({k for r in rows.values() for v in r.values() for k in DECODING if k in v})

    def mean(label: str, decoding: str | None) -> float | None:
        values = [
            (v[decoding] if decoding else v)["cider"] for v in rows[label].values() if not decoding or decoding in v
        ]
        return sum(values) / len(values) if values else None

    # the peer to divide by: its row without other flags than --epochs, the best greedy mean of those
    peers = [label for label in rows if re.fullmatch(rf"{PEER}( --epochs \d+)?", label)]
    best = max(peers, key=lambda label: mean(label, None) or 0.0, default=None)
    peer = {d: mean(best, d) for d in [None, *decodings]} if best else {}
    head = ["method", "seeds", "CIDEr per seed", "mean CIDEr", "/ peer"]
    for d in decodings:
        head += [f"{d}: CIDEr per seed", f"{d}: mean", f"{d}: / peer {d}", f"{d}: / peer greedy"]
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    means: dict[str, dict[str, float | None]] = {}
    for label, by_seed in rows.items():
        seeds = sorted(by_seed)
        means[label] = {"greedy": mean(label, None), **{d: mean(label, d) for d in decodings}}
        cells = [label, ", ".join(map(str, seeds)), " / ".join(f"{by_seed[s]['cider']:.4f}" for s in seeds),
                 f"{means[label]['greedy']:.4f}", _ratio(means[label]["greedy"], peer.get(None))]  # fmt: skip
        for d in decodings:
            got = [f"{by_seed[s][d]['cider']:.4f}" if d in by_seed[s] else "-" for s in seeds]
            value = means[label][d]
            cells += [" / ".join(got), f"{value:.4f}" if value is not None else "-", _ratio(value, peer.get(d)),
                      _ratio(value, peer.get(None))]  # fmt: skip
        table.append("| " + " | ".join(cells) + " |")
    print("\n".join(table))
    if best:
        print(f"(ratios to the peer row '{best}')")
    write_json(out, {"benchmark": "caption_quality --merge", "runs": runs, "results": rows, "means": means,
                     "peer_row": best, "table": "\n".join(table)})  # fmt: skip
    say(f"wrote {out}")


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}" if value is not None and base else "-"


def _collect(paths: list[str]) -> tuple[dict[str, dict[int, dict[str, Any]]], list[dict[str, Any]]]:
    """Results by row label (method and its flags) and seed, and each run's file, machine and settings."""
    rows: dict[str, dict[int, dict[str, Any]]] = {}
    runs = []
    payloads = [(path, json.loads(Path(path).read_text())) for path in paths]
    budgets = len({p["settings"].get("epochs") for _, p in payloads}) > 1  # runs of several lengths: say which
    for path, payload in payloads:
        settings = payload["settings"]
        flags = " ".join(
            f"--{k} {settings[k]}" for k in RUN_FLAGS if settings.get(k) not in (None, 0, 0.0, "", "random")
        )
        if budgets and payload["results"].keys() - set(COPYING):
            flags = f"--epochs {settings.get('epochs')} {flags}".strip()
        seeds = settings["seed"] if isinstance(settings["seed"], list) else [settings["seed"]]
        for method, result in payload["results"].items():
            label = f"{method} {flags}".strip()
            per_seed = result.get("per_seed") or {str(seeds[0]): result}
            for seed, r in per_seed.items():
                if int(seed) in rows.get(label, {}):
                    raise SystemExit(f"--merge: {path} holds '{label}' seed {seed} again (a run given twice?)")
                rows.setdefault(label, {})[int(seed)] = {**r, **{k: result[k] for k in result if k not in r}}
        kept = {k: v for k, v in settings.items() if k not in ("out", "features_cache", "merge", "data")}
        about = {k: v for k, v in payload["machine"].items() if k != "command"}
        if "command" in payload["machine"]:  # without the local paths of the data, the cache and the output
            about["command"] = public_command(payload["machine"]["command"])
        runs.append({"file": Path(path).name, "machine": about, "settings": kept})
    return rows, runs
