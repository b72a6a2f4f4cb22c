"""Questions about a product photo as a captioning mode: the training mix of questions and titles, the prompts at
generation (eager and torch-free build the same), and one-line errors for questions a captioner was not trained to
answer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import SAMPLE_IMAGES, cli_error, fit_tiny

from multimodal.errors import UserError

TEMPLATES = {"baseColour": ["What colour is it?", "Which colour?"], "gender": ["Is it for men or women?"]}
QUESTIONS = {"templates": TEMPLATES, "share": 0.5, "context_columns": ["title"], "context_dropout": 0.5}
COLUMNS = '["title", "baseColour", "gender"]'


@pytest.fixture(scope="module")
def answerer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny captioner trained a few steps with questions about colour and gender mixed with titles."""
    import json

    from conftest import SAMPLE_MANIFEST

    root = tmp_path_factory.mktemp("questions")
    options = ["--model.init_args.questions", json.dumps(QUESTIONS), "--data.init_args.text_columns", COLUMNS]
    return fit_tiny("captioner", root, SAMPLE_MANIFEST, SAMPLE_IMAGES, 3, *options)


def test_settings_parse_and_refuse_with_one_line() -> None:
    from multimodal.captioning.questions import QuestionSettings

    settings = QuestionSettings.parse(QUESTIONS)
    assert settings is not None and settings.column_of("what COLOUR is it") == "baseColour"
    assert settings.column_of("What is the material?") is None
    assert settings.columns == ["baseColour", "gender", "title"]
    bad_values = [
        ({"templates": {}}, "templates"),
        ({"templates": {"c": "What?"}}, "list of questions"),
        ({"templates": TEMPLATES, "share": 2}, "share"),
        ({"templates": TEMPLATES, "other": 1}, "mapping"),
        ({"templates": {"a": ["Which?"], "b": ["which"]}}, "asks for both"),
    ]
    for bad, words in bad_values:
        with pytest.raises(UserError, match=words):
            QuestionSettings.parse(bad)


def test_the_training_batch_adds_the_questions_asked_and_keeps_every_title(answerer: Path) -> None:
    import multimodal
    from multimodal.captioning.asking import extended_batch
    from multimodal.captioning.questions import QuestionSettings

    model = multimodal.load(answerer).model
    text = model.caption_text()
    texts = {"title": ["Red Shirt", "Blue Jeans", None], "baseColour": ["Red", "Blue", "Black"],
             "gender": ["Men", None, "Women"]}  # fmt: skip
    plain = text(texts)
    none, items = extended_batch(text, QuestionSettings.parse({**QUESTIONS, "share": 0.0}), texts, torch.rand(3, 4))
    assert torch.equal(none["input_ids"], plain["input_ids"]) and items == [0, 1, 2]
    everyone = QuestionSettings.parse({**QUESTIONS, "share": 1.0, "context_dropout": 1.0})
    asked, items = extended_batch(text, everyone, texts, torch.tensor([[0.0, 0.0, 0.9, 0.3]] * 3))
    tok = model.lm.tokenizer
    assert items == [0, 1, 2, 0, 1, 2]  # every title kept, then one question per item, on the same photo
    assert asked["references"] == ["Red Shirt", "Blue Jeans", None, "Red", "Blue", "Black"]
    assert torch.equal(asked["caption_labels"][:3, : plain["caption_labels"].shape[1]], plain["caption_labels"])
    first = asked["input_ids"][3][asked["attention_mask"][3].bool()].tolist()
    assert tok.decode(first[1:]).startswith("which colour?")  # no context: dropped; the second phrasing (0.9)
    labels = asked["caption_labels"][3]
    assert tok.decode(labels[labels >= 0].tolist()[:-1]) == "red"  # the loss is on the answer only
    kept, _ = extended_batch(text, QuestionSettings.parse({**QUESTIONS, "share": 1.0, "context_dropout": 0.0}), texts,
                             torch.tensor([[0.0, 0.6, 0.0, 0.3]] * 3))  # fmt: skip
    assert kept["references"][3:] == ["Men", "Blue", "Women"]
    ids = kept["prompt_ids"][3][kept["prompt_mask"][3].bool()].tolist()
    assert tok.decode(ids[1:]) == "red shirt. is it for men or women?"
    draws = torch.tensor([[0.2, 0.0, 0.0, 0.0], [0.7, 0.0, 0.0, 0.0], [0.4, 0.0, 0.0, 0.0]])
    half, items = extended_batch(text, QuestionSettings.parse({**QUESTIONS, "share": 0.5}), texts, draws)
    assert items == [0, 1, 2, 0, 2]  # the items drawn under the share


def test_a_trained_question_is_answered_and_others_are_refused(answerer: Path, trained, capsys) -> None:
    import multimodal

    captioner = multimodal.load(answerer)
    photos = [str(SAMPLE_IMAGES / name) for name in sorted(p.name for p in SAMPLE_IMAGES.iterdir())[:2]]
    out = captioner.caption(photos, prompt="what colour is it", max_new_tokens=3)
    assert list(out["id"]) == photos and all(isinstance(c, str) for c in out["caption"])
    batch = captioner.model.text_fn("Which colour?")({"title": ["Red Shirt"], "baseColour": ["Red"]})
    assert batch["asked"] == "baseColour" and batch["references"] == ["Red"]
    with pytest.raises(UserError, match=r"not trained to answer 'What is the material\?'; it answers 'What colour"):
        captioner.caption(photos, prompt="What is the material?")
    assert captioner.caption(photos[:1], prompt="describe", max_new_tokens=2)["caption"].notna().all()
    untrained = multimodal.load(trained["captioner"])
    with pytest.raises(UserError, match="not to answer questions"):
        untrained.caption(photos, prompt="What colour is it?")
    error = cli_error(["caption", "--ckpt_path", str(trained["captioner"]), "--input", photos[0], "--out",
                       str(answerer.parent / "x.jsonl"), "--prompt", "What colour is it?"], capsys)  # fmt: skip
    assert "not to answer questions" in error and "\n" not in error.strip()


def test_question_data_columns_are_checked_at_fit(tmp_path: Path, capsys) -> None:
    from conftest import SAMPLE_MANIFEST, TINY_CONFIGS

    error = cli_error(["fit", "--config", str(TINY_CONFIGS["captioner"]), "--data.init_args.manifest",
                       str(SAMPLE_MANIFEST), "--data.init_args.image_root", str(SAMPLE_IMAGES),
                       "--model.init_args.questions", '{"templates": {"baseColour": ["What colour is it?"]}}',
                       "--trainer.max_steps", "1", "--trainer.default_root_dir", str(tmp_path)], capsys)  # fmt: skip
    assert "baseColour" in error and "data.text_columns" in error


def test_the_onnx_runtime_asks_the_same_question(answerer: Path, tmp_path: Path) -> None:
    """The torch-free captioner builds the eager prompt of a trained question (context, then the question), and
    refuses an untrained one the same way."""
    import multimodal
    from multimodal.lite.captioning import LiteCaptioner
    from multimodal.onnx.export import export_model

    folder = tmp_path / "answerer_onnx"
    export_model(answerer, folder, progress=False)
    lite = LiteCaptioner(folder)
    items = [{"title": "Red Shirt", "baseColour": "Red"}, {"title": None}]
    eager = multimodal.load(answerer).model.text_fn("What colour is it?")(
        {"title": ["Red Shirt", None], "baseColour": ["Red", None]}
    )
    built = lite.prompts(items, "What colour is it?")
    assert built["prompt_ids"].tolist() == eager["prompt_ids"].tolist() and built["asked"]
    with pytest.raises(UserError, match="not trained to answer"):
        lite.prompts(items, "What is the material?")


def test_the_service_answers_a_trained_question_and_refuses_others(answerer: Path, tmp_path: Path) -> None:
    """``/caption`` with a trained question (and the title as context) answers as the Python API does; an
    untrained question is that request's 400 naming the questions the model answers."""
    import httpx
    from test_serve import Service, photo

    import multimodal

    name = sorted(p.name for p in SAMPLE_IMAGES.iterdir())[0]
    product = {"id": "a", "image": str(SAMPLE_IMAGES / name), "title": "Red Shirt"}
    expected = multimodal.load(answerer).caption([product], prompt="Which colour?", max_new_tokens=4)
    svc = Service(["--captioner", answerer], tmp_path / "serve.log")
    try:
        form = {"prompt": "Which colour?", "title": "Red Shirt", "max_new_tokens": "4"}
        asked = httpx.post(svc.url + "/caption", files={"image": photo(name)}, data=form, timeout=60)
        assert asked.status_code == 200 and asked.json()["caption"] == expected["caption"][0], asked.text
        refused = httpx.post(svc.url + "/caption", files={"image": photo(name)},
                             data={"prompt": "What is the material?"}, timeout=60)  # fmt: skip
        assert refused.status_code == 400 and "not trained to answer" in refused.json()["detail"], refused.text
    finally:
        assert svc.stop() == 0, svc.tail()
