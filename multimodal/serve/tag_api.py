"""``POST /tag``: the tagger over HTTP; each request's ``top_k`` travels with its call (the shared tagger is
never written to by a request)."""

# No ``from __future__ import annotations``, as in :mod:`multimodal.serve.task_api` (LitServe reads annotations).
from typing import Any

from multimodal.serve.requests import Problem, fields, integer, text
from multimodal.serve.task_api import TaskAPI, plain


class TagAPI(TaskAPI):
    """``POST /tag``: a product's photos (``image``, repeated for several) and/or the texts the tagger reads (e.g.
    ``title``) -> the batch output's fields: per attribute its label, ``<attribute>_score`` and, for ``top_k`` > 1,
    ``<attribute>_top``; per tag column the tags and ``<column>_scores``; ``skipped_photos`` when some were not
    read."""

    path = "/tag"
    # The tagger's photo tower is fastest per item at 8 photos a pass on a CPU (2-core box: 17.7 ms at 8, 20.8 ms at
    # 32, 27.6 ms at 64: larger batches' activations leave the caches); a dynamic batch of 32 runs as 4 passes.
    cpu_forward_batch = 8

    def load(self, device: str) -> None:
        self.tagger = self.python_api(device)

    def decode(self, payload: dict[str, Any]) -> dict[str, Any]:
        columns = self.tagger.columns
        fields(payload, {"image", "image_url", "id", "top_k", *columns.texts})
        record: dict[str, Any] = {c: text(payload, c) for c in columns.texts}
        photos = self.photos(payload)
        if not photos and not any(v and v.strip() for v in record.values()):
            raise Problem(f"send a photo (field 'image') or a text (field(s) {list(columns.texts)})")
        record[columns.image] = photos
        largest = max((len(v) for v in self.tagger.classes.values()), default=1)
        return {"record": record, "id": text(payload, "id"), "top_k": integer(payload, "top_k", 1, 1, largest)}

    def answer(self, items: list[dict[str, Any]]) -> list[Any]:
        columns = self.tagger.columns
        records = [{**item["record"], columns.id: str(i)} for i, item in enumerate(items)]  # ids unique per batch
        out: list[Any] = []
        for item, row in zip(items, self.tagger.with_top_k(max(i["top_k"] for i in items)).run(records), strict=True):
            if "error" in row:
                out.append(Problem(str(row["error"])))
                continue
            row = {k: plain(v) for k, v in row.items() if k != "id"}
            for attribute in self.tagger.classes:  # the batch ran at its largest top_k: cut to this request's
                if item["top_k"] > 1:
                    row[f"{attribute}_top"] = row[f"{attribute}_top"][: item["top_k"]]
                else:
                    row.pop(f"{attribute}_top", None)
            out.append({"id": item["id"], **row} if item["id"] is not None else row)
        return out
