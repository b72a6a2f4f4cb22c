"""The re-ranker's image-text-matching loss (ALBEF / BLIP): each pair against in-batch hard negatives."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

from encoders.types import Features

MatchScores = Callable[[Features, Features], Tensor]


def itm_loss(
    match: MatchScores, vision: Features, text: Features, query: Tensor, product: Tensor, logit_scale: Tensor
) -> Tensor:
    """Binary cross-entropy of ``match`` on the batch's pairs plus one hard negative per image and per text.

    Args:
        match: the re-ranker: logits ``(N,)`` of image features and text features of ``N`` pairs.
        vision: image features of the batch (``B`` items).
        text: text features of the batch, row ``i`` matching image ``i``.
        query: query vectors ``(B, E)`` and ``product`` vectors ``(B, E)``, detached: negatives are sampled in
            proportion to their softmax similarity at ``logit_scale``, never the positive.
    """
    b = query.shape[0]
    eye = torch.eye(b, dtype=torch.bool, device=query.device)
    with torch.no_grad():  # at the contrastive temperature: plain cosines would make the softmax nearly uniform
        weights = ((logit_scale * query @ product.t()).float().softmax(-1) + 1e-6).masked_fill(eye, 0)
        neg_image = torch.multinomial(weights, 1).squeeze(1)  # for each text, a hard image
        neg_text = torch.multinomial(weights.t(), 1).squeeze(1)  # for each image, a hard text
    pair_vision = _cat(vision, _index(vision, neg_image), vision)
    pair_text = _cat(text, text, _index(text, neg_text))
    logits = match(pair_vision, pair_text)  # (3B,): positives, then the two negative sets
    target = torch.cat([torch.ones(b), torch.zeros(2 * b)]).to(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


def _cat(*features: Features) -> Features:
    return Features(
        tokens=torch.cat([f.tokens for f in features]),
        mask=torch.cat([f.mask for f in features]),
        pooled=torch.cat([f.pooled for f in features]),
    )


def _index(features: Features, idx: Tensor) -> Features:
    return Features(tokens=features.tokens[idx], mask=features.mask[idx], pooled=features.pooled[idx])
