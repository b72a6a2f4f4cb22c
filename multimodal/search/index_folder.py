"""A search index folder on disk: writing a build so readers never see a mix, and reading one back.

Folder layout: ``index.faiss`` (or ``index-NNN.faiss`` per shard), ``products.parquet``, ``index.json`` (kind,
options, dim, count, shards, recall check, export), ``lexical/`` (BM25, when built) and ``model.ckpt`` (the
export's checkpoint, a hard link or a copy: the folder answers queries wherever it is moved), plus an empty
``.lock``. Each build or update is a new folder under ``.<name>.builds/`` and ``<name>`` a link swapped to it with
one rename, so a reader never sees half of a rebuild or an update; a reader holds a shared lock on its build while
it uses it and a writer deletes only builds nobody holds (:mod:`multimodal.search.builds`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pandas as pd

from multimodal.errors import UserError

if TYPE_CHECKING:
    from multimodal.search.index import SearchIndex

INDEX_FILE, PRODUCTS_FILE, INFO_FILE, CHECKPOINT_FILE = "index.faiss", "products.parquet", "index.json", "model.ckpt"
LEXICAL_DIR = "lexical"


def _faiss() -> Any:
    """FAISS, imported when first used (a command that never touches an index does not pay for it)."""
    import faiss

    return faiss


def shard_file(shard: int, shards: int) -> str:
    """The FAISS file name of one shard."""
    return INDEX_FILE if shards == 1 else f"index-{shard:03d}.faiss"


def save_index(
    folder: str | Path,
    index: Any,
    products: pd.DataFrame,
    info: dict[str, Any],
    checkpoint: Path | None = None,
    lexical: Any = None,
) -> Path:
    """Write an index folder so that a reader sees the old index or the new one, never a mix.

    ``index`` is one FAISS index or a list of shards. Each build is a complete folder under the hidden sibling
    ``.<name>.builds/``; ``<name>`` is a symbolic link to the newest build, swapped in with one atomic rename, and
    older builds are deleted unless a reader holds them (:mod:`multimodal.search.builds`).
    """
    from multimodal.search.builds import new_build, publish

    folder = Path(folder)
    if folder.exists() and not (folder / INFO_FILE).is_file():
        raise UserError(f"--out {folder} exists and is not a search index: it is left untouched; use another --out")
    repeated = products["id"].astype(str).duplicated()
    if repeated.any():  # the callers refuse repeated ids with their rows first: this guards the invariant
        raise UserError(f"index {folder}: id '{products['id'].astype(str)[repeated].iat[0]}' on two rows, not written")
    shards = index if isinstance(index, list) else [index]
    build = new_build(folder)
    for s, shard in enumerate(shards):
        _faiss().write_index(shard, str(build / shard_file(s, len(shards))))
    products.to_parquet(build / PRODUCTS_FILE, index=False)
    if lexical is not None:
        lexical.save(build / LEXICAL_DIR)
    if checkpoint is not None:
        from multimodal.search.export import link_or_copy  # (imports torch: only when there is a checkpoint)

        link_or_copy(checkpoint, build / CHECKPOINT_FILE)
    (build / INFO_FILE).write_text(json.dumps({**info, "shards": len(shards)}, indent=2) + "\n")
    publish(folder, build)
    return folder


def index_checkpoint(index: SearchIndex) -> Path:
    """The checkpoint that answers queries: the one kept in the index folder, else (older indexes) the one the
    export names, relative to the export folder or absolute."""
    own = index.folder / CHECKPOINT_FILE
    if own.is_file():
        return own
    named = Path(index.info["export"].get("checkpoint", CHECKPOINT_FILE))
    return named if named.is_absolute() else Path(index.info.get("export_folder", ".")) / named


def load_index(folder: str | Path) -> SearchIndex:
    """Read one build of an index folder written by ``multimodal index`` (one-line errors for missing or corrupt
    files). The link is resolved once and the build is held (:func:`multimodal.search.builds.hold`) until the
    returned index is closed or dropped, so a rebuild meanwhile never deletes the files it reads."""
    from multimodal.search.builds import hold

    build, lock = hold(Path(folder), INFO_FILE)
    try:
        return _read_build(build, lock)
    except BaseException:
        if lock is not None:
            lock.close()
        raise


def _read_build(folder: Path, lock: IO[bytes] | None) -> SearchIndex:
    """The index in one build folder, checked: every file read, vector and product counts agreeing."""
    from multimodal.search.index import SearchIndex  # (the folder is below the structure it holds)
    from multimodal.search.lexical import LexicalIndex

    if not (folder / INFO_FILE).is_file():
        raise UserError(f"{folder} is not a search index (no {INFO_FILE}); build one with `multimodal index`")
    try:
        info = json.loads((folder / INFO_FILE).read_text())
        count = int(info.get("shards", 1))
        shards = [_faiss().read_index(str(folder / shard_file(s, count))) for s in range(count)]
        products = pd.read_parquet(folder / PRODUCTS_FILE)
        lexical = LexicalIndex.load(folder / LEXICAL_DIR) if (folder / LEXICAL_DIR).is_dir() else None
    except Exception as err:  # noqa: BLE001 - any read failure means a damaged index folder
        raise UserError(
            f"index {folder} could not be read ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    stored = sum(s.ntotal for s in shards)
    if stored != len(products) + int(info.get("dead", 0)):
        raise UserError(f"index {folder}: {stored} vectors but {len(products)} products")
    if lexical is not None and lexical.count != len(products):
        raise UserError(f"index {folder}: the BM25 index holds {lexical.count} products, the table {len(products)}")
    return SearchIndex(shards=shards, products=products, info=info, folder=folder, lexical=lexical, hold=lock)
