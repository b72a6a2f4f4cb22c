"""Shared fixtures: tiny seeded models, the committed product sample, small manifests built from it.

No test may touch the network: the Hugging Face hub is switched off before anything imports ``transformers``.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "fashion-products"
SAMPLE_MANIFEST = SAMPLE / "metadata.csv"
SAMPLE_IMAGES = SAMPLE / "images"
TINY_CONFIG = ROOT / "configs" / "tagging" / "tiny.yaml"

# A BERT small enough to train in milliseconds; it keeps MiniLM's real tokenizer.
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
ATTRIBUTES = ["gender", "masterCategory", "season"]

# Tiny models gain nothing from a second thread, and on a shared 2-core box spinning threads cost a lot.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def sample_df() -> pd.DataFrame:
    """The committed sample manifest, every cell a string (as the data module reads it)."""
    return pd.read_csv(SAMPLE_MANIFEST, dtype=str, keep_default_na=False)


def tiny_vision(seed: int = 0, image_size: int = 64) -> Any:
    """timm's registered ``test_efficientnet`` (about 100k parameters), seeded."""
    from encoders.timm_encoder import TimmVisionEncoder

    torch.manual_seed(seed)
    return TimmVisionEncoder("test_efficientnet", image_size=image_size)


def tiny_text(seed: int = 0, **kwargs: Any) -> Any:
    """A random 2-layer, width-32 BERT with MiniLM's tokenizer, seeded."""
    from encoders.pretrained import MiniLMTextEncoder

    torch.manual_seed(seed)
    kwargs.setdefault("max_length", 16)
    return MiniLMTextEncoder(random_init=True, config_overrides=dict(TINY_BERT), **kwargs)


@pytest.fixture
def make_manifest(tmp_path: Path, sample_df: pd.DataFrame) -> Callable[..., Path]:
    """Write a manifest of real sample products (images stay in examples/) and return its path.

    Args (of the returned function):
        n: rows taken from the sample (stratified enough: every n-th row).
        name: file name; the suffix picks the format (.csv, .jsonl, .parquet).
        splits: optional split column values, cycled over the rows.
        edit: optional function that changes the DataFrame before it is written.
    """

    def make(
        n: int = 24,
        name: str = "manifest.csv",
        splits: Sequence[str] | None = None,
        edit: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    ) -> Path:
        step = max(1, len(sample_df) // n)
        df = sample_df.iloc[::step].head(n).reset_index(drop=True).copy()
        if splits is not None:
            df["split"] = [splits[i % len(splits)] for i in range(len(df))]
        if edit is not None:
            df = edit(df)
        path = tmp_path / name
        write_manifest(df, path)
        return path

    return make


def write_manifest(df: pd.DataFrame, path: Path) -> None:
    """Write ``df`` as CSV, JSONL or Parquet by the suffix of ``path``."""
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    elif path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        raise ValueError(path)


class TinyPreprocessing:
    """What a task gives the data module: an image transform and a text function, from tiny towers."""

    def __init__(self, image_size: int = 32) -> None:
        from timm.data import create_transform
        from transformers import AutoTokenizer

        from encoders.pretrained import minilm_path
        from multimodal.tasks.base import JoinedText

        self.size = image_size
        self._create_transform = create_transform
        self._text = JoinedText(AutoTokenizer.from_pretrained(str(minilm_path())), max_length=12)

    def image_transform(self, train: bool) -> Any:
        return self._create_transform(
            input_size=(3, self.size, self.size), is_training=False, interpolation="bilinear", crop_pct=1.0
        )

    def text_fn(self) -> Any:
        return self._text


@pytest.fixture(scope="session")
def preprocessing() -> TinyPreprocessing:
    return TinyPreprocessing()
