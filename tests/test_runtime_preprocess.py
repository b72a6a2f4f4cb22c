"""The torch-free preprocessing of an ONNX export (:mod:`multimodal.onnx.preprocess`) gives the arrays eager
PyTorch feeds its model: photos within 1e-6 (they come out identical), token ids and masks exactly, for each
task's export on the committed photos and titles; it runs where torch and its family cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import BLOCK_HEAVY, ROOT, SAMPLE_IMAGES, SAMPLE_MANIFEST

from multimodal.data.images import load_image
from multimodal.errors import UserError
from multimodal.loading import load
from multimodal.onnx.export import _manifest
from multimodal.onnx.preprocess import Preprocessor, image_array, preprocess_settings, text_arrays
from multimodal.onnx.preprocess_export import image_section, text_template
from multimodal.onnx.transforms import build_transform, describe_transform

PIXELS = 1e-6  # |torch-free - eager| allowed on a pixel value


@pytest.fixture(scope="module")
def exports(trained: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The export folder of each tiny checkpoint as ``export_model`` writes it, but its graphs: the same
    ``model.json`` (made by the same function) and tokenizer files. Exporting the graphs costs 5-20 s a task and
    is tested in test_onnx.py; the preprocessing does not depend on them."""
    root = tmp_path_factory.mktemp("runtime-preprocess")
    for task in ("tagger", "retriever", "captioner"):
        (root / task).mkdir()
        info = _manifest(load(trained[task]), root / task, {"quantize": None}, trained[task])
        (root / task / "model.json").write_text(json.dumps(info))
    return {task: root / task for task in ("tagger", "retriever", "captioner")}


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    """24 committed products, one without a title and one with a title longer than the 16 tokens kept."""
    df = pd.read_csv(SAMPLE_MANIFEST, dtype=str).iloc[::35].head(24).reset_index(drop=True)
    df.loc[2, "title"] = None
    df.loc[4, "title"] = " ".join([df.loc[4, "title"]] * 6)
    return df


def _titles(df: pd.DataFrame) -> dict[str, list[str | None]]:
    return {"title": [None if pd.isna(t) else t for t in df["title"]]}


@pytest.mark.parametrize("task", ["tagger", "retriever", "captioner"])
def test_the_arrays_equal_the_eager_preprocessing(
    task: str, trained: dict[str, Path], exports: dict[str, Path], sample: pd.DataFrame
) -> None:
    model = load(trained[task]).model
    info = json.loads((exports[task] / "model.json").read_text())
    pre = Preprocessor(exports[task], info)
    photos = [load_image(SAMPLE_IMAGES / name) for name in sample["image"]]
    eager = torch.stack([model.image_transform(False)(p) for p in photos]).numpy()
    pixels = pre.images(photos)
    assert pixels.dtype == np.float32 and pixels.shape == eager.shape == (24, 3, 64, 64)
    np.testing.assert_allclose(pixels, eager, atol=PIXELS, rtol=0)
    arrays = pre.texts(_titles(sample))
    if task == "captioner":  # its graph reads photos alone; its tokenizer is there for decoding
        assert arrays == {} and pre.tokenizer is not None
        return
    reference = model.text_fn()(_titles(sample))
    assert set(arrays) == set(reference) == {"input_ids", "attention_mask"}
    for key, value in reference.items():
        assert arrays[key].dtype == np.int64
        np.testing.assert_array_equal(arrays[key], value.numpy(), err_msg=key)
    assert arrays["input_ids"].shape[1] == 16  # the long title was truncated, the others padded to it
    queries = ["black leather watch", "", "Nike running shoes for men " * 5]
    np.testing.assert_array_equal(pre.queries(queries)["input_ids"], model.text.tokenize(queries)["input_ids"])


def test_a_second_product_text_follows_the_retrievers_columns(trained: dict[str, Path], tmp_path: Path) -> None:
    from multimodal.onnx.preprocess import text_inputs

    retriever = load(trained["retriever"]).model
    retriever.query_columns, retriever.product_columns = ["title"], ["title", "brand"]
    inputs, separator = text_template(retriever, ["title", "brand"])
    assert inputs == [{"prefix": "", "columns": ["title"]}, {"prefix": "product_", "columns": ["title", "brand"]}]
    tokenizer = retriever.text.tokenizer
    tokenizer.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    settings = {"max_length": 16, "padding_side": "right", "truncation_side": "right", "pad_id": 0}
    settings |= {"pad_token": "[PAD]", "pad_type_id": 0, "separator": separator, "inputs": inputs}
    texts = {"title": ["Red shirt", None, "Blue jeans"], "brand": ["Nike", "Puma", None]}
    arrays = text_inputs(texts, tmp_path / "tokenizer.json", settings)
    reference = retriever.text_fn()(texts)
    assert set(arrays) == set(reference)
    for key, value in reference.items():
        np.testing.assert_array_equal(arrays[key], value.numpy(), err_msg=key)


SETTINGS = [  # the transforms the towers build, and the corners of torchvision's resize and crop
    {"kind": "torchvision", "steps": [{"op": "resize", "size": 224, "interpolation": "bicubic"}]},
    {"kind": "torchvision", "steps": [{"op": "resize", "size": 50, "interpolation": "bilinear", "max_size": 60}]},
    {"kind": "torchvision", "steps": [{"op": "resize", "size": [40, 90], "interpolation": "lanczos"}]},
    {"kind": "torchvision", "steps": [{"op": "resize", "size": 33, "interpolation": "nearest"}]},
    {"kind": "torchvision", "steps": [{"op": "resize", "size": 20, "interpolation": "box"}]},
]


@pytest.mark.parametrize("resize", SETTINGS, ids=lambda s: s["steps"][0]["interpolation"])
@pytest.mark.parametrize("crop", [[32, 32], [45, 70]])
def test_every_resize_and_crop_matches_torchvision(resize: dict, crop: list[int], tmp_path: Path) -> None:
    steps = [{"op": "rgb"}, *resize["steps"], {"op": "center_crop", "size": crop}, {"op": "to_tensor"}]
    steps.append({"op": "normalize", "mean": [0.48, 0.45, 0.4], "std": [0.26, 0.26, 0.27]})
    settings = {"kind": "torchvision", "steps": steps}
    eager = build_transform(settings, tmp_path)
    for name in sorted(p.name for p in SAMPLE_IMAGES.iterdir())[:3]:
        photo = load_image(SAMPLE_IMAGES / name)
        ref = eager(photo).numpy()
        np.testing.assert_allclose(image_array(photo, settings), ref, atol=PIXELS, rtol=0)


def test_open_clip_transform_is_described_and_matched(tmp_path: Path) -> None:
    import open_clip

    transform = open_clip.image_transform(96, is_train=False)
    settings = describe_transform(transform, tmp_path)
    photo = load_image(next(iter(sorted(SAMPLE_IMAGES.iterdir()))))
    np.testing.assert_allclose(image_array(photo, image_section(settings, transform)), transform(photo).numpy(), atol=0)


def test_an_image_processor_and_an_old_export_are_refused_in_one_line(tmp_path: Path) -> None:
    from transformers import ViTImageProcessor

    from encoders.hf_vision import HFImageTransform

    transform = HFImageTransform(ViTImageProcessor())
    section = image_section(describe_transform(transform, tmp_path), transform)
    with pytest.raises(UserError, match=r"Hugging Face image processor \(ViTImageProcessor\).*full install"):
        image_array(load_image(next(iter(SAMPLE_IMAGES.iterdir()))), section)
    with pytest.raises(UserError, match=r"model.json records no preprocessing.*export-model"):
        preprocess_settings(tmp_path, {"format": "multimodal-onnx", "version": 1})


BLOCKED = (
    BLOCK_HEAVY
    + """
import json
from pathlib import Path
from multimodal.data.images import load_image
from multimodal.onnx.preprocess import Preprocessor
folder, photo = Path(sys.argv[1]), Path(sys.argv[2])
pre = Preprocessor(folder, json.loads((folder / "model.json").read_text()))
pixels, text = pre.images([load_image(photo)]), pre.texts({"title": ["Black leather watch"]})
try:
    import torch  # noqa: F401
    blocked = False
except ImportError:
    blocked = True
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "transformers", "lightning", "timm"})
print(json.dumps({"pixels": pixels.tolist(), "ids": text["input_ids"].tolist(), "blocked": blocked, "heavy": heavy}))
"""
)


def test_preprocessing_runs_where_torch_cannot_be_imported(
    trained: dict[str, Path], exports: dict[str, Path], tmp_path: Path
) -> None:
    photo = SAMPLE_IMAGES / sorted(p.name for p in SAMPLE_IMAGES.iterdir())[0]
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED, str(exports["tagger"]), str(photo)],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    model = load(trained["tagger"]).model
    eager = model.image_transform(False)(load_image(photo)).numpy()
    np.testing.assert_allclose(np.asarray(out["pixels"], dtype=np.float32)[0], eager, atol=PIXELS, rtol=0)
    assert out["ids"] == model.text_fn()({"title": ["Black leather watch"]})["input_ids"].tolist()
    assert out["blocked"] is True and out["heavy"] == []
    by_path = text_arrays(["Black leather watch"], exports["tagger"] / "tokenizer.json", _settings(exports["tagger"]))
    assert by_path["input_ids"].tolist() == out["ids"]


def _settings(folder: Path) -> dict:
    return json.loads((folder / "model.json").read_text())["preprocess"]["text"]
