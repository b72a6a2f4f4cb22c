"""Retrieval-augmented captioning: the titles of the catalogue products whose photos look most like this one are
given to the captioner as a prompt (as SmallCap does), so it can copy a brand or a product name it could not read
from the photo and correct the rest from the image.

A :class:`CaptionMemory` holds one photo key per catalogue product and the product's title, in an exact
inner-product FAISS index. A key is the frozen vision tower's grid tokens average-pooled to 2 x 2 and flattened
(``4 * D`` values: the layout of a product photo carries its shape; towers whose tokens are not a square grid use
their pooled vector), centred on the memory's mean and L2-normalised. Queries leave out the products whose id they
carry, so training items see neighbours as a new photo will.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.nn import functional as F

from encoders.types import Features
from multimodal.errors import UserError

KEY_GRID = 2  # keys pool square token grids to KEY_GRID x KEY_GRID


def raw_keys(features: Features) -> Tensor:
    """``(N, K)`` float32: grid tokens pooled to 2 x 2 and flattened, or the pooled vector (no square grid)."""
    tokens = features.tokens.float()
    n, t, d = tokens.shape
    side = math.isqrt(t)
    if side * side != t or side < KEY_GRID:
        return features.pooled.float()
    grid = tokens.transpose(1, 2).reshape(n, d, side, side)  # row-major grid, as the towers emit it
    return F.adaptive_avg_pool2d(grid, KEY_GRID).flatten(1)


class CaptionMemory:
    """Catalogue photos' keys and their titles, searched by photo.

    Args:
        keys: ``(N, K)`` raw keys of the catalogue's photos (:func:`raw_keys`).
        titles: the ``N`` products' titles (the text given to the captioner).
        ids: the ``N`` products' ids (queries leave out their own).
        separator: joins neighbour titles in a prompt.
        mean: centre of the keys (default: their mean).
    """

    def __init__(
        self,
        keys: Tensor,
        titles: Sequence[str],
        ids: Sequence[str] | None = None,
        separator: str = "; ",
        mean: Tensor | None = None,
    ) -> None:
        if keys.ndim != 2 or keys.shape[0] != len(titles):
            raise UserError(f"caption memory: {keys.shape[0]} photos but {len(titles)} titles")
        if not titles:
            raise UserError("caption memory: no products to remember (no training product has a photo and a title)")
        self.titles = [str(t) for t in titles]
        self.ids = [str(i) for i in ids] if ids is not None else [str(i) for i in range(len(self.titles))]
        if len(self.ids) != len(self.titles):
            raise UserError(f"caption memory: {len(self.ids)} ids but {len(self.titles)} titles")
        self.separator = separator
        keys = keys.float()
        self.mean = keys.mean(0) if mean is None else mean.float()
        self.index = faiss.IndexFlatIP(keys.shape[1])
        self.index.add(self._normalise(keys))
        self._row = {i: r for r, i in enumerate(self.ids)}

    @classmethod
    def from_features(
        cls, features: Features, titles: Sequence[str], ids: Sequence[str] | None = None, **options: Any
    ) -> CaptionMemory:
        """A memory of photos given as vision features."""
        return cls(raw_keys(features), titles, ids, **options)

    def _normalise(self, keys: Tensor) -> np.ndarray:
        if keys.shape[1] != self.mean.numel():
            raise UserError(
                f"caption memory: photo keys of width {keys.shape[1]} do not match the memory's {self.mean.numel()}; "
                "use the vision tower and image size the memory was built with"
            )
        return F.normalize(keys.detach().float().cpu() - self.mean, dim=-1).contiguous().numpy()

    def __len__(self) -> int:
        return len(self.titles)

    @property
    def width(self) -> int:
        return self.mean.numel()

    def neighbours(self, features: Features, k: int, exclude: Sequence[str] | None = None) -> list[list[int]]:
        """Row ids of the ``k`` most similar catalogue photos of each query, best first.

        ``exclude``: per query, a product id whose row is left out (the query's own, when it is in the catalogue).
        """
        if k < 1:
            raise UserError(f"caption memory: k must be at least 1, not {k}")
        extra = 1 if exclude is not None else 0
        _, found = self.index.search(self._normalise(raw_keys(features)), min(k + extra, len(self)))
        out = []
        for q, row in enumerate(found.tolist()):
            own = self._row.get(str(exclude[q]), -1) if exclude is not None else -1
            out.append([i for i in row if i >= 0 and i != own][:k])
        return out

    def prompts(self, features: Features, k: int, exclude: Sequence[str] | None = None) -> list[str]:
        """Per query, the ``k`` neighbour titles joined by the separator (best first)."""
        return [self.separator.join(self.titles[i] for i in row) for row in self.neighbours(features, k, exclude)]

    # ------------------------------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps (tensors, strings): normalised keys in float16, the mean, titles and ids."""
        keys = torch.from_numpy(self.index.reconstruct_n(0, len(self))).half()
        return {"keys": keys, "mean": self.mean.clone(), "titles": self.titles, "ids": self.ids,
                "separator": self.separator}  # fmt: skip

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> CaptionMemory:
        """The memory :meth:`state` saved (its keys are already centred and normalised)."""
        try:
            keys, mean = state["keys"].float(), state["mean"].float()
            memory = cls(keys + mean, state["titles"], state["ids"], state.get("separator", "; "), mean=mean)
        except (KeyError, AttributeError, TypeError) as err:
            raise UserError(f"the checkpoint's caption memory is not one this version wrote ({err})") from None
        return memory


@torch.no_grad()
def build_memory(vision: nn.Module, loader: Any, device: torch.device) -> CaptionMemory:
    """A caption memory of every product of ``loader`` (eval transforms) with a photo and a target text, keyed by
    the ``vision`` encoder in eval mode (its mode is restored after)."""
    keys, titles, ids = [], [], []
    training = vision.training
    vision.eval()
    try:
        for batch in loader:
            if not batch["ids"]:
                continue
            pairs = zip(batch["references"], batch["has_image"].tolist(), strict=True)
            keep = [i for i, (ref, has) in enumerate(pairs) if ref and has]
            if not keep:
                continue
            mask = batch["photo_mask"][keep].to(device) if "photo_mask" in batch else None
            keys.append(raw_keys(vision.encode_photos(batch["pixel_values"][keep].to(device), mask)).cpu())
            titles += [batch["references"][i] for i in keep]
            ids += [batch["ids"][i] for i in keep]
    finally:
        vision.train(training)
    if not keys:
        raise UserError(
            "model.retrieval / model.rerank: no training product has both a photo and a target text to remember"
        )
    memory = CaptionMemory(torch.cat(keys), titles, ids)
    rank_zero_info(f"captioning: caption memory of {len(memory)} training products ({memory.width}-value keys)")
    return memory


def neighbour_prompts(
    memory: CaptionMemory | None, features: Features, k: int, ids: Sequence[str], has_image: Tensor | None = None
) -> list[str]:
    """Per item, its ``k`` neighbour titles joined (:meth:`CaptionMemory.prompts`): items whose ``has_image`` is
    False get none, and an item never retrieves its own product id (``ids``)."""
    if memory is None:
        raise UserError(
            "this captioner retrieves neighbour titles (model.retrieval) but holds no caption memory: fit it "
            "(the memory is built from the training split) or load a checkpoint written by fit"
        )
    prompts = memory.prompts(features, k, exclude=ids)
    if has_image is not None:
        prompts = [p if bool(h) else "" for p, h in zip(prompts, has_image.tolist(), strict=True)]
    return prompts
