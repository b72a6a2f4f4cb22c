"""Self-critical sequence training (Rennie et al. 2017, with the mean-of-other-samples baseline of Luo 2020).

From epoch ``start_epoch`` on, each photo's caption is sampled ``samples`` times, each sample is rewarded with its
CIDEr-D against the photo's target text (document frequencies of the training targets), and the samples that beat
the mean of the others are made likelier (REINFORCE). It optimises the metric the captions are judged by; each step
costs about five teacher-forced ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.nn import functional as F

from encoders.types import Features
from multimodal.captioning.consensus import CiderConsensus
from multimodal.captioning.generation import generate_once
from multimodal.captioning.settings import SelfCriticalSettings
from multimodal.captioning.text import pad
from multimodal.data.dataset import IGNORE_INDEX
from multimodal.errors import UserError

if TYPE_CHECKING:
    from multimodal.captioning.captioner import ProductCaptioner


class SelfCritical:
    """The self-critical loss and its state: the settings and the reward (CIDEr-D of the training targets).

    Args:
        settings: when and how (None: off; :meth:`loss` still works, with the default number of samples).
    """

    def __init__(self, settings: SelfCriticalSettings | None) -> None:
        self.settings = settings
        self.reward: CiderConsensus | None = None  # set when fit starts, from the training targets

    def active(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) trains with :meth:`loss` instead of teacher forcing."""
        return self.settings is not None and epoch >= self.settings.start_epoch

    def start(self, optimizer: torch.optim.Optimizer, schedulers: Sequence[Any] = ()) -> None:
        """Multiply the learning rates of ``optimizer`` (and the base rates of ``schedulers``) by ``lr_scale`` and
        clear its per-parameter state (Adam's moments: the policy gradient has another scale than the cross-entropy's),
        once: a mark in the parameter groups, saved with the optimizer's state, stops a resumed run doing it again."""
        assert self.settings is not None
        scale = self.settings.lr_scale
        if all(group.get("self_critical") for group in optimizer.param_groups):
            return
        optimizer.state.clear()
        for group in optimizer.param_groups:
            group["lr"] *= scale
            group["self_critical"] = True
        for scheduler in schedulers:
            if hasattr(scheduler, "base_lrs"):
                scheduler.base_lrs = [lr * scale for lr in scheduler.base_lrs]

    def rewards(self, texts: list[str], references: list[str | None], count: int) -> Tensor:
        """``(N, count)`` CIDEr-D of each item's ``count`` consecutive samples against its reference (0 without)."""
        assert self.reward is not None
        rewards = torch.zeros(len(references), count)
        for i, reference in enumerate(references):
            if reference:
                samples = texts[i * count : (i + 1) * count]
                rewards[i] = torch.tensor([self.reward.similarity(t, reference) for t in samples])
        return rewards

    def loss(self, model: ProductCaptioner, vision: Features, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """REINFORCE loss of ``samples`` sampled captions per item of an encoded ``batch`` (its prompts and
        ``references``) and their mean CIDEr-D reward.

        Each sample's advantage is its reward minus the mean reward of the item's other samples; items without a
        reference get none. The log-probabilities are those of the sampled tokens after the item's prompt (dropout
        on, as in training), up to and including the first ``[eos]``: a sample cut by ``max_new_tokens`` has none."""
        if self.reward is None:
            raise UserError("model.self_critical: no reward: the training targets' CIDEr-D document frequencies")
        count = (self.settings or SelfCriticalSettings()).samples
        training = model.training
        model.eval()  # sampling sees the model as generation does; the loss below runs with dropout on again
        try:
            sampled = generate_once(model, vision, batch["prompt_ids"], batch["prompt_mask"], use_cache=True,
                                    do_sample=True, num_beams=1, num_return_sequences=count,
                                    max_new_tokens=int(model.generation.get("max_new_tokens", 24)))  # fmt: skip
        finally:
            model.train(training)
        rewards = self.rewards(sampled.texts, batch["references"], count)
        advantage = rewards - (rewards.sum(1, keepdim=True) - rewards) / (count - 1)
        assert sampled.tokens is not None
        logp, valid = sampled_logprobs(model, vision, batch, sampled.tokens, count)
        weight = advantage.reshape(-1, 1).to(logp.device, logp.dtype) * valid
        return -(weight * logp).sum() / valid.sum().clamp(min=1), rewards.mean()


def sampled_logprobs(
    model: ProductCaptioner, vision: Features, batch: dict[str, Any], tokens: Tensor, count: int
) -> tuple[Tensor, Tensor]:
    """Log-probabilities ``(B * count, L)`` of the sampled ``tokens`` after their item's prompt, with gradients,
    and the mask ``(B * count, L)`` of the tokens that count (up to and including the first ``[eos]``)."""
    pairs = zip(batch["prompt_ids"], batch["prompt_mask"], strict=True)
    prompts = [row[real.bool()].tolist() for row, real in pairs]  # [bos] prompt, left padding dropped
    eos, seqs, labels = model.lm.eos_id, [], []
    for row, new in enumerate(tokens.tolist()):
        prompt = prompts[row // count]
        new = new[: new.index(eos) + 1] if eos in new else new
        seqs.append(prompt + new)
        labels.append([IGNORE_INDEX] * len(prompt) + new)
    device = vision.tokens.device
    ids = pad(seqs, model.lm.pad_id, left=False).to(device)
    mask = pad([[1] * len(q) for q in seqs], 0, left=False).to(device)
    rows = torch.arange(len(prompts), device=device).repeat_interleave(count)
    repeated = vision.take(rows)
    skip = min(len(p) for p in prompts) - 1  # the shortest prompt's positions predict no sample token; bos kept
    logits = model.logits(repeated, ids, mask, skip=skip)  # (B, T - skip, V): the prompts' positions are no targets
    target = pad(labels, IGNORE_INDEX, left=False).to(device)[:, skip + 1 :]
    logp = -F.cross_entropy(logits[:, :-1].transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none")
    return logp, (target != IGNORE_INDEX).float()
