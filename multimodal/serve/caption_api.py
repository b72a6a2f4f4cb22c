"""``POST /caption``: the captioner over HTTP, each request's options passed with its call."""

# No ``from __future__ import annotations``, as in :mod:`multimodal.serve.task_api` (LitServe reads annotations).
from typing import Any

from multimodal.errors import UserError
from multimodal.serve.requests import Problem, fields, flag, integer, number, text
from multimodal.serve.task_api import TaskAPI, plain

# generate options a caption request may set, with their types and bounds (a service protects its workers)
CAPTION_OPTIONS: dict[str, tuple[str, int, int]] = {
    "num_beams": ("int", 1, 16),
    "max_new_tokens": ("int", 1, 256),
    "min_new_tokens": ("int", 0, 256),
    "no_repeat_ngram_size": ("int", 0, 16),
    "do_sample": ("bool", 0, 0),
    "temperature": ("float", 0, 0),
    "top_p": ("float", 0, 0),
    "repetition_penalty": ("float", 0, 0),
    "length_penalty": ("float", 0, 0),
    "rerank": ("bool", 0, 0),
}


class CaptionAPI(TaskAPI):
    """``POST /caption``: a photo (``image``), optional ``prompt``, ``seed`` and generate options -> ``caption``
    and ``score``. Requests of one dynamic batch with the same options are generated together."""

    path = "/caption"

    def load(self, device: str) -> None:
        self.captioner = self.python_api(device)

    def decode(self, payload: dict[str, Any]) -> dict[str, Any]:
        from multimodal.captioning.settings import check_generation

        model = self.captioner.model
        texts = [*model.prompt_columns, *(model.questions.context_columns if model.questions else ())]
        fields(payload, {"image", "image_url", "id", "prompt", "seed", *CAPTION_OPTIONS, *texts})
        photos = self.photos(payload)
        if not photos:
            raise Problem("send a photo to caption (multipart field 'image', repeated for several)")
        options: dict[str, Any] = {}
        for key, (kind, low, high) in CAPTION_OPTIONS.items():
            if key not in payload:
                continue
            if kind == "int":
                options[key] = integer(payload, key, 0, low, high)
            elif kind == "bool":
                options[key] = flag(payload, key)
            else:
                options[key] = number(payload, key)
        if options.get("rerank") and model.memory is None:
            raise Problem("rerank: this captioner holds no caption memory (fit with model.rerank or model.retrieval)")
        record = {self.captioner.columns.image: photos, **{c: text(payload, c) for c in texts}}
        prompt = text(payload, "prompt")
        try:
            self.captioner.with_options(prompt)  # a question the model was not trained to answer: this request's 400
        except UserError as err:
            raise Problem(str(err)) from None
        seed = integer(payload, "seed", 0, 0)
        return {"record": record, "id": text(payload, "id"), "prompt": prompt, "seed": seed,
                "options": check_generation(options)}  # fmt: skip

    def answer(self, items: list[dict[str, Any]]) -> list[Any]:
        groups: dict[tuple, list[int]] = {}
        for i, item in enumerate(items):
            key = (item["prompt"], item["seed"], tuple(sorted(item["options"].items())))
            groups.setdefault(key, []).append(i)
        out: list[Any] = [None] * len(items)
        column = self.captioner.columns.id
        for (prompt, seed, options), members in groups.items():
            records = [{**items[i]["record"], column: str(n)} for n, i in enumerate(members)]
            call = self.captioner.with_options(prompt, seed, **dict(options))  # a per-call API; the model is shared
            for i, row in zip(members, call.run(records), strict=True):
                if "error" in row:
                    out[i] = Problem(str(row["error"]))
                    continue
                answer = {"caption": row["caption"], "score": plain(row["score"])}
                out[i] = {"id": items[i]["id"], **answer} if items[i]["id"] is not None else answer
        return out
