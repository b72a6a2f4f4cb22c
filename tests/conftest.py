"""Shared fixtures: tiny seeded models, the committed product sample, small manifests built from it.

No test may touch the network: the Hugging Face hub is switched off before anything imports ``transformers``.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

# Lightning's logger gets a StreamHandler on the sys.stderr of the moment it is first imported: imported inside a
# test's captured output, later tests' log lines would go to that closed capture ("I/O operation on closed file").
import lightning.pytorch  # noqa: E402, F401
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


# A folder whose sitecustomize makes torch and the heavy packages unimportable in a Python started with it on
# PYTHONPATH, and in its children (LitServe's workers); BLOCK_HEAVY: the same hook as code to prepend to a script.
TORCH_BLOCKED = ROOT / "tests" / "torch_blocked"
BLOCK_HEAVY = (TORCH_BLOCKED / "sitecustomize.py").read_text()


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
        from multimodal.towers import JoinedText

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


# ------------------------------------------------------------------------------------------- task checkpoints
TINY_CONFIGS = {
    "tagger": ROOT / "configs" / "tagging" / "tiny.yaml",
    "retriever": ROOT / "configs" / "retrieval" / "tiny.yaml",
    "captioner": ROOT / "configs" / "captioning" / "tiny.yaml",
}


def fit_tiny(task: str, root: Path, manifest: Path, image_root: Path, steps: int = 2, *extra: str) -> Path:
    """``multimodal fit`` of a task's tiny config for a few steps; returns its checkpoint (which stores the config)."""
    from multimodal.cli import main

    main(["fit", "--config", str(TINY_CONFIGS[task]), "--data.init_args.manifest", str(manifest),
          "--data.init_args.image_root", str(image_root), "--trainer.max_steps", str(steps),
          "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
          "--trainer.enable_checkpointing", "true", "--trainer.default_root_dir", str(root), *extra])  # fmt: skip
    (ckpt,) = list(root.rglob("*.ckpt"))
    return ckpt


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, sample_df: pd.DataFrame) -> dict[str, Path]:
    """A checkpoint of each task (tiny, 2 steps), trained on a copy of 48 sample products that is deleted
    afterwards: every use of these checkpoints shows that no training catalogue is needed."""
    import shutil

    root = tmp_path_factory.mktemp("trained")
    data = root / "catalogue"
    (data / "images").mkdir(parents=True)
    df = sample_df.iloc[::17].head(48).reset_index(drop=True)
    for name in df["image"]:
        shutil.copy(SAMPLE_IMAGES / name, data / "images" / name)
    df.to_csv(data / "metadata.csv", index=False)
    checkpoints = {task: fit_tiny(task, root / task, data / "metadata.csv", data / "images") for task in TINY_CONFIGS}
    shutil.rmtree(data)
    return checkpoints


@pytest.fixture
def torch_state() -> Iterator[None]:
    """A test that runs a benchmark program (which sets torch's threads and seeds for itself) gives the tests after
    it their threads and random state back."""
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    yield
    torch.set_num_threads(threads)
    torch.set_rng_state(rng)


@pytest.fixture
def job_input(tmp_path: Path, sample_df: pd.DataFrame) -> tuple[Path, Path, list[str]]:
    """A new catalogue to predict: 10 sample products (id, image, title only: no label column) with their photos
    copied, one row whose photo is corrupt (row 3) and one duplicate id (last row). Returns (manifest, image
    folder, the ids expected in the output, in input order)."""
    import shutil

    images = tmp_path / "new-images"
    images.mkdir()
    df = sample_df.iloc[5::31].head(10)[["id", "image", "title"]].reset_index(drop=True)
    for name in df["image"]:
        shutil.copy(SAMPLE_IMAGES / name, images / name)
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    broken = pd.DataFrame([{"id": "broken-photo", "image": "broken.jpg", "title": "Red cotton shirt"}])
    df = pd.concat([df.iloc[:3], broken, df.iloc[3:], df.iloc[[0]]], ignore_index=True)
    manifest = tmp_path / "new.csv"
    df.to_csv(manifest, index=False)
    return manifest, images, df["id"].tolist()[:-1]


def kill_9_after_blocks(args: list[str], job: Path, blocks: int = 2, pattern: str = "block-*.jsonl") -> int:
    """Run ``multimodal <args>`` in a new process, SIGKILL it once ``job`` holds ``blocks`` files matching
    ``pattern`` (finished blocks; or it ended); returns how many there were then."""
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one torch thread, as in the tests: the same float sums
    proc = subprocess.Popen([sys.executable, "-m", "multimodal.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and len(list(job.glob(pattern))) < blocks:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return len(list(job.glob(pattern)))


def run_cli(args: Sequence[object], capsys: pytest.CaptureFixture[str]) -> str:
    from multimodal import cli

    cli.main([str(a) for a in args])
    return capsys.readouterr().out


def cli_error(args: Sequence[object], capsys: pytest.CaptureFixture[str]) -> str:
    """Run a command that must fail as a user error: exit 2, one line on stderr, no traceback."""
    from multimodal import cli

    with pytest.raises(SystemExit) as exc:
        cli.main([str(a) for a in args])
    assert exc.value.code == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-2000:]
    return errors[0]


# The longest test files (seconds of a full run, measured), started first: `make test` hands whole files to its two
# workers (--dist loadfile) in collection order, so a long file collected last would leave one worker idle at the end.
LONGEST_FIRST = ("test_benchmarks_smoke.py", "test_ray_engine.py", "test_ray_jobs.py", "test_onnx.py", "test_jobs.py",
                 "test_runtime_doc.py", "test_export_search.py", "test_captioning.py", "test_onnx_decoding.py",
                 "test_lite_runtime.py", "test_questions.py", "test_search_pages_api.py", "test_text_columns.py",
                 "test_search_page.py", "test_quiet_loading.py", "test_progress_logs.py",
                 "test_model_card.py")  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest files first (:data:`LONGEST_FIRST`), each file's tests in their own order."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
