"""The "wide" head of a wide-and-deep tagger: a linear model on hashed token n-grams of the product text."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class NgramHead(nn.Module):
    """The "wide" part of a wide-and-deep tagger: a linear model on the hashed token n-grams of the product text,
    whose output is added to the fused heads' logits. It reads the text tower's own ``input_ids``: every text
    column, joined with a separator where one ends (:class:`multimodal.towers.JoinedText`).

    A fused vector learns a class that has one or two training products last; a per-n-gram weight learns it at
    once when the text names it (as a bag-of-words logistic regression does). Token n-grams (1..``ngrams``) that
    contain no padding and no special token are hashed into ``buckets`` rows (row 0 is "nothing"); a product's
    n-grams are summed with weight ``1/sqrt(count)`` (L2-normalised binary features). Rows start at zero, so an
    untrained head adds nothing.

    Args:
        sizes: output width per logits key (classes per attribute, tags per tag column).
        buckets: hash table rows.
        ngrams: longest n-gram.
        ignore_ids: token ids that never form an n-gram (the tokenizer's special tokens).
    """

    _PRIMES = (1_000_003, 998_244_353, 1_000_000_007, 19_260_817)

    def __init__(self, sizes: dict[str, int], buckets: int, ngrams: int = 2, ignore_ids: list[int] | None = None):
        super().__init__()
        if problem := self.problem(buckets, ngrams):
            raise ValueError(f"NgramHead {problem}")
        self.sizes, self.buckets, self.ngrams = dict(sizes), buckets, ngrams
        self.register_buffer("ignore_ids", torch.tensor(sorted(set(ignore_ids or [])), dtype=torch.long), False)
        self.table = nn.EmbeddingBag(buckets, sum(self.sizes.values()), mode="sum", padding_idx=0)
        nn.init.zeros_(self.table.weight)

    @classmethod
    def problem(cls, buckets: int, ngrams: int) -> str | None:
        """What is wrong with these sizes, or None."""
        if buckets < 2 or not 1 <= ngrams <= len(cls._PRIMES):
            return f"needs buckets >= 2 and 1 <= ngrams <= {len(cls._PRIMES)}"
        return None

    def ngram_ids(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Hash rows ``(B, G)`` of every n-gram; 0 where a window holds padding or a special token."""
        special = (input_ids.unsqueeze(-1) == self.ignore_ids).any(-1)  # not torch.isin: it has no ONNX form
        valid = attention_mask.bool() & ~special  # (B, T)
        t = input_ids.shape[1]
        rows = []
        for n in range(1, min(self.ngrams, t) + 1):
            code = torch.full_like(input_ids[:, : t - n + 1], n)
            ok = torch.ones_like(valid[:, : t - n + 1])
            for j in range(n):
                code = code + input_ids[:, j : t - n + 1 + j] * self._PRIMES[j]
                ok = ok & valid[:, j : t - n + 1 + j]
            rows.append(torch.where(ok, 1 + code.remainder(self.buckets - 1), 0))
        return torch.cat(rows, 1)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, present: Tensor) -> dict[str, Tensor]:
        """Logits per key for ``(B, T)`` ids; rows where ``present (B,)`` is False get zeros."""
        rows = self.ngram_ids(input_ids, attention_mask)
        rows = torch.where(present.unsqueeze(1), rows, 0)
        used = (rows > 0).float()
        weights = used / used.sum(1, keepdim=True).clamp(min=1).sqrt()
        out = self.table(rows, per_sample_weights=weights)  # (B, sum of sizes)
        return dict(zip(self.sizes, out.split(list(self.sizes.values()), dim=1), strict=True))
