"""``Captioner``: the Python API of a trained :class:`ProductCaptioner`.

A call's prompt, seed and ``generate`` options travel with its batches (:class:`CaptionCollate` puts them in each
one) to ``predict_step``, so concurrent calls sharing one model never see each other's options.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import pandas as pd

from multimodal.captioning.settings import check_generation  # noqa: F401 - re-exported: where callers import it
from multimodal.captioning.task import TASK
from multimodal.data.dataset import Collate, TextFn
from multimodal.inference import Predictor, Row, frame


class CaptionCollate(Collate):
    """The collate of one caption call (picklable): each batch also carries the call's ``generation`` options and
    sampling ``seed``, which ``predict_step`` reads.

    Args:
        text_fn: the captioner's text function (with the call's prompt).
        generation: ``generate`` options of the call (checked by :func:`check_generation`).
        seed: sampling seed of the call.
    """

    def __init__(self, text_fn: TextFn, generation: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        super().__init__(text_fn)
        self.generation, self.seed = dict(generation or {}), seed

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().__call__(items)
        batch["generation"], batch["seed"] = dict(self.generation), self.seed  # a copy per batch: nothing shared
        return batch


class Captioner(Predictor):
    """Writes captions (titles, descriptions...) from product photos with a trained captioner.

    Example::

        captioner = multimodal.load("captioner.ckpt")
        captioner.caption(["a.jpg"], num_beams=4)
        answerer.caption(["a.jpg"], prompt="What colour is it?")  # trained with model.questions
    """

    task_name: ClassVar[str] = TASK.model
    require_image: ClassVar[bool] = True
    prompt: str | None = None
    seed: int = 0
    generation: Mapping[str, Any] = MappingProxyType({})  # read-only: with_options makes a new API per call

    def required_columns(self) -> list[str]:
        return [self.columns.image, *self.model.prompt_columns]

    def collate(self) -> Collate:
        return CaptionCollate(self.model.text_fn(self.prompt), self.generation, self.seed)

    def with_options(self, prompt: str | None = None, seed: int = 0, **generation: Any) -> Captioner:
        """This API for one call: its prompt, sampling seed and ``generate`` options (``num_beams``, ``do_sample``,
        ``max_new_tokens``, ``top_p``...). A new object sharing the model, which it never writes to: concurrent
        calls each get their own."""
        self.model.text_fn(prompt)  # a question the model was not trained to answer: a one-line error, now
        bound = copy.copy(self)
        bound.prompt, bound.seed, bound.generation = prompt, seed, check_generation(dict(generation))
        return bound

    def rows(self, prediction: dict[str, Any]) -> list[Row]:
        return [
            {"id": i, "caption": c, "score": s}
            for i, c, s in zip(prediction["ids"], prediction["captions"], prediction["scores"], strict=True)
        ]

    def caption(self, inputs: Any, prompt: str | None = None, seed: int = 0, **generation: Any) -> pd.DataFrame:
        """One row per input: ``id``, ``caption`` and ``score`` (mean token log-probability, or the beam score);
        ``error`` for inputs without a readable photo.

        Args:
            inputs: image paths / PIL images, or a DataFrame / dicts with the image column (and the prompt columns
                the model was trained with).
            prompt: fixed text before the caption instead of the trained one.
            seed: sampling seed (with the same inputs and batch size, the same captions).
            generation: Hugging Face ``generate`` options, ``trim_vocabulary`` (default True when the checkpoint
                holds its training targets' token ids; False computes logits over the whole vocabulary) and
                ``rerank`` (consensus reranking: True / False / ``{"k": 5, "candidates": 8, "weight": 0.0}``;
                default: the checkpoint's ``model.rerank``).
        """
        return frame(self.with_options(prompt, seed, **generation).run(inputs))

    predict = caption
