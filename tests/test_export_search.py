"""Export -> index -> search on the committed sample, resumable export, DDP export, and bad-input errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import cli_error, kill_9_after_blocks, run_cli

from multimodal import cli
from multimodal.errors import UserError
from multimodal.search.build import build_index, recall_against_exact
from multimodal.search.export import load_export

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "fashion-products"
N_PRODUCTS = 96


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first products of the committed sample (all used for training: a tiny catalogue to memorise)."""
    path = tmp_path_factory.mktemp("data") / "catalogue.csv"
    pd.read_csv(SAMPLE / "metadata.csv", dtype=str).head(N_PRODUCTS).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def checkpoint(catalogue: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A retriever trained for a few epochs: tiny image tower, frozen pretrained MiniLM, fused product vectors."""
    run = tmp_path_factory.mktemp("fit")
    text = "--model.init_args.text.init_args."
    cli.main(
        [
            "fit",
            "--config",
            "configs/retrieval/tiny.yaml",
            f"{text}random_init",
            "false",
            f"{text}config_overrides",
            "{}",
            f"{text}trainable",
            "false",
            "--model.init_args.embed_dim",
            "64",
            "--model.init_args.fusion.init_args.dim",
            "128",
            "--model.init_args.optimizer.init_args.lr",
            "0.01",
            "--data.manifest",
            str(catalogue),
            "--data.image_root",
            str(SAMPLE / "images"),
            "--data.val_fraction",
            "0",
            "--data.test_fraction",
            "0",
            "--data.batch_size",
            "32",
            "--trainer.max_epochs",
            "20",
            "--trainer.limit_val_batches",
            "0",
            "--trainer.enable_checkpointing",
            "true",
            "--trainer.default_root_dir",
            str(run),
        ]
    )
    (ckpt,) = (run / "checkpoints").glob("*.ckpt")
    return ckpt


@pytest.fixture(scope="module")
def export(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("emb") / "full"
    cli.main(
        [
            "export",
            "--ckpt_path",
            str(checkpoint),
            "--out",
            str(out),
            "--shard-size",
            "32",
            "--batch-size",
            "16",
            "--no-progress",
        ]
    )
    return out


@pytest.fixture(scope="module")
def index(export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("idx") / "flat"
    cli.main(["index", str(export), "--out", str(out)])
    return out


def test_export_writes_every_product_once(export: Path, catalogue: Path) -> None:
    manifest, vectors, products = load_export(export)
    ids = pd.read_csv(catalogue, dtype=str)["id"].tolist()
    assert manifest["complete"] and manifest["count"] == N_PRODUCTS and manifest["shards"] == 3
    assert sorted(products["id"]) == sorted(ids) and not products["id"].duplicated().any()
    assert vectors.shape == (N_PRODUCTS, 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=2e-3)  # float16 shards
    assert list(products.columns) == ["id", "title", *pd.read_csv(catalogue).columns[3:], "image_path"]  # all kept
    assert pd.read_parquet(export / "products.parquet")["id"].tolist() == products["id"].tolist()


def test_search_finds_a_product_by_its_own_title(
    index: Path, catalogue: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = pd.read_csv(catalogue, dtype=str).iloc[[0, 17, 42, 63, 90]]
    for item_id, title in zip(rows["id"], rows["title"], strict=True):
        out = run_cli(["search", index, "--text", title, "-k", "3"], capsys)
        results = [json.loads(line) for line in out.splitlines()]
        assert [r["rank"] for r in results] == [1, 2, 3]
        assert set(results[0]) >= {"rank", "id", "score", "title"}
        assert item_id in [r["id"] for r in results], (title, results)


def test_an_index_folder_moved_elsewhere_still_answers(
    index: Path, catalogue: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The index keeps its checkpoint (model.ckpt): a copy of the folder alone answers, with the same results."""
    title = pd.read_csv(catalogue, dtype=str)["title"][5]
    expected = run_cli(["search", index, "--text", title, "-k", "3"], capsys)
    moved = tmp_path / "elsewhere" / "idx"
    shutil.copytree(index, moved)
    assert (moved / "model.ckpt").is_file()
    info = json.loads((moved / "index.json").read_text())
    info["export_folder"] = str(tmp_path / "no-such-export")  # the export it came from is gone
    (moved / "index.json").write_text(json.dumps(info))
    assert run_cli(["search", moved, "--text", title, "-k", "3"], capsys) == expected
    (moved / "model.ckpt").write_bytes(b"other weights")
    assert "changed since the export" in cli_error(["search", moved, "--text", title], capsys)


def test_search_by_photo_and_rerank(index: Path, catalogue: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = pd.read_csv(catalogue, dtype=str).iloc[0]
    out = run_cli(["search", index, "--image", SAMPLE / "images" / first["image"], "-k", "5", "--rerank", "10"], capsys)
    results = [json.loads(line) for line in out.splitlines()]
    assert len(results) == 5 and all("rerank_score" in r for r in results)
    assert [r["rerank_score"] for r in results] == sorted((r["rerank_score"] for r in results), reverse=True)


def test_more_like_this_product(index: Path, catalogue: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = pd.read_csv(catalogue, dtype=str).iloc[0]
    out = run_cli(["search", index, "--like", first["id"], "-k", "4"], capsys)
    results = [json.loads(line) for line in out.splitlines()]
    assert len(results) == 4 and first["id"] not in [r["id"] for r in results]
    assert "not in the index" in cli_error(["search", index, "--like", "no-such-id"], capsys)


def test_killed_export_resumes_to_the_same_result(
    checkpoint: Path, export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "resumed"
    base = ["export", "--ckpt_path", checkpoint, "--out", out, "--shard-size", "32", "--no-progress"]
    run_cli([*base, "--limit-batches", "3", "--batch-size", "16"], capsys)  # "killed" in the middle of shard 1
    manifest = json.loads((out / "export.json").read_text())
    assert not manifest["complete"] and manifest["missing_shards"] == [1, 2]
    assert cli_error(["index", out, "--out", tmp_path / "idx"], capsys).endswith("to finish it")
    run_cli([*base, "--batch-size", "16"], capsys)
    (out / "shard-000002.safetensors").unlink()  # killed again, this time before the last shard
    run_cli([*base, "--batch-size", "16"], capsys)
    _, expected, expected_products = load_export(export)
    _, vectors, products = load_export(out)
    np.testing.assert_array_equal(vectors, expected)
    pd.testing.assert_frame_equal(products, expected_products)


def test_unreadable_products_are_skipped_and_reported(
    checkpoint: Path, catalogue: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = pd.read_csv(catalogue, dtype=str).head(8)
    images = tmp_path / "images"
    images.mkdir()
    for name in rows["image"][1:]:
        shutil.copy(SAMPLE / "images" / name, images / name)
    (images / rows["image"][0]).write_bytes(b"not a jpeg")  # present, but unreadable
    rows.to_csv(tmp_path / "catalogue.csv", index=False)
    out = tmp_path / "emb"
    data = ["--data.manifest", tmp_path / "catalogue.csv", "--data.image_root", images]
    printed = run_cli(["export", "--ckpt_path", checkpoint, "--out", out, "--no-progress", *data], capsys)
    assert json.loads(printed.splitlines()[-1])["skipped"] == 1
    manifest, vectors, products = load_export(out)
    assert manifest["count"] == 7 and len(vectors) == 7 and rows["id"][0] not in set(products["id"])
    assert [s["id"] for s in manifest["skipped"]] == [rows["id"][0]]


def test_export_refuses_a_folder_of_another_model(
    checkpoint: Path, export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.ckpt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["state_dict"]["logit_scale"] = state["state_dict"]["logit_scale"] + 1.0
    torch.save(state, other)
    folder = tmp_path / "emb"
    shutil.copytree(export, folder)
    err = cli_error(["export", "--ckpt_path", other, "--out", folder, "--shard-size", "32"], capsys)
    assert "another model" in err and "checkpoint_sha256" in err
    err = cli_error(
        ["export", "--ckpt_path", checkpoint, "--out", folder, "--shard-size", "32", "--dtype", "float32"], capsys
    )
    assert "dtype" in err


def test_an_export_with_every_photo_missing_is_an_error(
    checkpoint: Path, catalogue: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong --image_root skips every product: that is a mistake to name, not an empty 'complete' export."""
    args = ["export", "--ckpt_path", checkpoint, "--input", catalogue, "--image_root", tmp_path, "--out",
            tmp_path / "emb", "--no-progress"]  # fmt: skip
    err = cli_error(args, capsys)
    assert f"every product of {catalogue} was skipped ({N_PRODUCTS};" in err and "--image_root" in err


def test_bad_queries_are_one_line_errors(index: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "empty query text" in cli_error(["search", index, "--text", "  "], capsys)
    assert "outside 1..96" in cli_error(["search", index, "--text", "watch", "-k", "500"], capsys)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    assert "broken.jpg" in cli_error(["search", index, "--image", broken], capsys)
    assert "not found" in cli_error(["search", index, "--image", tmp_path / "nope.jpg"], capsys)


def test_index_model_dimension_mismatch(index: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import faiss

    folder = tmp_path / "idx8"
    shutil.copytree(index, folder)
    small = faiss.IndexFlatIP(8)
    small.add(np.eye(8, dtype=np.float32)[np.arange(N_PRODUCTS) % 8])
    faiss.write_index(small, str(folder / "index.faiss"))
    err = cli_error(["search", folder, "--text", "black watch", "-k", "3"], capsys)
    assert "64" in err and "8" in err


def test_missing_or_corrupt_shards_are_refused(
    export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "emb"
    shutil.copytree(export, folder)
    (folder / "shard-000001.safetensors").write_bytes(b"\x00garbage")
    assert "corrupt shard" in cli_error(["index", folder, "--out", tmp_path / "i1"], capsys)
    (folder / "shard-000001.safetensors").unlink()
    assert "missing shard" in cli_error(["index", folder, "--out", tmp_path / "i2"], capsys)
    assert "not an embedding export" in cli_error(["index", tmp_path, "--out", tmp_path / "i3"], capsys)


def test_approximate_indexes_are_checked_against_exact() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for kind, options in (("ivf", {"nprobe": 64}), ("hnsw", {"ef_search": 128})):
        index = build_index(x, kind, **options)  # type: ignore[arg-type]
        assert recall_against_exact(index, x, x[:200]) > 0.9, kind
    with pytest.raises(UserError, match="unknown index kind"):
        build_index(x, "lsh")  # type: ignore[arg-type]


def test_kill_9_export_resumes_to_the_same_vectors(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "killed"
    args = ["export", "--ckpt_path", str(checkpoint), "--out", str(out), "--shard-size", "4", "--batch-size", "4",
            "--no-progress"]  # fmt: skip
    done = kill_9_after_blocks(args, out, 2, "shard-*.safetensors")
    assert 2 <= done < N_PRODUCTS // 4 and not (out / "products.parquet").exists()
    run_cli(args, capsys)
    full = tmp_path / "full"
    run_cli([a if a != str(out) else str(full) for a in args], capsys)
    _, vectors, products = load_export(out)
    _, expected, expected_products = load_export(full)
    np.testing.assert_array_equal(vectors, expected)
    assert products["id"].tolist() == expected_products["id"].tolist()


def test_kill_9_index_rebuild_leaves_the_old_index_answering(
    export: Path, index: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`multimodal index` killed while it writes its new build: the link still names the old, whole index."""
    from multimodal.search.index import load_index

    out = tmp_path / "idx"
    shutil.copytree(index, out)  # an index in place (a plain folder, as an older version wrote it)
    before = load_index(out).products["id"].tolist()
    for _ in range(3):
        builds = len(list((tmp_path / ".idx.builds").glob("*"))) if (tmp_path / ".idx.builds").exists() else 0
        kill_9_after_blocks(["index", str(export), "--out", str(out), "--kind", "hnsw"], tmp_path / ".idx.builds",
                            builds + 1, "*")  # fmt: skip
        loaded = load_index(out)  # whole: info, vectors and products of one build
        assert loaded.products["id"].tolist() == before and loaded.count == len(before)
    run_cli(["index", str(export), "--out", str(out)], capsys)
    assert load_index(out).products["id"].tolist() == before
