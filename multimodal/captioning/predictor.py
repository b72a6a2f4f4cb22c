"""``Captioner``: the Python API of a trained :class:`ProductCaptioner`."""

from __future__ import annotations

from typing import Any, ClassVar

import pandas as pd

from multimodal.captioning.captioner import check_rerank, check_trim_vocabulary
from multimodal.data.dataset import Collate
from multimodal.errors import UserError
from multimodal.inference import Predictor, Row, frame


def check_generation(options: dict[str, Any]) -> dict[str, Any]:
    """``generate`` options of a caption job, with a one-line error for values that cannot work."""
    for key in ("max_new_tokens", "num_beams"):
        if key in options and int(options[key]) <= 0:
            raise UserError(f"{key} must be positive, not {options[key]}")
    check_trim_vocabulary(options.get("trim_vocabulary"))
    check_rerank(options.get("rerank"))
    if int(options.get("num_return_sequences", 1)) != 1:
        raise UserError("num_return_sequences must be 1 for captioning (one caption per input)")
    return options


class Captioner(Predictor):
    """Writes captions (titles, descriptions...) from product photos with a trained captioner.

    Example::

        captioner = multimodal.load("captioner.ckpt")
        captioner.caption(["a.jpg"], prompt="What is the material?", num_beams=4)
    """

    task_name: ClassVar[str] = "multimodal.captioning.captioner.ProductCaptioner"
    require_image: ClassVar[bool] = True
    prompt: str | None = None

    def required_columns(self) -> list[str]:
        return [self.columns.image, *self.model.prompt_columns]

    def collate(self) -> Collate:
        return Collate(self.model.text_fn(self.prompt))

    def configure(self, prompt: str | None = None, seed: int = 0, **generation: Any) -> None:
        """Set the prompt, the sampling seed and ``generate`` options (``num_beams``, ``do_sample``,
        ``max_new_tokens``, ``top_p``...) of the following predictions."""
        self.prompt = prompt
        self.model.predict_options = check_generation(dict(generation))
        self.model.predict_seed = seed

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
        self.configure(prompt, seed, **generation)
        return frame(self.run(inputs))

    predict = caption
