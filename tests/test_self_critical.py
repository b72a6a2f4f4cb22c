"""Self-critical sequence training of the captioner: the loss is REINFORCE with CIDEr-D rewards and the mean of the
other samples as the baseline, fit switches to it at ``start_epoch`` and scales the learning rates once (not again
on resume), and bad settings are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import SAMPLE_IMAGES, fit_tiny, write_manifest
from torch.nn import functional as F

from multimodal.captioning.settings import SelfCriticalSettings
from multimodal.errors import UserError

TITLES = ["Nike Men Black Running Shoes", "Puma Women White Casual Shoes", "Titan Men Silver Watch"]


def test_settings_and_their_errors() -> None:
    check_self_critical = SelfCriticalSettings.parse

    assert check_self_critical(None) is None and check_self_critical(False) is None
    assert check_self_critical(True) == SelfCriticalSettings(start_epoch=0, samples=5, lr_scale=0.1)
    assert check_self_critical({"start_epoch": 2, "lr_scale": 1}) == SelfCriticalSettings(2, 5, 1.0)
    for bad, message in [
        ({"samples": 1}, r"self_critical.samples=1: needs a whole number >= 2"),
        ({"start_epoch": -1}, r"start_epoch=-1: needs a whole number >= 0"),
        ({"lr_scale": 0}, r"lr_scale=0: needs a number > 0"),
        ({"epochs": 1}, r"keys start_epoch, samples and lr_scale"),
        ("yes", r"keys start_epoch, samples and lr_scale"),
    ]:
        with pytest.raises(UserError, match=message):
            check_self_critical(bad)


@pytest.fixture(scope="module")
def captioner(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny captioner fitted for 2 epochs of 3 steps, self-critical from the second: (checkpoint, fit folder)."""
    root = tmp_path_factory.mktemp("self-critical")
    df = pd.read_csv(SAMPLE_IMAGES.parent / "metadata.csv", dtype=str, keep_default_na=False).iloc[::31].head(24)
    write_manifest(df.assign(split="train"), root / "train.csv")
    ckpt = fit_tiny("captioner", root / "fit", root / "train.csv", SAMPLE_IMAGES, 6, "--trainer.max_epochs", "2",
                    "--model.init_args.self_critical", "{start_epoch: 1, samples: 3, lr_scale: 0.25}")  # fmt: skip
    return ckpt, root


def test_loss_is_reinforce_with_the_mean_of_the_other_samples_as_baseline(captioner: tuple[Path, Path]) -> None:
    import multimodal
    from encoders.types import Features
    from multimodal.captioning.consensus import CiderConsensus
    from multimodal.captioning.generation import generate_once

    model = multimodal.load(captioner[0]).model.eval()
    assert model.self_critical == SelfCriticalSettings(start_epoch=1, samples=3, lr_scale=0.25)
    model.reward = CiderConsensus(TITLES)
    torch.manual_seed(1)
    vision = model.encode_images(torch.randn(3, 3, 64, 64))
    batch = model.text_fn()({"title": [TITLES[0], None, TITLES[2]]})
    options = {"use_cache": True, "do_sample": True, "num_beams": 1, "num_return_sequences": 3, "max_new_tokens": 20}
    torch.manual_seed(7)
    loss, reward = model.self_critical_loss(vision, batch)

    # By hand: the same samples, each one's CIDEr-D against its item's title, advantage = reward - mean of the
    # item's other two, times the sum of the log-probabilities of its tokens up to its first [eos] (none if it was
    # cut by max_new_tokens), over all those tokens.
    torch.manual_seed(7)
    sampled = generate_once(model, vision, batch["prompt_ids"], batch["prompt_mask"], **options)
    total, tokens, rewards = 0.0, 0, []
    for item, reference in enumerate([TITLES[0], None, TITLES[2]]):
        mine = sampled.texts[item * 3 : item * 3 + 3]
        r = [model.reward.similarity(t, reference) if reference else 0.0 for t in mine]
        rewards += r
        for j in range(3):
            new = sampled.tokens[item * 3 + j].tolist()
            new = new[: new.index(model.lm.eos_id) + 1] if model.lm.eos_id in new else new
            ids = torch.tensor([[model.lm.bos_id, *new]])
            one = Features(vision.tokens[item : item + 1], vision.mask[item : item + 1], vision.pooled[item : item + 1])
            logits = model.logits(one, ids, torch.ones_like(ids))[0, :-1]
            logp = -F.cross_entropy(logits, ids[0, 1:], reduction="sum")
            advantage = r[j] - (sum(r) - r[j]) / 2
            total += -advantage * logp.item()
            tokens += len(new)
    assert float(loss) == pytest.approx(total / tokens, rel=1e-4, abs=1e-6)
    assert float(reward) == pytest.approx(sum(rewards) / 9, rel=1e-6)
    assert any(rewards), "the tiny captioner's samples should share some words with the titles"

    # Without references there is nothing to reward: no advantage, no loss.
    empty = model.text_fn()({"title": [None, None, None]})
    loss, reward = model.self_critical_loss(vision, empty)
    assert float(loss) == 0.0 and float(reward) == 0.0


def test_fit_switches_at_start_epoch_and_scales_the_rates_once(captioner: tuple[Path, Path]) -> None:
    from multimodal.cli import main

    ckpt, root = captioner
    stored = torch.load(ckpt, map_location="cpu", weights_only=False)
    groups = stored["optimizer_states"][0]["param_groups"]
    assert stored["epoch"] == 1 and stored["global_step"] == 6
    assert all(g["self_critical"] for g in groups)
    assert [g["lr"] for g in groups] == pytest.approx([0.003 * 0.25 * g["lr_scale"] for g in groups])
    # Resumed for a third epoch: the rates stay scaled once.
    main(["fit", "--config", "configs/captioning/tiny.yaml", "--data.init_args.manifest", str(root / "train.csv"),
          "--data.init_args.image_root", str(SAMPLE_IMAGES), "--trainer.max_epochs", "3",
          "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
          "--trainer.enable_checkpointing", "true", "--trainer.default_root_dir", str(root / "resumed"),
          "--model.init_args.self_critical", "{start_epoch: 1, samples: 3, lr_scale: 0.25}",
          "--ckpt_path", str(ckpt)])  # fmt: skip
    (resumed,) = list((root / "resumed").rglob("*.ckpt"))
    again = torch.load(resumed, map_location="cpu", weights_only=False)
    assert again["global_step"] == 9
    assert [g["lr"] for g in again["optimizer_states"][0]["param_groups"]] == pytest.approx([g["lr"] for g in groups])
    before, after = stored["state_dict"], again["state_dict"]
    assert any(not torch.equal(before[k], after[k]) for k in before), "the self-critical epoch changed no weight"


def test_self_critical_without_training_targets_is_a_one_line_error(captioner: tuple[Path, Path]) -> None:
    import multimodal

    model = multimodal.load(captioner[0]).model
    model.reward = None
    with pytest.raises(UserError, match="no reward"):
        model.self_critical_loss(model.encode_images(torch.randn(1, 3, 64, 64)), model.text_fn()({"title": ["x"]}))


def test_start_clears_the_optimizer_state_and_scales_the_rates_once(captioner: tuple[Path, Path]) -> None:
    import multimodal

    model = multimodal.load(captioner[0]).model
    weights = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": weights[:2], "lr": 0.01}, {"params": weights[2:], "lr": 0.001}])
    sum(p.sum() for p in weights).backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    assert len(optimizer.state) == len(weights)
    model.start_self_critical(optimizer, [scheduler])
    assert not optimizer.state  # Adam's moments of the cross-entropy are gone
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.0025, 0.00025])
    assert scheduler.base_lrs == pytest.approx([0.0025, 0.00025])
    optimizer.step()
    model.start_self_critical(optimizer, [scheduler])  # already started (as after a resume): nothing changes
    assert len(optimizer.state) == len(weights)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.0025, 0.00025])


def test_loss_after_prompts_of_several_lengths(captioner: tuple[Path, Path]) -> None:
    """Only the sampled tokens are scored: the vocabulary projection skips the shortest prompt's positions, and the
    loss is the one computed over whole sequences."""
    import multimodal
    from encoders.types import Features
    from multimodal.captioning.consensus import CiderConsensus
    from multimodal.captioning.generation import generate_once

    model = multimodal.load(captioner[0]).model.eval()
    model.reward = CiderConsensus(TITLES)
    torch.manual_seed(2)
    vision = model.encode_images(torch.randn(2, 3, 64, 64))
    text_fn = model.text_fn(prompt="")
    text_fn.prompt_columns = ["brand"]  # a known text column before the title, of two lengths
    batch = text_fn({"brand": ["Nike", "Puma sports and casual"], "title": TITLES[:2]})
    torch.manual_seed(3)
    loss, _ = model.self_critical_loss(vision, batch)
    torch.manual_seed(3)
    options = {"use_cache": True, "do_sample": True, "num_beams": 1, "num_return_sequences": 3, "max_new_tokens": 20}
    sampled = generate_once(model, vision, batch["prompt_ids"], batch["prompt_mask"], **options)
    total, tokens = 0.0, 0
    for item in range(2):
        prompt = batch["prompt_ids"][item][batch["prompt_mask"][item].bool()].tolist()
        r = [model.reward.similarity(t, TITLES[item]) for t in sampled.texts[item * 3 : item * 3 + 3]]
        for j in range(3):
            new = sampled.tokens[item * 3 + j].tolist()
            new = new[: new.index(model.lm.eos_id) + 1] if model.lm.eos_id in new else new
            ids = torch.tensor([prompt + new])
            one = Features(vision.tokens[item : item + 1], vision.mask[item : item + 1], vision.pooled[item : item + 1])
            logits = model.logits(one, ids, torch.ones_like(ids))[0, len(prompt) - 1 : -1]
            logp = -F.cross_entropy(logits, torch.tensor(new), reduction="sum")
            total += -(r[j] - (sum(r) - r[j]) / 2) * logp.item()
            tokens += len(new)
    assert float(loss) == pytest.approx(total / tokens, rel=1e-4, abs=1e-6)
