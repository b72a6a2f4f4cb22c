"""Per-call options travel with the call: the tagging API (and the service, which calls it per batch) never writes
its ``top_k`` to the shared tagger."""

from __future__ import annotations

from pathlib import Path

from conftest import SAMPLE_IMAGES


def test_top_k_is_bound_to_the_call_without_touching_the_tagger(trained: dict[str, Path]) -> None:
    import multimodal

    tagger = multimodal.load(trained["tagger"])
    photos = sorted(SAMPLE_IMAGES.glob("*.jpg"))[:3]
    texts = dict.fromkeys(tagger.columns.texts, "Black running shoes")
    records = [{tagger.columns.id: str(i), tagger.columns.image: str(p), **texts} for i, p in enumerate(photos)]
    records += [{tagger.columns.id: "gone", tagger.columns.image: str(SAMPLE_IMAGES / "missing.jpg"), **texts}]
    expected = tagger.predict(records, top_k=3).to_dict("records")
    assert tagger.top_k == 1  # predict(top_k=3) left the shared tagger as it was
    rows = tagger.with_top_k(3).run(records)
    assert tagger.top_k == 1
    assert [r["id"] for r in rows] == [r["id"] for r in expected]
    attribute = next(iter(tagger.classes))
    assert [len(r[f"{attribute}_top"]) for r in rows[:3]] == [min(3, len(tagger.classes[attribute]))] * 3
    assert rows[:3] == [{k: v for k, v in r.items() if k != "error"} for r in expected[:3]]
    assert "error" in rows[3]
    assert "_top" not in " ".join(tagger.run(records[:1])[0])  # the shared tagger still decodes one label
