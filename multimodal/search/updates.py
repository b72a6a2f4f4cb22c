"""Live catalogue updates: add, replace and remove products of an index without rebuilding it.

``multimodal index index/ --add emb_new/ --remove ids_gone.txt``: the vectors of an export of new products (made
with the index's own checkpoint) are added with fresh labels (``add_with_ids``); an id already in the index is
*replaced* (its old vector removed, the new one added); removed ids leave FAISS (``remove_ids``; an HNSW graph
cannot drop nodes, so their vectors stay as dead entries that are never returned, excluded by the search's
selector, until the next full build). The products table and the BM25 index follow in the same new build, and the
folder is swapped in with the one atomic rename of :func:`multimodal.search.index.save_index`: a search right after
the update sees all of it, a search during it sees none of it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multimodal.errors import UserError
from multimodal.search.index import CHECKPOINT_FILE, LABEL, load_index, save_index, shard_of

REBUILD_HINT = 0.2  # after changes to this share of the products, a rebuild re-trains IVF cells / the HNSW graph


def read_ids(path: str | Path) -> list[str]:
    """One product id per line (blank lines and lines starting with ``#`` ignored)."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--remove {path}: no such file")
    return [line.strip() for line in file.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _remove(shard: Any, kind: str, labels: np.ndarray) -> int:
    import faiss

    if not len(labels):
        return 0
    if kind == "hnsw":
        return 0  # dead entries: the graph keeps them, the search never returns them
    if kind in ("ivf", "ivfpq"):
        faiss.extract_index_ivf(shard).set_direct_map_type(faiss.DirectMap.NoMap)
    return int(shard.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(labels, dtype=np.int64))))


def update_index(folder: str | Path, add: str | Path | None = None, remove: list[str] | None = None) -> dict[str, Any]:
    """Apply one update to the index at ``folder``; returns its summary (added, replaced, removed, not found)."""
    from multimodal.search.export import load_export
    from multimodal.search.lexical import LexicalIndex
    from multimodal.writers import output_lock

    if add is None and not remove:
        raise UserError("nothing to update: give --add EXPORT and/or --remove IDS_FILE")
    with output_lock(Path(folder)):
        index = load_index(folder)
        info, products, kind = dict(index.info), index.products, index.kind
        new_vectors, new_products = None, None
        if add is not None:
            manifest, new_vectors, new_products = load_export(add)
            ours, theirs = info["export"].get("checkpoint_sha256"), manifest.get("checkpoint_sha256")
            if ours and theirs and ours != theirs or manifest["dim"] != index.dim:
                raise UserError(
                    f"--add {add} was exported with another model than index {folder} (checkpoint hash or dimension "
                    "differs): export the new products with the index's checkpoint"
                )
        known = set(products["id"].astype(str))
        removing = list(dict.fromkeys(remove or []))
        not_found = [i for i in removing if i not in known]
        replaced = [] if new_products is None else [i for i in new_products["id"].astype(str) if i in known]
        gone = products["id"].astype(str).isin(set(removing) | set(replaced)).to_numpy()
        owner = index.shard_rows
        removed = 0
        for s, shard in enumerate(index.shards):
            removed += _remove(shard, kind, index.labels[gone & (owner == s)])
        if kind != "hnsw" and removed != int(gone.sum()):
            raise UserError(f"index {folder}: {removed} of {int(gone.sum())} vectors removed; rebuild the index")
        dead = int(info.get("dead", 0)) + (int(gone.sum()) if kind == "hnsw" else 0)
        products = products[~gone]
        added = 0
        if new_products is not None and new_vectors is not None:
            start = int(info.get("next_label", int(index.labels.max(initial=-1)) + 1))
            labels = np.arange(start, start + len(new_products), dtype=np.int64)
            new_products = new_products.assign(**{LABEL: labels})
            new_owner = shard_of(new_products["id"], len(index.shards))
            for s, shard in enumerate(index.shards):
                take = new_owner == s
                if take.any():
                    shard.add_with_ids(np.ascontiguousarray(new_vectors[take], dtype=np.float32), labels[take])
            products = pd.concat([products, new_products], ignore_index=True)
            info["next_label"], added = start + len(new_products), len(new_products)
        products = products.reset_index(drop=True)
        lexical = LexicalIndex.build(products, index.lexical.columns) if index.lexical is not None else None
        changed = float(info.get("changed_since_build", 0)) * int(info.get("count", len(products)))
        summary = {
            "added": added - len(replaced),
            "replaced": len(replaced),
            "removed": int(gone.sum()) - len(replaced),
            "not_found": len(not_found),
            "count": len(products),
        }
        info.update(
            count=len(products),
            dead=dead,
            changed_since_build=round((changed + added + summary["removed"]) / max(len(products), 1), 4),
        )
        info["updates"] = [*info.get("updates", []), {"time": time.strftime("%Y-%m-%d %H:%M:%S"), **summary}][-100:]
        checkpoint = index.folder / CHECKPOINT_FILE
        save_index(folder, index.shards, products, info, checkpoint if checkpoint.is_file() else None, lexical)
    if not_found:
        summary["not_found_ids"] = not_found[:10]
    if info["changed_since_build"] > REBUILD_HINT and kind != "flat":
        summary["hint"] = (
            f"{info['changed_since_build']:.0%} of the products changed since the build: "
            f"rebuild the {kind} index for its full recall"
        )
    return summary
