"""Captioning on ONNX Runtime alone: the exported decoder with its key/value cache, driven by the NumPy loop of
:mod:`multimodal.onnx.decoding`, writes the captions eager ``generate`` writes, on 16 committed photos: greedy
(trimmed vocabulary on and off) and 4-beam search; and the loop runs where torch cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import BLOCK_HEAVY, ROOT, SAMPLE_IMAGES

from multimodal.data.images import load_image
from multimodal.errors import UserError
from multimodal.loading import load
from multimodal.onnx.decoding import CaptionDecoder
from multimodal.onnx.export import export_model
from multimodal.onnx.runtime import session

PHOTOS = 16
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def setup(trained: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny captioner, its export, 16 photos and the ONNX conditioning of them."""
    folder = tmp_path_factory.mktemp("decoding") / "cap"
    info = export_model(trained["captioner"], folder, progress=False)
    model = load(trained["captioner"]).model.eval()
    names = sorted(p.name for p in SAMPLE_IMAGES.iterdir())[::7][:PHOTOS]
    pixels = torch.stack([model.image_transform(False)(load_image(SAMPLE_IMAGES / n)) for n in names])
    has_image = torch.ones(PHOTOS, dtype=torch.bool)
    vision = info["graphs"]["caption_vision"]
    out = session(folder / vision["file"], 1).run(
        None, {"pixel_values": pixels.numpy(), "has_image": has_image.numpy()}
    )
    arrays = dict(zip(vision["outputs"], out, strict=True))
    cond = {n: a for n, a in arrays.items() if n.startswith("encoder_states")}
    prompt = torch.full((PHOTOS, 1), model.lm.bos_id, dtype=torch.long)
    return {"folder": folder, "info": info, "model": model, "pixels": pixels, "names": names, "cond": cond,
            "prompt": prompt, "decoder": CaptionDecoder.from_folder(folder, info),
            "vision": {k: arrays[k] for k in ("tokens", "pooled")}}  # fmt: skip


def _texts(folder: Path, tokens: np.ndarray) -> list[str]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return [t.strip() for t in tokenizer.decode_batch(tokens.tolist(), skip_special_tokens=True)]


def _both(setup: dict[str, Any], **options: Any) -> tuple[Any, Any]:
    eager = setup["model"].generate(setup["pixels"], setup["prompt"], torch.ones_like(setup["prompt"]),
                                    max_new_tokens=NEW_TOKENS, **options)  # fmt: skip
    prompt = setup["prompt"].numpy()
    onnx = setup["decoder"].generate(setup["cond"], prompt, np.ones_like(prompt), max_new_tokens=NEW_TOKENS, **options)
    return eager, onnx


@pytest.mark.parametrize("trim", [True, False])
def test_greedy_captions_equal_eager_generate(setup: dict[str, Any], trim: bool) -> None:
    eager, onnx = _both(setup, trim_vocabulary=trim)
    assert onnx.tokens.tolist() == eager.tokens.tolist()
    assert _texts(setup["folder"], onnx.tokens) == eager.texts
    np.testing.assert_allclose(onnx.scores, eager.scores, atol=1e-5)
    kept = set(setup["info"]["decoding"]["caption_token_ids"])
    assert not trim or set(onnx.tokens.flatten().tolist()) <= kept


def test_beam_search_equals_eager_generate(setup: dict[str, Any]) -> None:
    eager, onnx = _both(setup, num_beams=4)
    assert _texts(setup["folder"], onnx.tokens) == eager.texts
    assert onnx.tokens.tolist() == eager.tokens.tolist()
    np.testing.assert_allclose(onnx.scores, eager.scores, atol=1e-5)
    # several returned sequences per photo, a length penalty and a banned repeated bigram
    options = {"num_beams": 4, "num_return_sequences": 2, "length_penalty": 0.6, "no_repeat_ngram_size": 2}
    eager, onnx = _both(setup, **options)
    assert _texts(setup["folder"], onnx.tokens) == eager.texts
    np.testing.assert_allclose(onnx.scores, eager.scores, atol=1e-5)


def test_options_the_loop_does_not_follow_are_refused(setup: dict[str, Any]) -> None:
    prompt = setup["prompt"].numpy()
    refused = [({"do_sample": True}, "sampling"), ({"top_k": 5}, "not available")]
    refused += [({"max_new_tokens": 0}, "positive"), ({"trim_vocabulary": "yes"}, "true or false")]
    for options, message in refused:
        with pytest.raises(UserError, match=message):
            setup["decoder"].generate(setup["cond"], prompt, np.ones_like(prompt), **options)
    old = {**setup["info"], "graphs": {"caption_vision": setup["info"]["graphs"]["caption_vision"]}}
    with pytest.raises(UserError, match="no decoder graphs"):  # an export written before them
        CaptionDecoder.from_folder(setup["folder"], old)


BLOCKED = (
    BLOCK_HEAVY
    + """
import json
from pathlib import Path
import numpy as np
from multimodal.onnx.decoding import CaptionDecoder
from multimodal.onnx.caption_rerank import MemoryIndex, pick  # noqa: F401 - the reranker loads without torch too
from multimodal.captioning.consensus import CiderConsensus
assert CiderConsensus(["black watch", "red shoes"]).choose(["red shoes", "black watch"], [0, 0], ["black watch"]) == 1
folder = Path(sys.argv[1])
info = json.loads((folder / "model.json").read_text())
arrays = np.load(sys.argv[2])
cond = {k: arrays[k] for k in arrays.files if k != "prompt"}
prompt = arrays["prompt"]
out = CaptionDecoder.from_folder(folder, info).generate(cond, prompt, np.ones_like(prompt), max_new_tokens=12)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "transformers", "lightning", "timm"})
print(json.dumps({"tokens": out.tokens.tolist(), "heavy": heavy}))
"""
)


def test_decoding_runs_where_torch_cannot_be_imported(setup: dict[str, Any], tmp_path: Path) -> None:
    np.savez(tmp_path / "inputs.npz", prompt=setup["prompt"].numpy(), **setup["cond"])
    proc = subprocess.run([sys.executable, "-c", BLOCKED, str(setup["folder"]), str(tmp_path / "inputs.npz")],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    eager, _ = _both(setup)
    assert out["tokens"] == eager.tokens.tolist() and out["heavy"] == []


@pytest.mark.parametrize("family", ["PrefixConditioning", "LateConditioning"])
def test_early_and_late_fusion_decode_as_eager(family: str, tmp_path: Path) -> None:
    """The prefix (cached after the first graph) and the image vector (read by every step) families, with
    left-padded prompts of two lengths, a photo missing, and the options the loop follows."""
    import yaml

    from multimodal.loading import build_model
    from multimodal.onnx.caption_decoder_export import decoding_settings, export_decoder

    config = yaml.safe_load((ROOT / "configs" / "captioning" / "tiny.yaml").read_text())
    config["model"]["init_args"]["fusion"] = {"class_path": f"fusion.conditioning.{family}"}
    torch.manual_seed(0)
    model = build_model(config["model"], "tiny.yaml").eval()
    model.caption_token_ids = torch.unique(torch.cat([torch.randint(999, 30522, (3000,)), torch.tensor([0, 101, 102])]))
    info = {"graphs": export_decoder(model, tmp_path, progress=False), "decoding": decoding_settings(model)}
    decoder = CaptionDecoder.from_folder(tmp_path, info)
    pixels = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    has_image = torch.tensor([True, True, True, False])
    kind = model.conditioning.kind
    with torch.no_grad():
        tensors = model.conditioning(model.encode_images(pixels, has_image)).tensors(kind)
    cond = {n: t.numpy() for n, t in zip(kind.tensor_names, tensors, strict=True)}
    prompt = torch.tensor([[0, 0, 101, 2000, 2001], [101, 2002, 2003, 2004, 2005]] * 2)
    mask = (prompt != 0).long()
    options = ({}, {"trim_vocabulary": False}, {"num_beams": 3, "num_return_sequences": 2, "no_repeat_ngram_size": 2})
    for option in options:
        eager = model.generate(pixels, prompt, mask, has_image=has_image, max_new_tokens=8, **option)
        onnx = decoder.generate(cond, prompt.numpy(), mask.numpy(), max_new_tokens=8, **option)
        assert onnx.tokens.tolist() == eager.tokens.tolist(), option
        np.testing.assert_allclose(onnx.scores, eager.scores, atol=1e-5)


def test_consensus_reranking_equals_eager(setup: dict[str, Any], sample_df: Any, tmp_path: Path) -> None:
    """Beam candidates reranked by CIDEr-D consensus with the titles of the nearest catalogue photos: the memory
    as the export writes it, searched from the vision graph's outputs, picks the captions eager reranking picks.
    The memory holds the 16 photos titled with their own last candidate, and 24 other products."""
    from multimodal.captioning.retrieval import CaptionMemory
    from multimodal.captioning.settings import RerankSettings
    from multimodal.onnx.caption_rerank import MemoryIndex, pick, widen, write_memory

    model, n = setup["model"], 4
    candidates, _ = _both(setup, num_beams=n, num_return_sequences=n)
    rows = sample_df[sample_df["title"] != ""].iloc[::9].head(24)
    photos = [model.image_transform(False)(load_image(SAMPLE_IMAGES / name)) for name in rows["image"]]
    titles = [*candidates.texts[n - 1 :: n], *rows["title"]]
    with torch.no_grad():
        keys = model.encode_images(torch.cat([setup["pixels"], torch.stack(photos)]))
    memory = CaptionMemory.from_features(keys, titles, [f"q{i}" for i in range(PHOTOS)] + rows["id"].tolist())
    model.memory, model.rerank = memory, RerankSettings(k=3, candidates=n, weight=0.0)
    try:
        eager, _ = _both(setup)  # the model's rerank settings apply
    finally:
        model.memory, model.rerank = None, None
    index = MemoryIndex(tmp_path / write_memory(memory, tmp_path))
    prompt = setup["prompt"].numpy()
    onnx = setup["decoder"].generate(
        setup["cond"], prompt, np.ones_like(prompt), **widen({"max_new_tokens": NEW_TOKENS}, n)
    )
    texts = _texts(setup["folder"], onnx.tokens)
    chosen, scores = pick(index, {"k": 3, "weight": 0.0}, setup["vision"], texts, onnx.scores)
    assert chosen == eager.texts
    np.testing.assert_allclose(scores, eager.scores, atol=1e-5)
    assert chosen != texts[::n]  # the consensus overrules the beam order
