"""Tagging quality's report: every variant scored on the test ids all of them predicted, against each peer with a
paired bootstrap, seed means over ``--seed-runs``, and the lines printed at the end."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.common import ratio, say
from benchmarks.quality.scores import format_table, paired_bootstrap, rare_class_f1, score_table

PEERS = ["peer", "peer_image"]


def previous_results(args: argparse.Namespace, sources: list[str], settings: Any) -> dict[str, Any]:
    """Per variant of this command, the first result in ``sources`` (``--resume-from``, ``--out`` with
    ``--resume``) recorded with the same ``settings(args, variant)``; runtime rows ``<variant> [<runtime>]`` too."""
    previous: dict[str, Any] = {}
    for source in sources:
        if Path(source).is_file():
            for variant, record in json.loads(Path(source).read_text()).get("variants", {}).items():
                base = variant.split(" [")[0]  # "<variant> [<runtime>]": a runtime row of that variant
                stored = {k: v for k, v in record.get("settings", {}).items() if k != "runtime"}
                if base in args.variants and stored == settings(args, base):
                    previous.setdefault(variant, record)
    return previous


def add_variant(
    args: argparse.Namespace, variants: dict[str, Any], variant: str, settings: dict[str, Any],
    preds: dict[str, dict[str, str]], info: dict[str, Any], base: Any,
) -> None:  # fmt: skip
    """Record a variant's predictions (and those of its ``--runtimes`` rows) and say its test scores."""
    variants[variant] = {"settings": settings, "info": info, "predictions": preds}
    for label, (runtime_preds, runtime_info) in info.pop("runtimes", {}).items():
        variants[f"{variant} [{label}]"] = {"settings": {**settings, "runtime": label}, "info": runtime_info,
                                            "predictions": runtime_preds}  # fmt: skip
    truth_by_id = {r.id: r.labels for r in base.splits["test"]}
    for name in [v for v in variants if v == variant or v.startswith(f"{variant} [")]:
        single = score_table(*_truth_and_preds(truth_by_id, variants[name]["predictions"], args.attributes),
                             args.attributes)  # fmt: skip
        say(f"{name}: test mean acc {single['mean_acc']:.3f}, mean macro-F1 {single['mean_macro_f1']:.3f}")


def score(
    args: argparse.Namespace, report: Any, truth_by_id: dict[str, dict[str, str | None]],
    train_counts: dict[str, dict[str, int]],
) -> None:  # fmt: skip
    """Score every variant on the test ids that all of them predicted (a product skipped for a bad image is out),
    each tagger against each peer, the rare classes' F1 (``train_counts``: per attribute, training products per
    class), the ratios and the seed means; added to ``report``."""
    variants = report["variants"]
    common = set(truth_by_id)
    for v in variants.values():
        common &= set(v["predictions"])
    ids = [i for i in truth_by_id if i in common]
    truth = {a: [truth_by_id[i][a] for i in ids] for a in args.attributes}

    def preds(name: str) -> dict[str, list[str]]:
        return {a: [variants[name]["predictions"][i][a] for i in ids] for a in args.attributes}

    results = {name: score_table(truth, preds(name), args.attributes) for name in variants}
    for name, result in results.items():
        result["rare_classes"] = rare_class_f1(truth, preds(name), args.attributes, train_counts)
    table = format_table(results, args.attributes)
    report.update(test_products_scored=len(ids), results=results, table_markdown=table)
    for peer_name in [p for p in PEERS if p in results]:
        peer = results[peer_name]["mean_macro_f1"]
        versus: dict[str, Any] = report.setdefault(f"vs_{peer_name}", {})
        for n, r in results.items():
            if n in PEERS:
                continue
            d: dict[str, Any] = {
                "mean_macro_f1_diff": r["mean_macro_f1"] - peer,
                "beats_peer": r["mean_macro_f1"] > peer,
            }
            if args.bootstrap > 0:
                d["bootstrap"] = paired_bootstrap(truth, preds(n), preds(peer_name), args.attributes, args.bootstrap,
                                                  args.seed)  # fmt: skip
            versus[n] = d
    report["ratios"] = {f"{n} / {p}, mean macro-F1": ratio(r["mean_macro_f1"], results[p]["mean_macro_f1"])
                        for p in PEERS if p in results for n, r in results.items() if n not in PEERS}  # fmt: skip
    if args.seed_runs:
        report["seeds"] = seed_means(args, variants, truth, ids, train_counts)


def print_summary(payload: dict[str, Any]) -> None:
    """The table, each tagger against each peer, the seed means and the runtimes' agreement with torch eager."""
    print()
    print(f"Test split: {payload['test_products_scored']} products; acc / macro-F1 per attribute (macro-F1: sklearn, "
          "labels in y_true or y_pred, unknown true labels left out)")  # fmt: skip
    print(payload["table_markdown"])
    rare = {n: r["rare_classes"] for n, r in payload["results"].items() if "rare_classes" in r}
    if rare:
        first = next(iter(rare.values()))
        print(f"F1 of the {first['classes']} rare classes (test classes with < {first['below']} training products): "
              + ", ".join(f"{n} {r['mean_f1']:.3f}" for n, r in rare.items()))  # fmt: skip
    for peer_name in PEERS:
        for name, d in payload.get(f"vs_{peer_name}", {}).items():
            verdict = "beats" if d["beats_peer"] else "does not beat"
            line = f"{name:16s} mean macro-F1 vs {peer_name}: {d['mean_macro_f1_diff']:+.3f} ({verdict} it)"
            if "bootstrap" in d:
                b = d["bootstrap"]
                line += (f"; paired bootstrap 95% interval [{b['ci95_low']:+.3f}, {b['ci95_high']:+.3f}], "
                         f"ahead in {100 * b['share_ahead']:.0f}% of {b['samples']} resamples")  # fmt: skip
            print(line)
    for name, d in payload.get("seeds", {}).items():
        print(f"{name:16s} mean macro-F1 over seeds {d['seeds']}: {d['mean_macro_f1']:.3f} "
              f"(per seed {', '.join(f'{x:.3f}' for x in d['per_seed'])}); rare-class F1 {d['rare_class_f1']:.3f} "
              f"against {', '.join(f'{p} {v:.3f}' for p, v in d['peers_rare_class_f1'].items())}")  # fmt: skip
        for peer_name, b in d["vs"].items():
            interval = f"[{b['ci95_low']:+.3f}, {b['ci95_high']:+.3f}]"
            print(f"{'':16s} vs {peer_name} {d['peers'][peer_name]:.3f}: {b['diff']:+.3f}; paired bootstrap 95% "
                  f"interval {interval}, ahead in {100 * b['share_ahead']:.0f}%")  # fmt: skip
    for name, v in payload["variants"].items():
        if "top1_same_as_torch" in v["info"]:
            i = v["info"]
            same, diff = 100 * i["top1_same_as_torch"], i["max_abs_prob_diff_vs_torch"]
            print(f"{name}: top-1 the same as torch eager for {same:.1f}% of (product, attribute) pairs; "
                  f"max |probability - torch| {diff:.1e}")  # fmt: skip


def seed_runs(paths: list[str]) -> list[dict[str, Any]]:
    """Result payloads in ``paths``: a tagging_quality output, or a file holding several under ``runs``."""
    out = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"--seed-runs: cannot read {path}: {e}") from None
        out += list(data["runs"].values()) if "runs" in data else [data]
    return out


def seed_means(
    args: argparse.Namespace, variants: dict[str, Any], truth: dict[str, list[str | None]], ids: list[str],
    train_counts: dict[str, dict[str, int]],
) -> dict[str, Any]:  # fmt: skip
    """Per tagger of this run: its predictions and those of ``--seed-runs`` runs with the same settings but another
    seed, their mean macro-F1 each and on average, and the paired bootstrap of that average against each peer (the
    peers do not depend on the seed: scikit-learn's lbfgs is deterministic)."""

    def unseeded(s: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in s.items() if k != "seed"}

    runs = seed_runs(args.seed_runs)
    out: dict[str, Any] = {}
    for name, record in variants.items():
        if name in PEERS:
            continue
        found = {args.seed: record["predictions"]}
        for run in runs:
            other = run.get("variants", {}).get(name)
            if other and unseeded(other["settings"]) == unseeded(record["settings"]):
                found.setdefault(other["settings"]["seed"], other["predictions"])
        if len(found) < 2:
            continue
        short = {seed: len(set(ids) - set(p)) for seed, p in found.items() if set(ids) - set(p)}
        if short:  # a seed that did not predict every scored test product cannot be paired on the same draws
            say(f"--seed-runs: {name} left out: seed(s) {short} lack that many of the {len(ids)} scored test products")
            continue
        per_seed = {seed: {a: [p[i][a] for i in ids] for a in args.attributes} for seed, p in sorted(found.items())}
        scores = [score_table(truth, p, args.attributes)["mean_macro_f1"] for p in per_seed.values()]
        mean = sum(scores) / len(scores)
        rare = [rare_class_f1(truth, p, args.attributes, train_counts)["mean_f1"] for p in per_seed.values()]
        entry: dict[str, Any] = {"seeds": list(per_seed), "per_seed": scores, "mean_macro_f1": mean, "peers": {},
                                 "vs": {}, "rare_class_f1": sum(rare) / len(rare),
                                 "peers_rare_class_f1": {}}  # fmt: skip
        for peer_name in [p for p in PEERS if p in variants]:
            peer = {a: [variants[peer_name]["predictions"][i][a] for i in ids] for a in args.attributes}
            entry["peers"][peer_name] = score_table(truth, peer, args.attributes)["mean_macro_f1"]
            entry["peers_rare_class_f1"][peer_name] = rare_class_f1(truth, peer, args.attributes,
                                                                    train_counts)["mean_f1"]  # fmt: skip
            entry["vs"][peer_name] = paired_bootstrap(
                truth, list(per_seed.values()), peer, args.attributes, max(args.bootstrap, 1), args.seed
            )
        out[name] = entry
    return out


def _truth_and_preds(
    truth_by_id: dict[str, dict[str, str | None]], preds: dict[str, dict[str, str]], attributes: list[str]
) -> tuple[dict[str, list[str | None]], dict[str, list[str]]]:
    ids = [i for i in truth_by_id if i in preds]
    return (
        {a: [truth_by_id[i][a] for i in ids] for a in attributes},
        {a: [preds[i][a] for i in ids] for a in attributes},
    )
