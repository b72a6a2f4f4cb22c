"""Shopper-like queries made from the catalogue itself, each with the products it is about, to tune hybrid search
when an index is built (:mod:`multimodal.search.hybrid_tuning`).

Two kinds, drawn from a seeded sample of products (the same catalogue and seed give the same queries):

- **words**: two or more consecutive words of a product's BM25 text (its ``--lexical`` columns; stop words left
  out, as BM25 leaves them out), up to the whole text. Relevant: every product whose text holds all of them, and
  the product they were copied from (with any of the very same text) counts twice as much (``known``): a shopper
  who types a product's own words is most likely after that product, and else after products like it;
- **attributes**: the values of one or two attribute columns of a product, as a phrase ("Women Black"); relevant:
  every product with all those values. Attribute columns are given, or found: stored text columns, other than the
  BM25 ones, with a few distinct short values (never all numbers) that repeat across products.

A query about more than a tenth of the catalogue (and more than 10 products) tells the methods apart too little
and is left out.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from multimodal.errors import UserError
from multimodal.search.facets import SKIPPED, repeating_columns
from multimodal.search.lexical import TOKEN_PATTERN, product_texts

MAX_SHARE, FLOOR = 0.1, 10  # a query about more products than both is too generic to rank methods by
MAX_VALUES = 500  # an attribute column holds at most this many distinct values


@dataclass(frozen=True, eq=False)
class ShopperQuery:
    """A query text, the products-table rows it is about (sorted), its kind, what it is made of: its words
    (``words``) or its ``(column, value)`` pairs (``attributes``), and the rows of the known item a word query was
    copied from (sorted; empty for attribute queries), which weigh twice as much in nDCG."""

    text: str
    relevant: np.ndarray
    kind: str
    terms: tuple
    known: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


@functools.cache
def stopwords() -> frozenset[str]:
    """The English stop words BM25 leaves out (``bm25s``'s list), read once."""
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def _words(text: str, stop: frozenset[str]) -> list[str]:
    """The words of ``text`` as BM25 reads them: lower case, one-character tokens kept, stop words dropped."""
    return [w for w in re.findall(TOKEN_PATTERN, text.lower()) if w not in stop]


def attribute_columns(products: pd.DataFrame, lexical: list[str], given: list[str] | None) -> list[str]:
    """The columns attribute queries are made of: ``given`` (checked), else the catalogue's attribute columns as
    facets find them (:func:`~multimodal.search.facets.repeating_columns`), less the BM25 ones and those of numbers
    only, with up to :data:`MAX_VALUES` values (more than a facet lists: a query names one value, while a shopper
    reads a facet's whole list)."""
    if given is not None:
        missing = [c for c in given if c not in products.columns or c in SKIPPED]
        if missing:
            known = [c for c in products.columns if c not in SKIPPED]
            raise UserError(f"--tune-attributes: column(s) {missing} are not in the export (it stores: {known})")
        return list(given)
    return repeating_columns(products, skip=lexical, numbers=False, max_values=MAX_VALUES)


def shopper_queries(
    products: pd.DataFrame, lexical: list[str], attributes: list[str], n: int, seed: int = 0
) -> list[ShopperQuery]:
    """Up to ``n`` distinct queries (half of each kind when there are attribute columns) about ``products``."""
    stop = stopwords()
    words = [_words(t, stop) for t in product_texts(products, lexical)]
    rng = np.random.default_rng(seed)
    wanted = {"attributes": n // 2 if attributes else 0}
    wanted["words"] = n - wanted["attributes"]
    drawn: dict[str, tuple[str, tuple, int]] = {}  # query text -> (kind, what it is made of, the product drawn)
    for kind, count in wanted.items():
        made = 0
        for row in rng.integers(0, len(products), size=8 * count):
            if made == count:
                break
            key = _draw_words(words[row], rng) if kind == "words" else _draw_values(products, row, attributes, rng)
            if key is not None and " ".join(key[1]) not in drawn:
                drawn[" ".join(key[1])] = (kind, key[0], int(row))
                made += 1
    same_text = _same_text(words, [row for kind, _, row in drawn.values() if kind == "words"])
    holders = _holders([w for t, (k, _, _) in drawn.items() if k == "words" for w in t.split()], words)
    holders.update(_value_holders(products, attributes))
    queries = []
    for text, (kind, what, row) in drawn.items():
        relevant = holders[what[0]]
        for key in what[1:]:
            relevant = np.intersect1d(relevant, holders[key], assume_unique=True)
        known = same_text[tuple(words[row])] if kind == "words" else np.zeros(0, np.int64)
        if 0 < len(relevant) <= max(FLOOR, MAX_SHARE * len(products)):
            queries.append(ShopperQuery(text, relevant, kind, tuple(what), known))
    return queries


def _draw_words(words: list[str], rng: np.random.Generator) -> tuple[tuple, tuple[str, ...]] | None:
    """Two or more consecutive words of one product's text, up to all of them (None: it has fewer than two)."""
    if len(words) < 2:
        return None
    size = int(rng.integers(2, len(words) + 1))
    start = int(rng.integers(0, len(words) - size + 1))
    chosen = tuple(words[start : start + size])
    return tuple(dict.fromkeys(chosen)), chosen


def _draw_values(
    products: pd.DataFrame, row: int, attributes: list[str], rng: np.random.Generator
) -> tuple[tuple, tuple[str, ...]] | None:
    """The values of one or two attribute columns of one product, in column order (None: it has none)."""
    present = [c for c in attributes if pd.notna(products[c].iat[row]) and str(products[c].iat[row]).strip()]
    if not present:
        return None
    size = int(rng.integers(1, min(2, len(present)) + 1))
    columns = sorted(rng.choice(len(present), size=size, replace=False).tolist())
    pairs = tuple((present[c], str(products[present[c]].iat[row])) for c in columns)
    return pairs, tuple(v for _, v in pairs)


def _holders(needed: list[str], words: list[list[str]]) -> dict:
    """For each word of ``needed``, the rows whose words hold it, sorted (one pass over the catalogue)."""
    holders: dict[str, list[int]] = {w: [] for w in needed}
    for row, text in enumerate(words):
        for w in set(text).intersection(holders):
            holders[w].append(row)
    return {w: np.asarray(rows, np.int64) for w, rows in holders.items()}


def _same_text(words: list[list[str]], drawn: list[int]) -> dict[tuple[str, ...], np.ndarray]:
    """For the text (as BM25 reads it) of each product in ``drawn``, the rows with the very same text, sorted."""
    needed: dict[tuple[str, ...], list[int]] = {tuple(words[row]): [] for row in drawn}
    for row, text in enumerate(words):
        if tuple(text) in needed:
            needed[tuple(text)].append(row)
    return {text: np.asarray(rows, np.int64) for text, rows in needed.items()}


def _value_holders(products: pd.DataFrame, attributes: list[str]) -> dict[tuple[str, str], np.ndarray]:
    """``(column, value) -> rows`` with that value, sorted, for every value of ``attributes`` (one pass a column)."""
    holders = {}
    for column in attributes:
        rows = pd.Series(np.arange(len(products)), dtype=np.int64)
        groups = rows.groupby(products[column].astype(str).to_numpy(), sort=False).indices
        holders.update({(column, v): np.asarray(r, np.int64) for v, r in groups.items()})
    return holders


def attribute_terms(products: pd.DataFrame, attributes: list[str]) -> set[str]:
    """The words of the values of ``attributes`` as BM25 reads them (lower case, stop words left out)."""
    values = {str(v) for c in attributes for v in products[c].dropna().unique()}
    return {w for v in values for w in _words(v, stopwords())}


def query_route(text: str, terms: AbstractSet[str], vocabulary: AbstractSet[str] | None = None) -> str:
    """The route whose tuned fusion a text query takes (:mod:`multimodal.search.hybrid_tuning`): ``attributes``
    when every word of ``text`` (stop words left out) is one of ``terms``, or when one of its words is in no
    product's BM25 text (not in ``vocabulary``, where given: such a query cannot be a lookup of a product's own
    words; it names a kind of product, "topwear"), else ``words``."""
    words = _words(text, stopwords())
    if words and vocabulary is not None and any(w not in vocabulary for w in words):
        return "attributes"
    return "attributes" if words and all(w in terms for w in words) else "words"
