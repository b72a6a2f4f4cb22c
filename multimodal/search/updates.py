"""Live catalogue updates: add, replace and remove products of an index without rebuilding it.

``multimodal index index/ --add emb_new/ --remove ids_gone.txt``: the vectors of an export of new products (made
with the index's own checkpoint) are added with fresh labels (``add_with_ids``); an id already in the index is
*replaced* (its old vector removed, the new one added); removed ids leave FAISS (``remove_ids``; an HNSW graph
cannot drop nodes, so their vectors stay as dead entries that are never returned, excluded by the search's
selector, until the next full build). The products table and the BM25 index follow in the same new build, and the
folder is swapped in with the one atomic rename of :func:`multimodal.search.index.save_index`: a search right after
the update sees all of it, a search during it sees none of it.

Refused, each in one line and with the index left as it was:

- an ``--add`` export that holds an id on two rows (the id and both rows are named): an id names one product, so
  after any update the count equals the number of distinct ids and each id's vector and metadata come from one row;
- an ``--add`` export of another model (checkpoint hash, model, product vector kind, dimension or normalisation
  differ; an export wider than an index cut with ``--dim`` is cut alike, a narrower one refused) or with other
  metadata columns than the index (a filter on a column some products lack would silently leave them out): the
  message names the differences and the ``--columns`` to export with;
- an id both in ``--add`` and ``--remove`` (replace it, or remove it, not both). An id listed twice in ``--remove``
  is removed once; an id not in the index is counted (``not_found``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multimodal.errors import UserError
from multimodal.search.build import refuse_repeated_ids
from multimodal.search.filters import EXPORT_STORES
from multimodal.search.index import CHECKPOINT_FILE, LABEL, SearchIndex, load_index, save_index, shard_of

REBUILD_HINT = 0.2  # after changes to this share of the products, a rebuild re-trains IVF cells / the HNSW graph
SAME_MODEL = ("checkpoint_sha256", "model", "product", "dim", "normalisation")  # export keys an addition must share


def read_ids(path: str | Path) -> list[str]:
    """One product id per line (blank lines and lines starting with ``#`` ignored)."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--remove {path}: no such file")
    return [line.strip() for line in file.read_text().splitlines() if line.strip() and not line.startswith("#")]


def read_addition(index: SearchIndex, folder: str | Path, add: str | Path) -> tuple[np.ndarray, pd.DataFrame]:
    """The vectors ``(M, E)`` and products of the export ``add``, checked to fit the index: same model, same
    metadata columns, every id once."""
    from multimodal.search.export import load_export
    from multimodal.search.matryoshka import full_width, narrowed

    manifest, vectors, products = load_export(add)
    # the model's widths compared; an export wider than an index cut with --dim is cut alike
    ours = {**index.info["export"], "dim": full_width(index.info, index.dim)}
    theirs = {**manifest, "dim": full_width(manifest, int(manifest["dim"]))}
    differ = [k for k in SAME_MODEL if ours.get(k) is not None and theirs.get(k) is not None and ours[k] != theirs[k]]
    if differ:
        raise UserError(
            f"--add {add} was exported with another model than index {folder} ({', '.join(differ)} differ): "
            "export the new products with the index's checkpoint"
        )
    if int(manifest["dim"]) < index.dim:
        raise UserError(
            f"--add {add} holds vectors of {manifest['dim']} dimensions (export --dim), index {folder} "
            f"{index.dim}: export the new products with --dim {index.dim} or wider"
        )
    vectors = narrowed(vectors, index.dim)
    stored = [c for c in index.products.columns if c != LABEL]
    if set(products.columns) != set(stored):
        extra = [c for c in products.columns if c not in stored]
        missing = [c for c in stored if c not in products.columns]
        what = "; ".join(
            ([f"only the export has {', '.join(extra)}"] if extra else [])
            + ([f"only the index has {', '.join(missing)}"] if missing else [])
        )
        wanted = " ".join(c for c in stored if c not in EXPORT_STORES)
        raise UserError(
            f"--add {add} stores other columns than index {folder} ({what}): export the new products again with "
            f"--columns {wanted or '(none)'}, or rebuild the index from one export of every product"
        )
    refuse_repeated_ids(products, add)
    return vectors, products


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
    from multimodal.search.lexical import LexicalIndex
    from multimodal.writers import output_lock

    if add is None and not remove:
        raise UserError("nothing to update: give --add EXPORT and/or --remove IDS_FILE")
    with output_lock(Path(folder)):
        index = load_index(folder)
        new_vectors, new_products = read_addition(index, folder, add) if add is not None else (None, None)
        ids = index.products["id"].astype(str)
        removing = list(dict.fromkeys(remove or []))
        adding = [] if new_products is None else new_products["id"].astype(str).tolist()
        both = set(removing) & set(adding)
        if both:
            raise UserError(
                f"id '{sorted(both)[0]}' is both in --remove and in --add {add}: an update replaces a product "
                "(--add) or removes it (--remove), not both"
            )
        known = set(ids)
        replaced = [i for i in adding if i in known]
        gone = ids.isin(set(removing) | set(replaced)).to_numpy()
        info, products, kind = _apply(index, folder, gone, new_vectors, new_products)
        if products["id"].astype(str).duplicated().any():
            twice = products["id"].astype(str)[products["id"].astype(str).duplicated()].iat[0]
            raise UserError(
                f"index {folder} holds id '{twice}' on two rows (an index updated before repeated ids were refused): "
                "replace or remove that id in this update, or rebuild the index from its export"
            )
        summary = {
            "added": len(adding) - len(replaced),
            "replaced": len(replaced),
            "removed": int(ids.isin(set(removing)).sum()),
            "not_found": sum(i not in known for i in removing),
            "count": len(products),
        }
        _record(info, summary, len(adding), len(products))
        lexical = LexicalIndex.build(products, index.lexical.columns) if index.lexical is not None else None
        checkpoint = index.folder / CHECKPOINT_FILE
        save_index(folder, index.shards, products, info, checkpoint if checkpoint.is_file() else None, lexical)
    if summary["not_found"]:
        summary["not_found_ids"] = [i for i in removing if i not in known][:10]
    if info["changed_since_build"] > REBUILD_HINT and kind != "flat":
        summary["hint"] = (
            f"{info['changed_since_build']:.0%} of the products changed since the build: "
            f"rebuild the {kind} index for its full recall"
        )
    return summary


def _apply(
    index: SearchIndex,
    folder: str | Path,
    gone: np.ndarray,
    new_vectors: np.ndarray | None,
    new_products: pd.DataFrame | None,
) -> tuple[dict[str, Any], pd.DataFrame, str]:
    """Remove the products-table rows ``gone`` (bool) from the shards, add the new products under fresh labels
    (each vector with its own row's label); returns the new info, products table and index kind."""
    info, kind, owner = dict(index.info), index.kind, index.shard_rows
    removed = sum(_remove(shard, kind, index.labels[gone & (owner == s)]) for s, shard in enumerate(index.shards))
    if kind != "hnsw" and removed != int(gone.sum()):
        raise UserError(f"index {folder}: {removed} of {int(gone.sum())} vectors removed; rebuild the index")
    info["dead"] = int(info.get("dead", 0)) + (int(gone.sum()) if kind == "hnsw" else 0)
    products = index.products[~gone]
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
        info["next_label"] = start + len(new_products)
    return info, products.reset_index(drop=True), kind


def _record(info: dict[str, Any], summary: dict[str, Any], added: int, count: int) -> None:
    """The update in the index info: count, share changed since the build, the last 100 updates."""
    changed = float(info.get("changed_since_build", 0)) * int(info.get("count", count))
    info.update(count=count, changed_since_build=round((changed + added + summary["removed"]) / max(count, 1), 4))
    info["updates"] = [*info.get("updates", []), {"time": time.strftime("%Y-%m-%d %H:%M:%S"), **summary}][-100:]
