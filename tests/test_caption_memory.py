"""Retrieval-augmented captioning: the caption memory's neighbours and the prompt budget."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from encoders.types import Features
from multimodal.captioning.settings import RetrievalSettings
from multimodal.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY_CAPTION = ROOT / "configs" / "captioning" / "tiny.yaml"
SAMPLE = ROOT / "examples" / "fashion-products"


def _features(tokens: torch.Tensor) -> Features:
    return Features(tokens=tokens, mask=torch.ones(tokens.shape[:2], dtype=torch.bool), pooled=tokens.mean(1))


def test_caption_memory_finds_the_closest_photos_and_leaves_a_query_out() -> None:
    from multimodal.captioning.retrieval import CaptionMemory, raw_keys

    g = torch.Generator().manual_seed(0)
    catalogue = torch.randn(6, 16, 8, generator=g)  # 6 photos, a 4 x 4 grid of width 8
    titles, ids = [f"title {i}" for i in range(6)], [f"p{i}" for i in range(6)]
    memory = CaptionMemory.from_features(_features(catalogue), titles, ids)
    # Keys: the grid average-pooled to 2 x 2 (row-major), flattened.
    grid = catalogue.view(6, 4, 4, 8)
    top_left = grid[:, :2, :2].mean((1, 2))
    assert torch.allclose(raw_keys(_features(catalogue)).view(6, 8, 4)[:, :, 0], top_left, atol=1e-6)
    # A slightly changed copy of photo 3 finds photo 3 first; the order is the brute-force cosine order.
    query = catalogue[3:4] + 0.01 * torch.randn(1, 16, 8, generator=g)
    centre = raw_keys(_features(catalogue)).mean(0)
    keys = torch.nn.functional.normalize(raw_keys(_features(catalogue)) - centre, dim=-1)
    q = torch.nn.functional.normalize(raw_keys(_features(query)) - centre, dim=-1)
    expected = (q @ keys.T).argsort(descending=True)[0, :3].tolist()
    assert memory.neighbours(_features(query), 3) == [expected]
    assert expected[0] == 3
    # Catalogue products asking about themselves never get their own title back.
    rows = memory.neighbours(_features(catalogue), 2, exclude=ids)
    assert all(len(r) == 2 and i not in r for i, r in enumerate(rows))
    assert memory.prompts(_features(query), 2) == [f"title {expected[0]}; title {expected[1]}"]
    # A checkpoint's copy (float16 keys) answers the same.
    again = CaptionMemory.from_state(memory.state())
    assert again.neighbours(_features(query), 3) == [expected]
    assert again.ids == ids and again.titles == titles
    # No square grid (e.g. a [CLS] token first): the pooled vector is the key.
    odd = _features(torch.randn(2, 5, 8, generator=g))
    assert torch.equal(raw_keys(odd), odd.pooled)


def test_caption_memory_bad_inputs_are_one_line_errors() -> None:
    from multimodal.captioning.retrieval import CaptionMemory

    memory = CaptionMemory.from_features(_features(torch.randn(3, 16, 8)), ["a", "b", "c"])
    with pytest.raises(UserError, match="width 8 do not match the memory's 32"):
        memory.neighbours(_features(torch.randn(1, 3, 8)), 1)
    with pytest.raises(UserError, match="k must be at least 1"):
        memory.neighbours(_features(torch.randn(1, 16, 8)), 0)
    with pytest.raises(UserError, match="3 photos but 2 titles"):
        CaptionMemory.from_features(_features(torch.randn(3, 16, 8)), ["a", "b"])
    with pytest.raises(UserError, match="not one this version wrote"):
        CaptionMemory.from_state({"titles": ["a"]})


def test_prompt_length_caps_the_prompt_and_leaves_the_target_its_room() -> None:
    from encoders.language_model import MiniLMLanguageModel
    from multimodal.captioning.text import CaptionText
    from multimodal.data.dataset import IGNORE_INDEX

    lm = MiniLMLanguageModel(random_init=True, config_overrides={"hidden_size": 32, "num_hidden_layers": 1,
                             "num_attention_heads": 2, "intermediate_size": 64})  # fmt: skip
    similar = "nike men black t-shirt; puma women white shoe; adidas unisex blue bag"
    target = "nike men white t-shirt"
    fn = CaptionText(lm.tokenizer, "title", ["similar"], "", 10 + 4, lm.bos_id, lm.eos_id, lm.pad_id, prompt_length=4)
    out = fn({"title": [target], "similar": [similar]})
    prompt = lm.tokenizer(similar, add_special_tokens=False)["input_ids"][:4]
    tgt = lm.tokenizer(target, add_special_tokens=False)["input_ids"][:8]
    assert out["input_ids"][0].tolist() == [lm.bos_id, *prompt, *tgt, lm.eos_id]
    assert out["caption_labels"][0].tolist() == [IGNORE_INDEX] * 5 + [*tgt, lm.eos_id]
    assert out["prompt_ids"][0].tolist() == [lm.bos_id, *prompt]
    # prompt_end closes a non-empty prompt after truncation (where the target starts); an empty prompt stays empty.
    colon = lm.tokenizer(" :", add_special_tokens=False)["input_ids"]
    fn = CaptionText(lm.tokenizer, "title", ["similar"], "", 10 + 4, lm.bos_id, lm.eos_id, lm.pad_id, prompt_length=4,
                     prompt_end=" :")  # fmt: skip
    out = fn({"title": [target, target], "similar": [similar, None]})
    assert out["prompt_ids"][0].tolist() == [lm.bos_id, *prompt, *colon]
    assert out["input_ids"][1].tolist()[: 1 + len(tgt)] == [lm.bos_id, *tgt]


def test_retrieval_captioner_fits_saves_its_memory_and_captions_from_the_checkpoint(tmp_path: Path) -> None:
    import multimodal
    from multimodal.cli import main

    main(["fit", "--config", str(TINY_CAPTION), "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
          "--trainer.num_sanity_val_steps", "0", "--trainer.enable_checkpointing", "true",
          "--trainer.default_root_dir", str(tmp_path),
          "--model.init_args.retrieval", "{k: 2, tokens: 16}"])  # fmt: skip
    (ckpt,) = list(tmp_path.rglob("*.ckpt"))
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)["caption_memory"]
    sample = pd.read_csv(SAMPLE / "metadata.csv", dtype=str, keep_default_na=False)
    assert 0 < len(stored["ids"]) < len(sample) and set(stored["ids"]) <= set(sample["id"])  # the training split
    assert stored["keys"].dtype == torch.float16 and len(stored["titles"]) == len(stored["ids"])

    captioner = multimodal.load(ckpt)
    model = captioner.model
    assert model.retrieval == RetrievalSettings(k=2, tokens=16) and model.memory is not None
    assert model.memory.ids == stored["ids"]
    # A training product's prompt holds two other products' titles, never its own.
    from multimodal.data.datamodule import ProductDataModule

    dm = ProductDataModule(str(SAMPLE / "metadata.csv"), str(SAMPLE / "images"), text_columns=["title"],
                           batch_size=4, num_workers=0)  # fmt: skip
    dm.attach(model)
    batch = next(iter(dm.loader("train")))
    vision = model.encode_images(batch["pixel_values"], batch["has_image"])
    again = model.with_neighbours(batch, vision)
    tok = model.lm.tokenizer
    rows = model.memory.neighbours(vision, 2, exclude=batch["ids"])
    for i, item in enumerate(batch["ids"]):
        prompt = tok.decode(again["prompt_ids"][i], skip_special_tokens=True)
        own = model.memory.titles[model.memory.ids.index(item)] if item in model.memory.ids else None
        first = tok.decode(tok(model.memory.titles[rows[i][0]], add_special_tokens=False)["input_ids"])
        assert prompt.startswith(first) and item not in [model.memory.ids[r] for r in rows[i]]
        assert own is None or model.memory.ids.index(item) not in rows[i]
    # Captions from the checkpoint alone, the same twice.
    photos = [str(SAMPLE / "images" / name) for name in sorted(sample["image"])[:3]]
    first_run = captioner.caption(photos, max_new_tokens=5)
    assert first_run["caption"].tolist() == multimodal.load(ckpt).caption(photos, max_new_tokens=5)["caption"].tolist()


def test_retrieval_settings_and_a_missing_memory_are_user_errors() -> None:

    assert RetrievalSettings.parse({"k": 4}) == RetrievalSettings(k=4, tokens=48)
    for bad, match in (({"k": 0}, "retrieval.k=0"), ({"n": 3}, "keys k and tokens"), (3, "keys k and tokens")):
        with pytest.raises(UserError, match=match):
            RetrievalSettings.parse(bad)
