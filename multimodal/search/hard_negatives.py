"""Hard negatives from the catalogue: a training order whose batches hold look-alike products.

With ``hard_negatives: {same: category, differ: colour}``, each product of the shuffled order is followed
(while it lasts) by products of the same ``same`` value with another ``differ`` value (jeans of other colours) and
by products of the same ``differ`` value with another ``same`` value (other blue things): in-batch negatives a
contrastive loss learns from. :func:`hard_negative_order` is the pure regrouping; :class:`HardNegativeShuffle` is
:class:`multimodal.resume.EpochShuffle` with its order regrouped, so exact resume and augmentation seeds hold.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from multimodal.data.records import ProductRecord
from multimodal.errors import UserError
from multimodal.resume import EpochShuffle

SCAN = 64  # candidates looked at per group and kind: bounds the work on large groups of near-duplicates


class HardNegativesConfig(TypedDict):
    """``model.init_args.hard_negatives`` as written in YAML: ``same`` and ``differ`` text columns."""

    same: str
    differ: str


@dataclass(frozen=True)
class HardNegatives:
    """Checked settings: the two text columns whose values decide which products meet in a batch."""

    same: str
    differ: str

    @classmethod
    def parse(cls, config: Mapping[str, Any]) -> HardNegatives:
        """Settings from a config mapping; a one-line :class:`UserError` for a bad key."""
        if set(config) != {"same", "differ"} or config["same"] == config["differ"]:
            raise UserError(f"model.hard_negatives must be {{same: <column>, differ: <another column>}}, not {config}")
        return cls(str(config["same"]), str(config["differ"]))

    def values(self, records: Sequence[ProductRecord]) -> tuple[list[str | None], list[str | None]]:
        """Each record's lowercased ``same`` and ``differ`` values (None: unknown)."""
        out: tuple[list[str | None], list[str | None]] = ([], [])
        for rec in records:
            for column, values in zip((self.same, self.differ), out, strict=True):
                if column not in rec.texts:
                    raise UserError(
                        f"model.hard_negatives: column '{column}' not among the data's text_columns {list(rec.texts)}"
                    )
                value = rec.texts[column]
                values.append(value.strip().lower() if value is not None and value.strip() else None)
        return out

    def order(self, records: Sequence[ProductRecord], seed: int, batch_size: int) -> HardNegativeShuffle:
        """The training order over ``records``."""
        same, differ = self.values(records)
        return HardNegativeShuffle(len(records), seed, same, differ, batch_size)


def hard_negative_order(same: list[str | None], differ: list[str | None], order: list[int], per: int) -> list[int]:
    """``order`` regrouped: each item not yet placed, then up to ``per`` later items of its ``same`` value with
    another ``differ`` value, then up to ``per`` of its ``differ`` value with another ``same`` value (unknown values
    group nothing). A permutation of ``order``; the same input, the same output."""
    by_same: dict[str, deque[int]] = defaultdict(deque)
    by_differ: dict[str, deque[int]] = defaultdict(deque)
    for i in order:
        if same[i] is not None:
            by_same[same[i]].append(i)  # type: ignore[index]
        if differ[i] is not None:
            by_differ[differ[i]].append(i)  # type: ignore[index]
    placed = [False] * len(same)
    out: list[int] = []
    for a in order:
        if placed[a]:
            continue
        group = [a]
        placed[a] = True
        if same[a] is not None:
            group += _take(by_same[same[a]], lambda j: differ[j] != differ[a], placed, per)  # noqa: B023
        if differ[a] is not None:
            group += _take(by_differ[differ[a]], lambda j: same[j] != same[a], placed, per)  # noqa: B023
        out += group
    return out


def _take(queue: deque[int], fits: Callable[[int], bool], placed: list[bool], per: int) -> list[int]:
    """Up to ``per`` unplaced items of ``queue`` that ``fits`` (looking at most at ``SCAN`` of them), now placed."""
    while queue and placed[queue[0]]:
        queue.popleft()
    taken: list[int] = []
    for j in list(queue)[:SCAN]:
        if len(taken) == per:
            break
        if not placed[j] and fits(j):
            placed[j] = True
            taken.append(j)
    return taken


class HardNegativeShuffle(EpochShuffle):
    """:class:`EpochShuffle` whose (seed, epoch) order is regrouped by :func:`hard_negative_order`; about a quarter
    of a batch comes from each kind of look-alike of an item."""

    def __init__(self, n: int, seed: int, same: list[str | None], differ: list[str | None], batch_size: int) -> None:
        super().__init__(n, seed)
        self.same, self.differ, self.per = same, differ, max(1, batch_size // 4)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        skip, self.skip = self.skip, 0
        pairs = list(super().__iter__())
        seeds = dict(pairs)
        order = hard_negative_order(self.same, self.differ, [i for i, _ in pairs], self.per)
        return iter([(i, seeds[i]) for i in order][skip:])
