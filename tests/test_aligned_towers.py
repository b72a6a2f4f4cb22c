"""A pretrained pair stays a pair: open_clip and Hugging Face CLIP / SigLIP towers built from one model give a
retriever whose similarities, before any training, are the model's own; and the fashion configs parse offline."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from conftest import ROOT, SAMPLE_IMAGES, SAMPLE_MANIFEST
from torch.nn import functional as F

from encoders.hf_clip import HFClipTextEncoder, HFClipVisionEncoder
from encoders.open_clip_encoder import OpenClipVisionEncoder
from encoders.open_clip_loading import check_model
from encoders.open_clip_text import OpenClipTextEncoder
from multimodal.data.images import load_image
from multimodal.search.aligned import align_projections
from multimodal.search.retriever import ProductRetriever
from multimodal.tagging.zero_shot import DEFAULT_TEMPLATES, ZeroShotTagger, prompts

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
NAME = "test-aligned-tiny-clip"
IDS = ["10397", "16771", "1636", "3461", "1580", "1595"]  # two watches, two shoes, a swimsuit, a T-shirt
VOCABULARIES = {"colour": ["black", "white", "red", "blue"], "article": ["watch", "shoe", "swimsuit", "shirt"]}


@pytest.fixture(scope="module")
def titles() -> list[str]:
    df = pd.read_csv(SAMPLE_MANIFEST, dtype=str).set_index("id")
    return [df.loc[i, "title"] for i in IDS]


def photos(transform: Any) -> torch.Tensor:
    return torch.stack([transform(load_image(SAMPLE_IMAGES / f"{i}.jpg")) for i in IDS])  # (B, 3, H, W)


def text_embedder(retriever: ProductRetriever) -> Any:
    return lambda texts: retriever.embed_text(**retriever.text.tokenize(texts))


def retriever_of(vision: Any, text: Any, embed_dim: int) -> ProductRetriever:
    model = ProductRetriever(vision, text, embed_dim=embed_dim, product="image").eval()
    align_projections(model)  # what ProductRetriever's constructor calls once it holds the hook
    return model


# ------------------------------------------------------------------------------------------------------- open_clip
@pytest.fixture(scope="module")
def clip_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A tiny open_clip CLIP (its own temperature), saved as a local checkpoint file."""
    import open_clip

    check_model(NAME, None, TINY_CLIP)  # registers the architecture under NAME
    torch.manual_seed(0)
    model = open_clip.create_model(NAME).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(30.0))
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    return model, path


def open_clip_retriever(path: Path, embed_dim: int = 16) -> ProductRetriever:
    vision = OpenClipVisionEncoder(NAME, pretrained=str(path), model_config=TINY_CLIP, trainable=False)
    text = OpenClipTextEncoder(NAME, pretrained=str(path), model_config=TINY_CLIP, trainable=False)
    return retriever_of(vision, text, embed_dim)


@torch.no_grad()
def test_open_clip_pair_keeps_its_similarities(clip_file: tuple[Any, Path], titles: list[str]) -> None:
    import open_clip

    model, path = clip_file
    retriever = open_clip_retriever(path)
    assert retriever.vision.aligned_space == retriever.text.aligned_space is not None
    torch.testing.assert_close(retriever.logit_scale.exp(), model.logit_scale.exp())
    # the same token ids as open_clip's own tokenizer, through the Hugging Face call the pipelines make
    own_ids = open_clip.get_tokenizer(NAME)(titles)
    enc = retriever.text.tokenize(titles)
    assert torch.equal(enc["input_ids"], own_ids)
    x = photos(retriever.vision.image_transform(train=False))
    q, v = retriever.embed_text(**enc), retriever.embed_image(x)
    own_q, own_v = model.encode_text(own_ids, normalize=True), model.encode_image(x, normalize=True)
    torch.testing.assert_close(q @ v.t(), own_q @ own_v.t(), atol=1e-5, rtol=0)  # text-photo
    torch.testing.assert_close(v @ v.t(), own_v @ own_v.t(), atol=1e-5, rtol=0)  # photo-photo
    torch.testing.assert_close(q, own_q, atol=1e-5, rtol=0)

    # zero-shot tagging through the retriever ranks values as open_clip's own similarities do
    tagger = ZeroShotTagger(text_embedder(retriever), VOCABULARIES)
    tokenizer = open_clip.get_tokenizer(NAME)
    for attribute, values in VOCABULARIES.items():
        per_template = [model.encode_text(tokenizer(prompts(values, t)), normalize=True) for t in DEFAULT_TEMPLATES]
        own_scores = own_v @ F.normalize(torch.stack(per_template).mean(0), dim=-1).t()  # (B, V)
        scores = tagger.scores(v)[attribute]
        torch.testing.assert_close(scores, own_scores, atol=1e-5, rtol=0)
        assert torch.equal(scores.argsort(-1), own_scores.argsort(-1))


def test_open_clip_towers_share_one_load_not_parameters(clip_file: tuple[Any, Path]) -> None:
    _, path = clip_file
    first, second = open_clip_retriever(path), open_clip_retriever(path)
    ours = {p.data_ptr() for p in first.parameters()}
    assert not ours & {p.data_ptr() for p in second.parameters()}
    # a tower alone, then a pair whose embed_dim is not the pair's width: projections left random, with a warning
    with pytest.warns(UserWarning, match="embed_dim is 8"):
        narrow = open_clip_retriever(path, embed_dim=8)
    assert narrow.text_proj.weight.shape == (8, 16)
    random_init = OpenClipTextEncoder(NAME, model_config=TINY_CLIP)
    assert random_init.aligned_space is None and random_init.weights_source is None


# ---------------------------------------------------------------------------------------- Hugging Face CLIP / SigLIP
def save_hf_pair(folder: Path, kind: str) -> Path:
    """A tiny CLIPModel or SiglipModel with MiniLM's tokenizer and an image processor, saved as a model folder."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel, SiglipConfig, SiglipModel

    from encoders.pretrained import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    shared = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 1}
    text = {**shared, "vocab_size": tokenizer.vocab_size, "max_position_embeddings": 16}
    vision = {**shared, "image_size": 32, "patch_size": 16}
    torch.manual_seed(1)
    if kind == "clip":
        text.update(eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    else:
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
    with torch.no_grad():
        model.logit_scale.fill_(math.log(20.0))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@torch.no_grad()
def test_hf_pair_keeps_its_similarities(kind: str, tmp_path: Path, titles: list[str]) -> None:
    from transformers import AutoModel, AutoTokenizer

    folder = save_hf_pair(tmp_path / kind, kind)
    model = AutoModel.from_pretrained(folder).eval()
    vision, text = HFClipVisionEncoder(str(folder), trainable=False), HFClipTextEncoder(str(folder), trainable=False)
    dim = 16 if kind == "clip" else 32
    assert vision.output_dim == text.output_dim == dim
    retriever = retriever_of(vision, text, dim)
    torch.testing.assert_close(retriever.logit_scale.exp(), model.logit_scale.exp().reshape(()))
    x = photos(vision.image_transform(train=False))
    enc = text.tokenize(titles)
    q, v = retriever.embed_text(**enc), retriever.embed_image(x)
    # the model's own: CLIP with its tokenizer's mask (padding to the longest), SigLIP at its full length, unmasked
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if kind == "clip":
        own_text = model.get_text_features(**tokenizer(titles, padding=True, return_tensors="pt"))
    else:
        ids = tokenizer(titles, padding="max_length", max_length=16, truncation=True, return_tensors="pt").input_ids
        assert enc["input_ids"].shape == (len(titles), 16)
        own_text = model.get_text_features(input_ids=ids)
    own_q = F.normalize(own_text.pooler_output, dim=-1)
    own_v = F.normalize(model.get_image_features(pixel_values=x).pooler_output, dim=-1)
    torch.testing.assert_close(q @ v.t(), own_q @ own_v.t(), atol=1e-5, rtol=0)
    torch.testing.assert_close(v @ v.t(), own_v @ own_v.t(), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------------ the configs
@pytest.mark.parametrize("name", ["fashion_siglip", "fashion_clip"])
def test_fashion_configs_parse_offline(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from multimodal.cli import main

    monkeypatch.setattr(sys, "argv", ["multimodal"])
    config = ROOT / "configs" / "retrieval" / f"{name}.yaml"
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(config), "--print_config"])
    assert info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    args = printed["model"]["init_args"]
    assert args["vision"]["init_args"]["model_name" if name == "fashion_siglip" else "model_name_or_path"]
    assert args["embed_dim"] == {"fashion_siglip": 768, "fashion_clip": 512}[name]
