"""Generating from part of a language model's vocabulary: output layers that compute the logits of chosen ids only.

Captions draw on a few thousand of the tokenizer's ids; computing only their logits makes the output layer (and,
in a compact id space, ``generate``'s per-step work) cost ``K / V`` of the full one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn import functional as F

# generate options holding token ids, reading the vocabulary or seeing ids and scores as they are made: with any of
# them, a trimmed output layer scatters its logits into the whole vocabulary instead of generating in a compact one.
FULL_VOCABULARY_OPTIONS = frozenset(
    {
        "bad_words_ids", "begin_suppress_tokens", "bos_token_id", "constraints", "decoder_start_token_id",
        "eos_token_id", "force_words_ids", "forced_bos_token_id", "forced_eos_token_id", "logits_processor",
        "pad_token_id", "prompt_lookup_num_tokens", "assistant_model", "sequence_bias", "stop_strings",
        "stopping_criteria", "streamer", "suppress_tokens", "tokenizer", "watermarking_config", "generation_config",
    }
)  # fmt: skip


class TrimmedOutput(nn.Module):
    """A vocabulary projection restricted to ``token_ids``: their logits, ``-inf`` for every other id.

    The kept rows of the weight and bias are copied once (``K x D``); the layer it wraps is left untouched.

    Args:
        full: the output layer (``weight (V, D)``, optional ``bias (V,)``).
        token_ids: ``(K,)`` the ids kept.
    """

    def __init__(self, full: nn.Module, token_ids: Tensor) -> None:
        super().__init__()
        weight: Tensor = full.weight  # type: ignore[assignment]
        bias: Tensor | None = getattr(full, "bias", None)
        ids = token_ids.to(device=weight.device, dtype=torch.long)
        self.vocab_size = weight.shape[0]
        self.register_buffer("token_ids", ids, persistent=False)
        self.register_buffer("weight", weight.detach().index_select(0, ids), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().index_select(0, ids), persistent=False)

    def forward(self, hidden: Tensor) -> Tensor:
        """``hidden (..., D)`` -> logits ``(..., V)``."""
        kept = F.linear(hidden, self.weight.to(hidden.dtype), None if self.bias is None else self.bias.to(hidden.dtype))
        out = kept.new_full((*kept.shape[:-1], self.vocab_size), float("-inf"))
        return out.index_copy_(-1, self.token_ids, kept)


class CompactVocabulary:
    """A small id space for generation: ``ids (K',)``, the sorted union of the ids that may be generated, the ids
    of the prompt and the special ids. Compact id ``j`` stands for token id ``ids[j]``; ``blocked (K',)`` is
    ``-inf`` where an id is there only to be read (prompt or special ids outside ``generable``), else 0.

    ``generate`` then works on ``(B, K')`` scores instead of ``(B, V)``: with ~2k of 30k ids, its per-step work
    (logits processors, argmax or top-k, the copies) shrinks with the output layer.
    """

    def __init__(self, generable: Tensor, input_ids: Tensor, special: tuple[int, ...] = ()) -> None:
        generable = generable.to(device=input_ids.device, dtype=torch.long)
        extra = torch.tensor(special, dtype=torch.long, device=input_ids.device)
        self.ids = torch.unique(torch.cat([generable, input_ids.flatten().long(), extra]))
        blocked = torch.full(self.ids.shape, float("-inf"), device=input_ids.device)
        self.blocked = blocked.masked_fill(torch.isin(self.ids, generable), 0.0)

    def to_compact(self, token_ids: Tensor) -> Tensor:
        """Token ids (any of :attr:`ids`) -> compact ids, same shape."""
        return torch.searchsorted(self.ids, token_ids.to(self.ids.device).long())

    def to_full(self, compact: Tensor) -> Tensor:
        """Compact ids -> token ids, same shape."""
        return self.ids[compact]


class CompactEmbedding(nn.Module):
    """Reads compact ids: the model's input embedding ``full`` (its hooks included) called on the real ids."""

    def __init__(self, full: nn.Module, space: CompactVocabulary) -> None:
        super().__init__()
        self.full = full
        self.space = space

    def forward(self, compact: Tensor) -> Tensor:
        return self.full(self.space.to_full(compact))


class CompactOutput(nn.Module):
    """Writes compact ids: the logits ``(..., K')`` of :attr:`CompactVocabulary.ids` (rows of ``full`` copied once),
    ``-inf`` at the blocked ones."""

    def __init__(self, full: nn.Module, space: CompactVocabulary) -> None:
        super().__init__()
        weight: Tensor = full.weight  # type: ignore[assignment]
        bias: Tensor | None = getattr(full, "bias", None)
        ids = space.ids.to(weight.device)
        self.register_buffer("weight", weight.detach().index_select(0, ids), persistent=False)
        blocked = space.blocked.to(device=weight.device, dtype=weight.dtype)
        self.register_buffer(
            "bias", blocked if bias is None else bias.detach().index_select(0, ids) + blocked, persistent=False
        )

    def forward(self, hidden: Tensor) -> Tensor:
        return F.linear(hidden, self.weight.to(hidden.dtype), self.bias.to(hidden.dtype))


@contextmanager
def swapped(model: nn.Module, replacements: dict[nn.Module, nn.Module]) -> Iterator[None]:
    """Within the block each submodule of ``model`` that is a key of ``replacements`` is its value.

    The model itself is put back as it was afterwards, so a request never leaves another request's layers in place.
    """
    places = {m: n.rpartition(".") for n, m in model.named_modules() if m in replacements}
    for old, (parent, _, attr) in places.items():
        setattr(model.get_submodule(parent), attr, replacements[old])
    try:
        yield
    finally:
        for old, (parent, _, attr) in places.items():
            setattr(model.get_submodule(parent), attr, old)
