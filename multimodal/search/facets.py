"""Facets of search results: the metadata columns a shopper narrows results by, how many results hold each value,
the chosen values as a filter expression, and which filter to drop when nothing matches.

A chosen value is turned into the filter language of :mod:`multimodal.search.filters` (``column IN ('a', 'b')``),
so a facet narrows a search exactly as a typed ``--where`` does: inside FAISS and BM25, never over one page of
results. Facet columns are read from the products table (or given by the service's settings): stored columns with
a few distinct short values that repeat across products, so a catalogue's own attributes become its facets and
no column name is written here.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from multimodal.errors import UserError

MAX_VALUES = 200  # a facet column holds at most this many distinct values
MAX_WORDS = 3  # ... of at most this many words on average (a title or a description is no facet)
DISPLAY_FIELDS = 3  # fields a result card shows besides its title, when the service names none
SKIPPED = ("id", "image_path", "_label")  # the products table's own columns
PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
NUMBER = r"[\d.,\-]+"  # a value that is a number (a year, a price), as text

Selection = dict[str, tuple[str, ...]]  # column -> the values chosen (a product holds one of them)


def _values(column: pd.Series) -> pd.Series:
    """The column's non-empty values as text (numbers without a trailing ``.0``)."""
    values = column.dropna()
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        values = values.map(lambda v: str(int(v)) if float(v).is_integer() else str(v))
    values = values.astype(str).str.strip()
    return values[values != ""]


def repeating_columns(
    products: pd.DataFrame, skip: Collection[Any] = (), numbers: bool = True, max_values: int = MAX_VALUES
) -> list[Any]:
    """The stored columns (but ``skip``) that read as a catalogue's attributes: 2 to ``max_values`` distinct values
    that repeat (at most one distinct value per two products) of at most :data:`MAX_WORDS` words on average, so a
    title or a description is none. ``numbers=False`` leaves out a column of numbers only (years, prices), which
    narrow results as facets but are not what shoppers type (:mod:`multimodal.search.shopper_queries`)."""
    found = []
    for column in products.columns:
        if column in SKIPPED or column in skip:
            continue
        values = _values(products[column])
        distinct = values.nunique()
        if len(values) < 2 or not 2 <= distinct <= min(max_values, len(values) // 2):
            continue
        if not numbers and values.str.fullmatch(NUMBER).all():
            continue
        if values.str.split().str.len().mean() > MAX_WORDS:
            continue
        found.append(column)
    return found


def facet_columns(products: pd.DataFrame, given: list[str] | None = None) -> list[str]:
    """The columns results can be narrowed by: ``given`` (checked), else the :func:`repeating_columns` (numbers
    too, up to :data:`MAX_VALUES` values) that the filter language can compare: no true/false column, no name
    holding a double quote."""
    if given is not None:
        _check_columns(products, given, "facets")
        return list(given)
    unfit = [c for c in products.columns if '"' in str(c) or pd.api.types.is_bool_dtype(products[c])]
    return [str(c) for c in repeating_columns(products, skip=unfit)]


def title_column(products: pd.DataFrame, lexical: list[str] | None, given: str | None = None) -> str | None:
    """The column a result card is titled by: ``given``, else the index's first BM25 column (the words shoppers
    type), else the stored text column whose values differ most between products; None when nothing fits."""
    if given is not None:
        _check_columns(products, [given], "title")
        return given
    stored = [c for c in products.columns if c not in SKIPPED]
    for column in lexical or []:
        if column in stored:
            return str(column)
    best, best_distinct = None, 1
    for column in stored:
        values = _values(products[column])
        if values.str.fullmatch(NUMBER).all():
            continue  # numbers name no product
        if values.nunique() > best_distinct:
            best, best_distinct = str(column), values.nunique()
    return best


def display_fields(
    products: pd.DataFrame,
    facets: list[str],
    title: str | None,
    given: list[str] | None = None,
    distinct: dict[str, int] | None = None,
) -> list[str]:
    """The fields a result card shows under its title: ``given``, else the :data:`DISPLAY_FIELDS` facet columns
    with the most distinct values (``distinct``, counted when not given: the attributes that tell products apart
    most), in stored order."""
    if given is not None:
        _check_columns(products, given, "display")
        return list(given)
    distinct = distinct or {c: _values(products[c]).nunique() for c in facets}
    ranked = sorted((c for c in facets if c != title), key=lambda c: -distinct[c])
    chosen = set(ranked[:DISPLAY_FIELDS])
    return [c for c in facets if c in chosen]


def check_columns(stored: list[Any], columns: list[str], setting: str) -> None:
    """One-line error naming each of ``columns`` (given for ``setting``) that is not a stored column of the
    products table (its own columns ``SKIPPED`` are none), and the columns it stores."""
    known = [str(c) for c in stored if c not in SKIPPED]
    missing = [c for c in columns if c not in known]
    if missing:
        raise UserError(f"{setting}: column(s) {missing} are not in the index (it stores: {', '.join(known)})")


def _check_columns(products: pd.DataFrame, columns: list[str], setting: str) -> None:
    check_columns(list(products.columns), columns, setting)


def selection_of(raw: Any, products: pd.DataFrame) -> Selection:
    """The facet values a request chose: a mapping of column -> value or list of values (a JSON object).

    Raises:
        UserError: for something else, a column the index does not store, or a value that is not text or a number.
    """
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"filters must be an object of column -> values, not {str(raw)[:80]!r}")
    out: Selection = {}
    for column, values in raw.items():
        _check_columns(products, [column], "filters")
        if '"' in column:
            raise UserError(f"filters: column {column!r} holds a double quote and cannot be filtered on")
        values = values if isinstance(values, list) else [values]
        if not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in values):
            raise UserError(f"filters: the values of '{column}' must be texts or numbers, not {values!r}")
        chosen = tuple(dict.fromkeys(str(v) for v in values))
        if chosen:
            out[column] = chosen
    return out


def selection_where(selection: Selection, products: pd.DataFrame) -> str | None:
    """The filter expression of a selection: ``column IN (values)`` per column, joined by AND (None when empty);
    values are numbers for a numeric column, quoted texts otherwise (as the filter language compares them)."""
    parts = []
    for column, values in selection.items():
        name = column if PLAIN_NAME.fullmatch(column) else f'"{column}"'
        numeric = pd.api.types.is_numeric_dtype(products[column]) and not pd.api.types.is_bool_dtype(products[column])
        if numeric:
            try:
                literals = [repr(float(v)) for v in values]
            except ValueError:
                raise UserError(f"filters: column '{column}' is numeric, not {list(values)!r}") from None
        else:
            literals = ["'" + v.replace("'", "''") + "'" for v in values]
        parts.append(f"{name} IN ({', '.join(literals)})")
    return " AND ".join(parts) or None


def joined(*expressions: str | None) -> str | None:
    """Filter expressions combined by AND (each in parentheses); None when there are none."""
    given = [e for e in expressions if e is not None]
    if len(given) <= 1:
        return given[0] if given else None
    return " AND ".join(f"({e})" for e in given)


@dataclass
class Facets:
    """The facet columns of one build of an index, each as integer codes per products-table row, so a count over
    any set of results is one ``bincount``.

    Args:
        columns: the facet columns, in stored order.
        title / display: the column a result card is titled by and the fields it shows.
    """

    columns: list[str]
    title: str | None
    display: list[str]
    codes: dict[str, np.ndarray]
    values: dict[str, list[str]]

    @classmethod
    def of(
        cls,
        products: pd.DataFrame,
        lexical: list[str] | None = None,
        facets: list[str] | None = None,
        title: str | None = None,
        display: list[str] | None = None,
    ) -> Facets:
        """The facets of a products table (``facets``, ``title``, ``display``: the service's settings, if any)."""
        columns = facet_columns(products, facets)
        title = title_column(products, lexical, title)
        codes, values = {}, {}
        for column in columns:
            shown = _values(products[column].reset_index(drop=True))  # positions: the products-table rows
            text = np.full(len(products), None, dtype=object)
            text[shown.index.to_numpy()] = shown.to_numpy()
            codes[column], uniques = pd.factorize(text, use_na_sentinel=True)
            values[column] = [str(v) for v in uniques]
        distinct = {c: len(v) for c, v in values.items()}
        return cls(columns, title, display_fields(products, columns, title, display, distinct), codes, values)

    def counts(self, rows: np.ndarray, selection: Selection) -> list[dict[str, Any]]:
        """Per facet column, its values among the products-table ``rows`` with their counts (most first); a chosen
        value is listed (``selected``) even when no row holds it, so it can be taken back."""
        out = []
        for column in self.columns:
            codes = self.codes[column][rows]
            counted = np.bincount(codes[codes >= 0], minlength=len(self.values[column]))
            chosen = set(selection.get(column, ()))
            values = [
                {"value": value, "count": int(n), "selected": value in chosen}
                for value, n in zip(self.values[column], counted.tolist(), strict=True)
                if n or value in chosen
            ]
            values.sort(key=lambda v: (-v["count"], v["value"]))
            if values:
                out.append({"column": column, "values": values})
        return out


def drops(where: str | None, selection: Selection, products: pd.DataFrame) -> list[tuple[dict[str, Any], str | None]]:
    """Each active filter of a search (a facet column's chosen values, or the typed expression ``where``) with the
    filter expression of all the others (None: no filter left): what a search that found nothing may drop."""
    parts: list[tuple[dict[str, Any], str | None]] = [
        ({"column": c, "values": list(v)}, selection_where({c: v}, products)) for c, v in selection.items()
    ]
    if where is not None:
        parts.append(({"where": where}, where))
    return [(drop, joined(*(expr for j, (_, expr) in enumerate(parts) if j != i))) for i, (drop, _) in enumerate(parts)]
