"""``QueryAndProductText``: the retriever's text function, query text and product text tokenized apart."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from multimodal.errors import UserError


class QueryAndProductText:
    """Text function for the collate: tokenizes the query columns and (separately) the product's text columns.

    Output keys: ``input_ids/attention_mask (B, T)`` of the query text and ``product_input_ids/
    product_attention_mask (B, T')`` of the product text. Missing fields are left out of the join.
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: int,
        query_columns: list[str] | None,
        product_columns: list[str] | None,
        separator: str = ". ",
    ) -> None:
        self.tokenizer, self.max_length, self.separator = tokenizer, max_length, separator
        self.query_columns, self.product_columns = query_columns, product_columns

    def join(self, texts: dict[str, list[str | None]], columns: list[str] | None) -> list[str]:
        """Each item's text of ``columns`` (None: every column), present fields joined by the separator."""
        names = list(texts) if columns is None else columns
        unknown = [c for c in names if c not in texts]
        if unknown:
            raise UserError(f"text column(s) {unknown} are not among the data's text_columns {list(texts)}")
        n = len(next(iter(texts.values()))) if texts else 0
        return [self.separator.join(texts[c][i] for c in names if texts[c][i] is not None) for i in range(n)]

    def tokenize(self, joined: list[str]) -> dict[str, Tensor]:
        """``input_ids/attention_mask (B, T)`` of ``joined``, padded to the longest and cut at ``max_length``."""
        enc = self.tokenizer(joined, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def __call__(self, texts: dict[str, list[str | None]]) -> dict[str, Tensor]:
        out = self.tokenize(self.join(texts, self.query_columns))
        if self.product_columns != self.query_columns:
            product = self.tokenize(self.join(texts, self.product_columns))
            out.update({"product_input_ids": product["input_ids"], "product_attention_mask": product["attention_mask"]})
        return out
