"""The query side of ``multimodal search`` without torch: text and photo queries encoded by the ONNX export that
computed the index's vectors (``onnx_export`` in an export made by :mod:`multimodal.lite.retrieval`). FAISS, BM25
and the filters are the full install's (:mod:`multimodal.search.query`): they need no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from multimodal.errors import UserError


def encoder_for(index: Any, runtime: str = "torch") -> LiteQueryEncoder | None:
    """The torch-free query encoder of ``index`` when it is the one to use: torch cannot be imported, or the index
    keeps no checkpoint but names an ONNX export; None: the full install's encoder.

    Raises:
        UserError: torch cannot be imported and the index was built from a checkpoint's vectors.
    """
    from multimodal.lite import torch_importable, wanted
    from multimodal.search.index_folder import index_checkpoint

    folder = index.info["export"].get("onnx_export")
    checkpoint = index_checkpoint(index)
    if folder is None:
        if torch_importable():
            return None
        wanted(checkpoint)  # raises: a checkpoint needs the full install
    if torch_importable() and checkpoint.is_file():
        return None
    if not Path(folder).is_dir():
        raise UserError(f"the ONNX export of index {index.folder}, {folder}, is missing: rebuild the index")
    return LiteQueryEncoder(index, folder, runtime)


class LiteQueryEncoder:
    """Query vectors from an export folder's ``embed_text`` / ``embed_image`` graphs (what
    :func:`multimodal.search.query.search_many` asks of an encoder); re-ranking needs the full install.

    Args:
        index: the index queried.
        folder: the retriever's ONNX export that computed the index's vectors.
        runtime: ``onnx-int8`` runs its int8 graphs; anything else the fp32 ones.
    """

    can_rerank = True  # asked for, re-ranking is refused by :meth:`rerank` in one line that says why

    def __init__(self, index: Any, folder: str | Path, runtime: str = "onnx") -> None:
        from multimodal.lite.loading import load
        from multimodal.lite.retrieval import Retriever

        loaded = load(folder, Retriever.task_name, "onnx-int8" if runtime == "onnx-int8" else "onnx")
        expected = index.info["export"].get("checkpoint_sha256")
        if expected and loaded.checkpoint_sha256 != expected:
            raise UserError(f"{folder} is not the export that computed index {index.folder}'s vectors: rebuild it")
        self.api = Retriever(loaded)
        self.model = loaded.model

    def for_index(self, index: Any) -> LiteQueryEncoder:
        """This encoder for another build of the same export (``multimodal serve`` following a live index): it keeps
        nothing of a build, so it is shared as it is."""
        return self

    def texts(self, queries: list[str]) -> np.ndarray:
        """Query vectors ``(Q, E)`` of text queries."""
        if any(not q or not q.strip() for q in queries):
            raise UserError("empty query text")
        return self.api.embed_text(queries)

    def images(self, images: list[Any]) -> np.ndarray:
        """Query vectors ``(Q, E)`` of photo queries (paths or PIL images)."""
        return self.api.embed_images([str(im) if isinstance(im, Path) else im for im in images])

    def rerank(self, products: list[dict[str, Any]], text: str | None, image: Any) -> list[float]:
        """Re-ranking runs the checkpoint's re-ranker, which the export does not hold."""
        from multimodal.lite import FULL_INSTALL, torch_importable

        if torch_importable():  # the full install, but the index was built from an export whose checkpoint is gone
            raise UserError("--rerank runs the checkpoint's re-ranker: this index was exported from an ONNX export "
                            "whose checkpoint was not there; export it again from the checkpoint")  # fmt: skip
        raise UserError(f"--rerank runs the checkpoint's re-ranker: it needs the full install ({FULL_INSTALL})")
