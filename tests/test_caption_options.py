"""Per-call caption options: a call's prompt, seed and ``generate`` options travel with its batches; no call writes
them to the model (or to the shared Python API), so calls in flight together get the captions they asked for."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SAMPLE_IMAGES

PHOTOS = [str(p) for p in sorted(SAMPLE_IMAGES.glob("*.jpg"))[:4]]


def test_options_travel_with_the_call_and_leave_the_model_alone(trained: dict[str, Path]) -> None:
    import multimodal

    captioner = multimodal.load(trained["captioner"])
    settings = dict(captioner.model.generation)
    short = captioner.caption(PHOTOS, max_new_tokens=2)["caption"].tolist()
    bound = captioner.with_options("describe", 7, max_new_tokens=3, do_sample=True)
    assert bound is not captioner and bound.model is captioner.model
    assert (bound.prompt, bound.seed, dict(bound.generation)) == (
        "describe",
        7,
        {"max_new_tokens": 3, "do_sample": True},
    )
    assert (captioner.prompt, captioner.seed, dict(captioner.generation)) == (None, 0, {})
    assert not hasattr(captioner.model, "predict_options") and not hasattr(captioner.model, "predict_seed")
    # Each batch carries the call's options; the model's own generation settings are untouched.
    dataset = bound.dataset(bound.records(PHOTOS[:2]))
    batch = bound.collate()([dataset[0], dataset[1]])
    assert batch["generation"] == {"max_new_tokens": 3, "do_sample": True} and batch["seed"] == 7
    assert captioner.model.generation == settings
    # A call with other options in between changes nothing for the next call.
    captioner.caption(PHOTOS, max_new_tokens=6, num_beams=2, prompt="describe")
    assert captioner.caption(PHOTOS, max_new_tokens=2)["caption"].tolist() == short


def test_bound_calls_keep_their_options_whatever_runs_between(trained: dict[str, Path]) -> None:
    import multimodal

    captioner = multimodal.load(trained["captioner"])
    settings = [{"max_new_tokens": 2}, {"max_new_tokens": 6, "num_beams": 2}]
    alone = [captioner.caption(PHOTOS, **s)["caption"].tolist() for s in settings]
    assert alone[0] != alone[1]
    calls = [captioner.with_options(**s) for s in settings]  # two requests in flight on one model
    rows = [[r["caption"] for r in call.run(PHOTOS)] for call in reversed(calls)]
    assert rows[::-1] == alone


def test_bad_options_fail_before_any_batch(trained: dict[str, Path]) -> None:
    import multimodal
    from multimodal.errors import UserError

    captioner = multimodal.load(trained["captioner"])
    with pytest.raises(UserError, match="max_new_tokens must be positive"):
        captioner.with_options(max_new_tokens=0)
    assert dict(captioner.generation) == {}
