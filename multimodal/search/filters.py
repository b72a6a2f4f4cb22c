"""Metadata filters for search: a small expression language, parsed (never ``eval``-ed) into a row mask.

    brand = 'Acme' AND stock >= 1
    category IN ('Watches', 'Sunglasses') AND NOT colour = 'Black'
    (channel = 'online' OR channel = 'outlet') AND price < 49.99

Grammar (keywords in any case)::

    expr    := and ("OR" and)*
    and     := unary ("AND" unary)*
    unary   := "NOT" unary | "(" expr ")" | compare
    compare := column op value | column ["NOT"] "IN" "(" value ("," value)* ")"
    op      := = | != | <> | < | <= | > | >=
    value   := 'text' ('' inside is a quote) | number
    column  := a name of letters, digits and _ | a name in double quotes

A column is *numeric* when its stored type is numeric or every stored value reads as a number (exports store
metadata as text, so ``stock`` holds "12"); a number is compared with numeric columns only and a quoted text
with text columns only: a mismatch, an unknown column or a syntax error is one :class:`UserError` naming it (for an
unknown column, with the ``multimodal export --columns`` that would store it). A missing value never satisfies a
comparison; ``NOT`` inverts the whole comparison. Every product of an index has every column (an update with other
columns is refused), so a missing value is one the catalogue left empty, never a column a product lacks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from multimodal.errors import UserError

TOKEN = re.compile(
    r"\s*(?:(?P<number>-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)|(?P<text>'(?:[^']|'')*')|(?P<quoted>\"[^\"]+\")"
    r"|(?P<op><=|>=|!=|<>|=|<|>)|(?P<punct>[(),])|(?P<word>[A-Za-z_][A-Za-z0-9_]*))"
)
KEYWORDS = {"AND", "OR", "NOT", "IN"}
OPS = {"=": "eq", "!=": "ne", "<>": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}
EXPORT_STORES = ("id", "image_path")  # columns an export always stores, whatever its --columns


@dataclass(frozen=True)
class Compare:
    column: str
    op: str  # eq ne lt le gt ge in
    values: tuple[str | float, ...]


@dataclass(frozen=True)
class Logic:
    op: str  # and or not
    parts: tuple[Any, ...]


def _tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise UserError(f"--where: cannot read {expr[pos:].strip()[:20]!r} (at character {pos + 1} of {expr!r})")
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "word" and value.upper() in KEYWORDS:
            kind, value = "keyword", value.upper()
        out.append((kind, value))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, expr: str) -> None:
        self.expr, self.tokens, self.pos = expr, _tokens(expr), 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ("end", "")

    def take(self, kind: str, value: str | None = None) -> str:
        got = self.peek()
        if got[0] != kind or (value is not None and got[1] != value):
            want = value or kind
            found = got[1] or "the end"
            raise UserError(f"--where: expected {want} but found {found!r} in {self.expr!r}")
        self.pos += 1
        return got[1]

    def accept(self, kind: str, value: str) -> bool:
        if self.peek() == (kind, value):
            self.pos += 1
            return True
        return False

    def parse(self) -> Any:
        if not self.tokens:
            raise UserError("--where: empty filter expression")
        tree = self.either()
        if self.pos != len(self.tokens):
            raise UserError(f"--where: unexpected {self.peek()[1]!r} in {self.expr!r}")
        return tree

    def either(self) -> Any:
        parts = [self.both()]
        while self.accept("keyword", "OR"):
            parts.append(self.both())
        return parts[0] if len(parts) == 1 else Logic("or", tuple(parts))

    def both(self) -> Any:
        parts = [self.unary()]
        while self.accept("keyword", "AND"):
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else Logic("and", tuple(parts))

    def unary(self) -> Any:
        if self.accept("keyword", "NOT"):
            return Logic("not", (self.unary(),))
        if self.accept("punct", "("):
            inner = self.either()
            self.take("punct", ")")
            return inner
        return self.compare()

    def compare(self) -> Compare:
        kind, name = self.peek()
        if kind not in ("word", "quoted"):
            raise UserError(f"--where: expected a column name but found {name or 'the end'!r} in {self.expr!r}")
        self.pos += 1
        column = name.strip('"')
        negate = self.accept("keyword", "NOT")
        if negate or self.peek() == ("keyword", "IN"):
            self.take("keyword", "IN")
            self.take("punct", "(")
            values = [self.value()]
            while self.accept("punct", ","):
                values.append(self.value())
            self.take("punct", ")")
            found = Compare(column, "in", tuple(values))
            return Logic("not", (found,)) if negate else found  # type: ignore[return-value]
        kind, op = self.peek()
        if kind != "op":
            raise UserError(
                f"--where: expected a comparison (= != < <= > >= IN) after '{column}' but found "
                f"{op or 'the end'!r} in {self.expr!r}"
            )
        self.pos += 1
        return Compare(column, OPS[op], (self.value(),))

    def value(self) -> str | float:
        kind, raw = self.peek()
        if kind == "number":
            self.pos += 1
            return float(raw)
        if kind == "text":
            self.pos += 1
            return raw[1:-1].replace("''", "'")
        raise UserError(
            f"--where: expected a value ('text' or a number) but found {raw or 'the end'!r} in {self.expr!r}"
        )


def parse(expr: str) -> Any:
    """The syntax tree of a filter expression (one-line :class:`UserError` on a syntax error)."""
    return _Parser(expr).parse()


def columns_of(tree: Any) -> list[str]:
    if isinstance(tree, Compare):
        return [tree.column]
    return [c for part in tree.parts for c in columns_of(part)]


class Filter:
    """A parsed filter, checked against a products table, giving a boolean mask over its rows."""

    def __init__(
        self,
        expr: str,
        products: pd.DataFrame,
        hidden: frozenset[str] = frozenset(),
        cache: dict[str, pd.Series | None] | None = None,
    ) -> None:
        """``cache``: column -> its numeric form (or None), kept by the caller across filters of one table (reading
        a million text values as numbers costs more than the search)."""
        self.expr, self.tree = expr, parse(expr)
        known = [c for c in products.columns if c not in hidden]
        for column in columns_of(self.tree):
            if column not in known:
                wanted = [c for c in known if c not in EXPORT_STORES] + [column]
                raise UserError(
                    f"--where: unknown column '{column}' (the index stores: {', '.join(known)}); "
                    f"export with --columns {' '.join(wanted)} and rebuild the index"
                )
        self.products = products
        self._numeric: dict[str, pd.Series | None] = {} if cache is None else cache

    def numeric(self, column: str) -> pd.Series | None:
        """The column as numbers when every stored value is one, else None (a text column)."""
        if column not in self._numeric:
            col = self.products[column]
            if pd.api.types.is_bool_dtype(col):
                self._numeric[column] = None
            elif pd.api.types.is_numeric_dtype(col):
                self._numeric[column] = col.astype(float)
            else:
                as_num = pd.to_numeric(col, errors="coerce")
                ok = as_num.notna() | col.isna()
                self._numeric[column] = as_num if col.notna().any() and bool(ok.all()) else None
        return self._numeric[column]

    def mask(self) -> np.ndarray:
        """``(N,)`` bool: the rows of the products table the expression keeps."""
        return np.asarray(self._eval(self.tree), dtype=bool)

    def _eval(self, node: Any) -> np.ndarray:
        if isinstance(node, Logic):
            parts = [self._eval(p) for p in node.parts]
            if node.op == "not":
                return ~parts[0]
            return np.logical_and.reduce(parts) if node.op == "and" else np.logical_or.reduce(parts)
        return self._compare(node)

    def _compare(self, node: Compare) -> np.ndarray:
        numbers = [v for v in node.values if isinstance(v, float)]
        texts = [v for v in node.values if isinstance(v, str)]
        if numbers and texts:
            raise UserError(f"--where: {node.column} IN (...) mixes numbers and texts")
        as_num = self.numeric(node.column)
        if numbers:
            if as_num is None:
                example = self.products[node.column].dropna().astype(str).head(1).tolist()
                raise UserError(
                    f"--where: column '{node.column}' holds text (e.g. {example[0]!r}), compared with a number: "
                    f"quote the value ('{_fmt(numbers[0])}')"
                    if example
                    else f"--where: column '{node.column}' has no values to compare with a number"
                )
            col: pd.Series = as_num
        else:
            if as_num is not None and pd.api.types.is_numeric_dtype(self.products[node.column]):
                raise UserError(
                    f"--where: column '{node.column}' is numeric, compared with the text {texts[0]!r}: drop the quotes"
                )
            col = self.products[node.column]
        present = col.notna().to_numpy()
        values = node.values
        if node.op == "in":
            return present & col.isin(list(values)).to_numpy()
        value = values[0]
        with np.errstate(invalid="ignore"):
            compared = {
                "eq": lambda c: c == value,
                "ne": lambda c: c != value,
                "lt": lambda c: c < value,
                "le": lambda c: c <= value,
                "gt": lambda c: c > value,
                "ge": lambda c: c >= value,
            }[node.op](col[present])
        out = np.zeros(len(col), dtype=bool)
        out[present] = np.asarray(compared, dtype=bool)
        return out


def _fmt(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)
