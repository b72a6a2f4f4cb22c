"""``POST /words``: the word counter over HTTP (``multimodal serve --word_counter CKPT``)."""

# No ``from __future__ import annotations``, as in :mod:`multimodal.serve.task_api` (LitServe reads annotations).
from typing import Any

from multimodal.serve.requests import Problem, fields, image, text
from multimodal.serve.task_api import TaskAPI


class WordsAPI(TaskAPI):
    """``POST /words``: a photo (``image``) and an optional ``id`` -> ``{"id", "words"}``."""

    path = "/words"

    def load(self, device: str) -> None:
        from toy_task.predictor import WordCounts

        self.counter = WordCounts.load(self.checkpoint, device=device, batch_size=self.forward_batch_size)

    def decode(self, payload: dict[str, Any]) -> dict[str, Any]:
        fields(payload, {"image", "id"})
        photo = image(payload, "image", self.max_pixels)
        if photo is None:
            raise Problem("send a photo (field 'image')")
        return {"photo": photo, "id": text(payload, "id")}

    def answer(self, items: list[dict[str, Any]]) -> list[Any]:
        columns = self.counter.columns
        records = [{columns.id: str(i), columns.image: item["photo"]} for i, item in enumerate(items)]
        rows = self.counter.run(records)
        out: list[Any] = []
        for item, row in zip(items, rows, strict=True):
            if "error" in row:
                out.append(Problem(str(row["error"])))
            else:  # the request's id, when it gave one (as /tag answers)
                out.append({"words": row["words"]} if item["id"] is None else {"id": item["id"], "words": row["words"]})
        return out
