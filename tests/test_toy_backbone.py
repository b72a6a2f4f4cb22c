"""A new vision backbone and a new text backbone are one class each: a toy conv net (:class:`ToyConvEncoder`, with its
own image transform) and a toy bag of words (:class:`ToyBagOfWords`, with a Hugging Face tokenizer), defined here,
build a tagger and a retriever, train through a real Lightning ``Trainer`` on the committed sample and predict.
A config names them by class path, as it names the shipped encoders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from conftest import SAMPLE_IMAGES, SAMPLE_MANIFEST
from torch import Tensor, nn
from torchvision import transforms

from encoders.types import Features, ImageTransform, TextEncoder, VisionEncoder
from fusion.late import LateFusion
from fusion.layers import masked_mean, zero_padding
from multimodal.data.datamodule import ProductDataModule
from multimodal.search.retriever import ProductRetriever
from multimodal.tagging.tagger import ProductTagger


class ToyConvEncoder(VisionEncoder):
    """Two strided convolutions; each cell of the last ``(H/4, W/4)`` grid is a token, the pooled vector their mean.

    Args:
        dim: channels, the output width.
        image_size: side of the square the transform resizes photos to.
    """

    def __init__(self, dim: int = 16, image_size: int = 32) -> None:
        super().__init__()
        self.output_dim, self.image_size = dim, image_size
        self.net = nn.Sequential(
            nn.Conv2d(3, dim, 3, stride=2, padding=1), nn.GELU(), nn.Conv2d(dim, dim, 3, stride=2, padding=1)
        )

    def forward(self, pixel_values: Tensor) -> Features:
        tokens = self.net(pixel_values).flatten(2).transpose(1, 2)  # (B, H/4 * W/4, D)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)  # every cell is real
        return Features(tokens=tokens, mask=mask, pooled=tokens.mean(1))

    def image_transform(self, train: bool) -> ImageTransform:
        # torchvision's transforms pickle, so data loader workers can take them.
        flip = [transforms.RandomHorizontalFlip()] if train else []
        size = (self.image_size, self.image_size)
        return transforms.Compose(
            [transforms.Resize(size), *flip, transforms.ToTensor(), transforms.Normalize(0.5, 0.5)]
        )


class ToyBagOfWords(TextEncoder):
    """Token embeddings (MiniLM's tokenizer, which ships with the project); pooled is their masked mean.

    Args:
        dim: embedding width, the output width.
        max_length: tokens kept per text.
    """

    def __init__(self, dim: int = 16, max_length: int = 16) -> None:
        super().__init__()
        from transformers import AutoTokenizer

        from encoders.pretrained import minilm_path

        self._tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
        self.output_dim, self.max_length = dim, max_length
        self.embed = nn.Embedding(len(self._tokenizer), dim, padding_idx=self._tokenizer.pad_token_id)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Features:
        mask = attention_mask.bool()  # (B, T)
        tokens = zero_padding(self.embed(input_ids), mask)  # (B, T, D)
        return Features(tokens=tokens, mask=mask, pooled=masked_mean(tokens, mask))


def fit(model: L.LightningModule, data: ProductDataModule, tmp_path: Path, steps: int = 4) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(model, data)
    return trainer


def sample_data(**kwargs: Any) -> ProductDataModule:
    return ProductDataModule(
        str(SAMPLE_MANIFEST), image_root=str(SAMPLE_IMAGES), text_columns=["title"], batch_size=16, num_workers=0,
        **kwargs,
    )  # fmt: skip


def test_toy_backbones_train_a_tagger_and_tag(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vision, text = ToyConvEncoder(), ToyBagOfWords()
    tagger = ProductTagger(vision, text, lambda dv, dt: LateFusion(dv, dt, dim=16), modality_dropout=0.0)
    data = sample_data(attributes=["gender", "masterCategory"])
    before = {k: v.detach().clone() for k, v in tagger.named_parameters()}
    trainer = fit(tagger, data, tmp_path)
    assert trainer.global_step == 4
    changed = {k.split(".")[0] for k, v in tagger.named_parameters() if k in before and not torch.equal(v, before[k])}
    assert {"vision", "text", "fusion"} <= changed  # both toy towers learned (the heads are built at set-up)
    assert set(tagger.heads) == {"gender", "masterCategory"}
    batches = trainer.predict(tagger, datamodule=data)
    assert batches is not None
    probs = torch.cat([b["probs"]["gender"] for b in batches])  # (N, classes)
    assert probs.shape == (sum(len(b["ids"]) for b in batches), len(data.vocabularies["gender"]))
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(probs)))


def test_toy_backbones_train_a_retriever_and_embed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    retriever = ProductRetriever(ToyConvEncoder(), ToyBagOfWords(), embed_dim=16, product="image")
    fit(retriever, sample_data(), tmp_path, steps=2)
    retriever.eval()
    with torch.no_grad():
        titles = retriever.text.tokenize(["blue denim jeans", "red cotton shirt"])
        queries = retriever.embed_text(titles["input_ids"], titles["attention_mask"])
        photos = retriever.embed_image(torch.randn(2, 3, 32, 32))
    assert queries.shape == photos.shape == (2, 16)
    torch.testing.assert_close(queries.norm(dim=-1), torch.ones(2))


def test_a_config_names_the_toy_backbones_by_class_path(tmp_path: Path) -> None:
    """The YAML form: ``--model.init_args.vision <module>.<Class>`` with its own settings (no training here)."""
    from multimodal.lightning_cli import MultimodalCLI

    cli = MultimodalCLI(
        args=["--config", str(Path(__file__).parents[1] / "configs" / "tagging" / "tiny.yaml"),
              "--data.init_args.manifest", str(SAMPLE_MANIFEST), "--data.init_args.image_root", str(SAMPLE_IMAGES),
              "--trainer.default_root_dir", str(tmp_path),
              "--model.init_args.vision", "test_toy_backbone.ToyConvEncoder",
              "--model.init_args.vision.init_args.dim", "24",
              "--model.init_args.text", "test_toy_backbone.ToyBagOfWords"],
        run=False,
    )  # fmt: skip
    assert type(cli.model.vision).__name__ == "ToyConvEncoder" and cli.model.vision.output_dim == 24
    assert type(cli.model.text).__name__ == "ToyBagOfWords"
    assert cli.model.fusion.vision_dim == 24 and cli.model.fusion.text_dim == 16  # widths flow to the fusion


@pytest.mark.parametrize("train", [False, True])
def test_toy_vision_transform_gives_the_model_input(train: bool) -> None:
    from PIL import Image

    photo = Image.open(next(iter(sorted(SAMPLE_IMAGES.glob("*.jpg"))))).convert("RGB")
    pixels = ToyConvEncoder(image_size=40).image_transform(train)(photo)
    assert pixels.shape == (3, 40, 40) and -1.0 <= pixels.min() and pixels.max() <= 1.0
