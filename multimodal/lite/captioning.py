"""The captioner without torch: its export's ``caption_vision`` graph and the NumPy decoding loop over its
``decoder_first`` / ``decoder_step`` graphs (:mod:`multimodal.onnx.decoding`), with consensus reranking on the
exported caption memory; the Python API (``caption`` / ``run`` / ``with_options``) and ``multimodal caption``'s rows
job, as :mod:`multimodal.captioning.predictor` and :mod:`multimodal.captioning.job` write them."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from multimodal.captioning.questions import QuestionSettings, check_question
from multimodal.captioning.settings import RerankSettings
from multimodal.captioning.settings import check_generation as check_options
from multimodal.captioning.task import TASK
from multimodal.errors import UserError
from multimodal.lite.base import ArrayDataset, LiteModel, Predictor, Row, collate, frame
from multimodal.onnx.decoding import CaptionDecoder, DecodingOptions
from multimodal.onnx.preprocess import load_tokenizer

VISION_ONLY = ("tokens", "pooled")  # caption_vision outputs the reranker reads; the decoder reads the others
PROMPT_KEYS = ("prompt", "prompt_columns", "prompt_length", "prompt_end", "separator", "bos_id", "pad_id")


def captioner_settings(captioner: Any) -> dict[str, Any]:
    """At export (``OnnxParts.settings``): how the eager text function builds a caption prompt, as numbers."""
    fn = captioner.text_fn()
    return {
        "prompt": fn.prompt,
        "prompt_columns": list(captioner.prompt_columns),
        "prompt_length": int(fn.prompt_length),
        "prompt_end": [int(i) for i in fn.prompt_end],
        "separator": fn.separator,
        "bos_id": int(fn.bos_id),
        "pad_id": int(fn.pad_id),
        "retrieval": captioner.retrieval is not None,
        "questions": captioner.questions.state() if captioner.questions is not None else None,
    }


def left_pad(rows: list[list[int]], value: int) -> np.ndarray:
    """Lists of ids as a left-padded ``(B, T)`` int64 array."""
    width = max((len(r) for r in rows), default=0)
    return np.asarray([[value] * (width - len(r)) + r for r in rows], dtype=np.int64).reshape(len(rows), width)


class LiteCaptioner(LiteModel):
    """A :class:`~multimodal.captioning.captioner.ProductCaptioner` export: ``prompts`` and ``predict_step``."""

    def __init__(self, folder: str | Path, int8: bool = False) -> None:
        super().__init__(folder, int8)
        missing = [k for k in PROMPT_KEYS if k not in self.settings]
        if missing:
            raise UserError(f"{self.export.folder / 'model.json'} records no caption prompt settings ({missing[0]}): "
                            "export the checkpoint again with `multimodal export-model`")  # fmt: skip
        if self.settings.get("retrieval"):
            from multimodal.lite import FULL_INSTALL

            raise UserError(f"{folder}: a retrieval captioner's prompts need the full install ({FULL_INSTALL})")
        self.questions = QuestionSettings.parse(self.settings.get("questions"))  # as the eager captioner's
        self.decoder = CaptionDecoder.from_folder(folder, self.info, int8=int8)
        self.decoding: dict[str, Any] = self.info["decoding"]
        self.rerank = RerankSettings.parse(self.decoding.get("rerank"), "model.rerank")
        self._memory: Any = None
        if self.pre.text_settings is None:
            raise UserError(f"{folder}: its tokenizer has no tokenizers JSON; caption with the full install")
        self.tokenizer = load_tokenizer(self.export.folder / self.pre.text_settings["tokenizer"])
        self.tokenizer.no_padding()  # the eager prompt call neither pads nor truncates (it truncates itself)
        self.tokenizer.no_truncation()
        self.export.session("caption_vision")  # a graph that cannot be read, now

    @property
    def prompt_columns(self) -> list[str]:
        """The product text columns the prompt is built from (as the eager captioner's ``prompt_columns``)."""
        return list(self.settings["prompt_columns"])

    @property
    def memory(self) -> Any:
        """The exported caption memory (:class:`~multimodal.onnx.caption_rerank.MemoryIndex`), loaded when first
        used; None when the export has none."""
        if self._memory is None and self.decoding.get("memory"):
            from multimodal.onnx.caption_rerank import MemoryIndex

            self._memory = MemoryIndex(self.export.folder / self.decoding["memory"])
        return self._memory

    def prompts(self, texts: Sequence[Mapping[str, str | None]], prompt: str | None) -> dict[str, np.ndarray]:
        """``prompt_ids`` / ``prompt_mask (B, T)`` (left-padded ``[bos] prompt``) of products' texts, as
        :class:`multimodal.captioning.text.CaptionText` builds them; ``prompt``: the fixed text (None: the
        trained one)."""
        s = self.settings
        fixed = s["prompt"] if prompt is None else prompt
        questions = self.questions
        asked = check_question(prompt, questions, s["prompt"]) is not None  # a trained question: context + it
        rows = []
        for item in texts:
            parts = [fixed or None] + [item.get(c) for c in s["prompt_columns"]]
            text = questions.prompt(fixed, item) if asked and questions else s["separator"].join(p for p in parts if p)
            ids = self.tokenizer.encode(text, add_special_tokens=False).ids[: s["prompt_length"]] if text else []
            rows.append([s["bos_id"], *ids, *(s["prompt_end"] if ids else [])])
        out = {"prompt_ids": left_pad(rows, s["pad_id"]), "prompt_mask": left_pad([[1] * len(r) for r in rows], 0)}
        return out | ({"asked": True} if asked else {})  # an answer is never reranked against titles

    def predict_step(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Captions and scores of a batch with the ``generation`` options it carries (rerank included)."""
        if not batch["ids"]:
            return {"ids": [], "captions": [], "scores": []}
        generation = dict(batch.get("generation") or {})
        rerank = RerankSettings.for_call(generation.pop("rerank", None), self.rerank)
        rerank = None if batch.get("asked") else rerank  # answers are not titles: no consensus of titles
        if rerank is not None:
            if self.memory is None:
                raise UserError("rerank: this captioner's export holds no caption memory to rerank against")
            from multimodal.onnx.caption_rerank import widen

            generation = widen(generation, rerank.candidates)
        vision = self.export.run("caption_vision", batch)
        conditioning = {k: v for k, v in vision.items() if k not in VISION_ONLY}
        out = self.decoder.generate(conditioning, batch["prompt_ids"], batch["prompt_mask"], **generation)
        texts = self.texts(out.tokens)
        scores = out.scores
        if rerank is not None:
            from multimodal.onnx.caption_rerank import pick

            settings = {"k": rerank.k, "weight": rerank.weight}
            vectors = {k: vision[k] for k in VISION_ONLY}
            texts, scores = pick(self.memory, settings, vectors, texts, scores, batch["ids"], batch["has_image"])
        return {"ids": batch["ids"], "captions": texts, "scores": scores}

    def texts(self, tokens: np.ndarray) -> list[str]:
        """New token ids ``(B, L)`` as text, as the eager tokenizer's ``batch_decode`` (special tokens skipped)."""
        return [t.strip() for t in self.tokenizer.decode_batch(tokens.tolist(), skip_special_tokens=True)]


def check_generation(defaults: Mapping[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """A call's generation options, checked as the eager captioner checks them and against what the decoding loop
    follows (the others are one-line errors)."""
    check_options(options)  # as the eager captioner checks them
    DecodingOptions.parse(dict(defaults), {k: v for k, v in options.items() if k != "rerank"})
    return options


class Captioner(Predictor):
    """:class:`multimodal.captioning.predictor.Captioner` without torch: the same methods, inputs and rows
    (greedy and beam search; sampling needs the full install)."""

    task_name: ClassVar[str] = TASK.model
    require_image: ClassVar[bool] = True
    prompt: str | None = None
    seed: int = 0  # kept for the same signature and job record: the loop never samples
    generation: Mapping[str, Any] = MappingProxyType({})

    def required_columns(self) -> list[str]:
        return [self.columns.image, *self.model.prompt_columns]

    def with_options(self, prompt: str | None = None, seed: int = 0, **generation: Any) -> Captioner:
        """This API for one call: its prompt and ``generate`` options (``max_new_tokens``, ``num_beams``,
        ``min_new_tokens``, ``length_penalty``, ``no_repeat_ngram_size``, ``early_stopping``,
        ``trim_vocabulary``, ``rerank``); a new object sharing the model."""
        bound = copy.copy(self)
        options = check_generation(self.model.decoding.get("generation") or {}, dict(generation))
        check_question(prompt, self.model.questions, self.model.settings["prompt"])
        bound.prompt, bound.seed, bound.generation = prompt, seed, options
        return bound

    def batches(self, dataset: ArrayDataset, positions: Sequence[int]) -> Iterator[dict[str, Any]]:
        """The batches of ``dataset`` at ``positions`` with their prompts and this call's options."""
        for start in range(0, len(positions), self.batch_size):
            items = dataset.items(positions[start : start + self.batch_size])
            batch = collate(items, self.model.pre)
            texts = [it["texts"] for it in items if "error" not in it]
            if texts:
                batch |= self.model.prompts(texts, self.prompt)
            batch["generation"] = dict(self.generation)  # a copy per batch: nothing shared
            yield batch

    def rows(self, prediction: dict[str, Any]) -> list[Row]:
        return [
            {"id": i, "caption": c, "score": s}
            for i, c, s in zip(prediction["ids"], prediction["captions"], prediction["scores"], strict=True)
        ]

    def caption(self, inputs: Any, prompt: str | None = None, seed: int = 0, **generation: Any) -> Any:
        """One row per input: ``id``, ``caption`` and ``score``; ``error`` for inputs without a readable photo."""
        return frame(self.with_options(prompt, seed, **generation).run(inputs))

    predict = caption


def caption_rows(job: Any) -> dict[str, Any] | None:
    """``multimodal caption`` on a captioner export: one row with the caption of each input row's photo
    (:func:`multimodal.captioning.job.caption_rows`, run by :func:`multimodal.lite.jobs.run_blocks`)."""
    from multimodal.captioning.job import captioner_job

    return captioner_job(job, Captioner(job.loaded, batch_size=job.options.batch_size))


MODEL, API, JOB = LiteCaptioner, Captioner, caption_rows  # what the task contract's ``lite`` module declares
