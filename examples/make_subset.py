"""Draw the committed product sample from a full fashion-products catalogue.

Usage:
    python examples/make_subset.py --source PATH/TO/fashion-products --out examples/fashion-products --n 800

Stratified by article type: every type keeps at least one item (two where it has two or more), the rest of
the budget is shared in proportion to type frequency. Seeded, so re-running gives the same subset.
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
from collections import defaultdict
from pathlib import Path


def stratified_ids(rows: list[dict[str, str]], key: str, n: int, seed: int) -> list[str]:
    """Pick about ``n`` row ids stratified by ``key``."""
    rng = random.Random(seed)
    groups: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        groups[row[key]].append(row["id"])
    chosen: list[str] = []
    for _, ids in sorted(groups.items()):
        rng.shuffle(ids)
        quota = max(min(2, len(ids)), round(n * len(ids) / len(rows)))
        chosen.extend(ids[:quota])
    return sorted(chosen, key=int)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="folder with metadata.csv and images/")
    parser.add_argument("--out", type=Path, default=Path("examples/fashion-products"))
    parser.add_argument("--n", type=int, default=800)
    parser.add_argument("--stratify", default="articleType")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with open(args.source / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keep = set(stratified_ids(rows, args.stratify, args.n, args.seed))
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    columns = [c for c in rows[0] if c not in {"width", "height", "image_format", "image_mode", "image_sha1"}]
    with open(args.out / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            if row["id"] in keep:
                writer.writerow(row)
                shutil.copy2(args.source / "images" / row["image"], args.out / "images" / row["image"])
    print(f"wrote {len(keep)} of {len(rows)} items to {args.out}")


if __name__ == "__main__":
    main()
