"""Query-like views of a product: what a shopper types instead of the full product title.

A view is a random subset of the query text's words (in order), or a phrase of the product's attribute values in
a configured column order (``[gender, colour, category]`` -> ``"women blue jeans"``). :func:`product_views`
enumerates a product's views and :func:`draw_view` samples one; both are pure, so a benchmark can precompute the
texts. :class:`ViewedQueryText` is the training text function that draws one view per item.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

import torch
from torch import Tensor

from multimodal.errors import UserError
from multimodal.search.query_text import QueryAndProductText

ViewKind = Literal["query", "title_words", "attributes"]
MISSING_CODE = -1  # attribute code of an unknown value: never equal to another product's


class QueryViewsConfig(TypedDict, total=False):
    """``model.init_args.query_views`` as written in YAML.

    Keys: ``title_words`` ``[min, max]`` words kept from the query text; ``attribute_columns`` text columns whose
    values form an attribute phrase, in that order; ``probability`` that a training item's query is a view.
    """

    title_words: list[int]
    attribute_columns: list[str]
    probability: float


@dataclass(frozen=True)
class QueryViews:
    """Checked view settings (see :class:`QueryViewsConfig`); ``title_words`` None: no word views."""

    title_words: tuple[int, int] | None = None
    attribute_columns: tuple[str, ...] = ()
    probability: float = 0.5

    @classmethod
    def parse(cls, config: Mapping[str, Any]) -> QueryViews:
        """Settings from a config mapping; a one-line :class:`UserError` for a bad key or value."""
        unknown = sorted(set(config) - set(QueryViewsConfig.__annotations__))
        if unknown:
            raise UserError(
                f"model.query_views: unknown key(s) {unknown}; known: title_words, attribute_columns, probability"
            )
        words = config.get("title_words")
        if words is not None and (len(words) != 2 or not 1 <= int(words[0]) <= int(words[1])):
            raise UserError(f"model.query_views.title_words must be [min, max] with 1 <= min <= max, not {words}")
        columns = tuple(str(c) for c in config.get("attribute_columns") or ())
        if len(set(columns)) != len(columns):
            raise UserError(f"model.query_views.attribute_columns names a column twice: {list(columns)}")
        probability = float(config.get("probability", 0.5))
        if not 0.0 <= probability <= 1.0:
            raise UserError(f"model.query_views.probability must be in [0, 1], not {probability}")
        if words is None and not columns:
            raise UserError("model.query_views needs title_words or attribute_columns")
        return cls((int(words[0]), int(words[1])) if words is not None else None, columns, probability)

    def check_columns(self, text_columns: list[str]) -> None:
        """Raise a one-line :class:`UserError` if an attribute column is not among the data's text columns."""
        unknown = [c for c in self.attribute_columns if c not in text_columns]
        if unknown:
            raise UserError(
                f"model.query_views.attribute_columns: {unknown} not among the data's text_columns {list(text_columns)}"
            )


@dataclass(frozen=True)
class QueryView:
    """One query of a product: its text, what kind of view it is and the attribute columns it states."""

    text: str
    kind: ViewKind
    columns: tuple[str, ...] = ()


def _attribute_values(attributes: Mapping[str, str | None], views: QueryViews) -> list[tuple[str, str]]:
    """``(column, lowercased value)`` of the known attribute values, in the configured order."""
    missing = [c for c in views.attribute_columns if c not in attributes]
    if missing:
        raise UserError(
            f"model.query_views.attribute_columns: {missing} not among the product's columns {list(attributes)}"
        )
    found = [(c, attributes[c]) for c in views.attribute_columns]
    return [(c, v.strip().lower()) for c, v in found if v is not None and v.strip()]


def _phrase(chosen: list[tuple[str, str]]) -> QueryView:
    return QueryView(" ".join(v for _, v in chosen), "attributes", tuple(c for c, _ in chosen))


def product_views(query: str, attributes: Mapping[str, str | None], views: QueryViews) -> list[QueryView]:
    """Every view of one product: its word subsets (sizes in ``title_words``, in order, lowercased), then its
    attribute phrases (every non-empty subset of its known attribute values, in the configured order).

    Args:
        query: the product's full query text (its query columns joined).
        attributes: the product's text cells by column (None: unknown); must hold every attribute column.
        views: the settings.
    """
    out: list[QueryView] = []
    if views.title_words is not None:
        words = query.lower().split()
        for k in range(views.title_words[0], min(views.title_words[1], len(words)) + 1):
            out += [QueryView(" ".join(c), "title_words") for c in itertools.combinations(words, k)]
    values = _attribute_values(attributes, views)
    for k in range(1, len(values) + 1):
        out += [_phrase(list(c)) for c in itertools.combinations(values, k)]
    return out


def draw_view(query: str, attributes: Mapping[str, str | None], views: QueryViews, rng: random.Random) -> QueryView:
    """One training query of a product: with chance ``probability`` a view (word subset or attribute phrase, each
    kind equally likely among those the product has), else the real ``query``. Same ``rng`` state, same view."""
    if rng.random() >= views.probability:
        return QueryView(query, "query")
    words, values = query.lower().split(), _attribute_values(attributes, views)
    kinds = [k for k, ok in (("title_words", views.title_words and len(words) >= views.title_words[0]),
                             ("attributes", bool(values))) if ok]  # fmt: skip
    if not kinds:
        return QueryView(query, "query")
    if rng.choice(kinds) == "attributes":
        mask = rng.randrange(1, 2 ** len(values))  # a uniform non-empty subset
        return _phrase([cv for i, cv in enumerate(values) if mask >> i & 1])
    assert views.title_words is not None
    k = rng.randint(views.title_words[0], min(views.title_words[1], len(words)))
    return QueryView(" ".join(words[i] for i in sorted(rng.sample(range(len(words)), k))), "title_words")


def attribute_code(value: str | None) -> int:
    """A stable 63-bit code of a lowercased attribute value (the same in every process); unknown: ``MISSING_CODE``."""
    if value is None or not value.strip():
        return MISSING_CODE
    return int.from_bytes(hashlib.blake2b(value.strip().lower().encode(), digest_size=8).digest(), "big") >> 1


class ViewedQueryText(QueryAndProductText):
    """The training text function: :class:`QueryAndProductText`'s keys, plus one drawn view per item.

    Extra keys: ``view_input_ids/view_attention_mask (B, T)`` of the drawn queries, ``view_columns (B, A)`` (True
    where item's view states attribute column ``a``) and ``attribute_codes (B, A)`` (:func:`attribute_code` of each
    item's values). Views come from Python's ``random``, which Lightning's seed and the loader's workers seed.
    """

    def __init__(self, *args: Any, views: QueryViews, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.views = views

    def __call__(self, texts: dict[str, list[str | None]]) -> dict[str, Tensor]:
        self.views.check_columns(list(texts))
        out = super().__call__(texts)
        queries, columns = self.join(texts, self.query_columns), self.views.attribute_columns
        rng = random.Random(random.getrandbits(64))
        drawn = [draw_view(q, {c: texts[c][i] for c in columns}, self.views, rng) for i, q in enumerate(queries)]
        view = self.tokenize([v.text for v in drawn])
        out.update({"view_input_ids": view["input_ids"], "view_attention_mask": view["attention_mask"]})
        out["view_columns"] = torch.tensor([[c in v.columns for c in columns] for v in drawn], dtype=torch.bool)
        codes = [[attribute_code(texts[c][i]) for c in columns] for i in range(len(queries))]
        out["attribute_codes"] = torch.tensor(codes, dtype=torch.long).reshape(len(queries), len(columns))
        return out
