"""Caption generation through Hugging Face ``generate``: options passed per call, captions and scores returned.

Nothing here writes to the model: a call's options (``num_beams``, ``do_sample``, ``trim_vocabulary``,
``rerank``...) are merged over the model's ``generation`` defaults for that call only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from encoders.types import Features
from multimodal.captioning import rerank
from multimodal.captioning.vocabulary import output_token_ids
from multimodal.errors import UserError

if TYPE_CHECKING:
    from multimodal.captioning.captioner import ProductCaptioner


@dataclass
class Captions:
    """Generated captions: ``texts`` and ``scores`` (mean token log-probability, or the beam score) per item, and the
    new token ids ``(B, L)`` (padded after ``[eos]``) where generation returned them (not after reranking)."""

    texts: list[str]
    scores: list[float]
    tokens: Tensor | None = None


def call_options(defaults: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """One call's options: ``options`` over the model's ``defaults``; a one-line error for ``max_new_tokens`` <= 0."""
    merged = {**defaults, **options}
    if int(merged.get("max_new_tokens", 1)) <= 0:
        raise UserError(f"max_new_tokens must be positive, not {merged['max_new_tokens']}")
    return merged


def token_logprob(scores: Tensor, tokens: Tensor, kept: Tensor | None) -> Tensor:
    """Log-probability ``(B,)`` of ``tokens (B,)`` under one step's processed ``scores (B, V)``; ``kept (K,)``: the
    only finite columns. What ``compute_transition_scores(normalize_logits=True)`` gives, without its
    ``(B*V, L)`` stack and a ``(B, V)`` log-softmax per step (half of a greedy 32 x 20-token generate on the CPU)."""
    total = torch.logsumexp(scores if kept is None else scores.index_select(1, kept.to(scores.device)), -1)
    return scores.gather(1, tokens[:, None]).squeeze(1) - total


def sequence_scores(out: Any, seqs: Tensor, kept: Tensor | None, eos_id: int) -> list[float]:
    """Per generated sequence ``seqs (B, L)``: the beam score, or the mean log-probability of its tokens up to and
    including the first ``[eos]``."""
    if getattr(out, "sequences_scores", None) is not None:  # beam search: length-normalised log-probability
        return [round(float(s), 6) for s in out.sequences_scores]
    columns = getattr(out, "score_token_ids", None)  # generated in a compact id space: scores (B, K')
    picked = seqs if columns is None else torch.searchsorted(columns, seqs.contiguous())  # the tokens' columns
    kept = None if columns is not None else kept
    logp = torch.stack([token_logprob(s, picked[:, t], kept) for t, s in enumerate(out.scores)], 1)  # (B, L)
    ended = (seqs == eos_id).long().cumsum(1)
    keep = (ended == 0) | ((ended == 1) & (seqs == eos_id))  # tokens up to and including the first eos
    mean = (logp.masked_fill(~keep, 0).sum(1) / keep.sum(1).clamp(min=1)).tolist()
    return [round(float(s), 6) for s in mean]


@torch.no_grad()
def generate_once(
    model: ProductCaptioner,
    vision: Features,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    use_cache: bool = True,
    **options: Any,
) -> Captions:
    """One ``generate`` call: ``options`` as given (plus ``trim_vocabulary``), no defaults, no reranking."""
    kept = output_token_ids(model.caption_token_ids, options.pop("trim_vocabulary", None))
    cond, ids, mask, put_prefix = model.lm_inputs(vision, prompt_ids, prompt_mask)
    lm = model.lm
    with lm.input_transform(put_prefix), lm.hidden_transform(cond.hidden):
        out = lm.generate(ids, mask, cond.encoder, use_cache=use_cache, output_token_ids=kept,
                          return_dict_in_generate=True, output_scores=True, **options)  # fmt: skip
    seqs = out.sequences[:, ids.shape[1] :]  # (B * num_return_sequences, L) new tokens only
    texts = [t.strip() for t in lm.tokenizer.batch_decode(seqs, skip_special_tokens=True)]
    return Captions(texts=texts, scores=sequence_scores(out, seqs, kept, lm.eos_id), tokens=seqs)


@torch.no_grad()
def generate_captions(
    model: ProductCaptioner,
    vision: Features,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    use_cache: bool = True,
    exclude: list[str] | None = None,
    has_image: Tensor | None = None,
    **options: Any,
) -> Captions:
    """Captions from vision features computed beforehand, with consensus reranking as a post-processor when the
    ``rerank`` option (or the model's ``rerank``) asks for it: ``exclude`` holds each item's product id (its own
    title is never a neighbour) and items whose ``has_image`` is False keep the best-scored candidate."""
    settings = rerank.call_settings(options.pop("rerank", None), model.rerank, model.memory)
    if settings is not None:
        options = rerank.widen(options, settings)
    captions = generate_once(model, vision, prompt_ids, prompt_mask, use_cache, **options)
    if settings is None:
        return captions
    assert model.memory is not None
    texts, scores = model.reranker(model.memory, vision, captions.texts, captions.scores, settings, exclude, has_image)
    return Captions(texts=texts, scores=scores)
