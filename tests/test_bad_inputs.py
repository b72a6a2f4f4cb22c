"""A corpus of user mistakes over every command: each exits with status 2 and one `error:` line that names the file,
row, column or key, prints no stack trace, and changes no file that was there before."""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import SAMPLE_IMAGES, SAMPLE_MANIFEST, TINY_CONFIGS

from multimodal.cli import main


@pytest.fixture(scope="module")
def world(trained: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoints, a small catalogue, an export and an index of it, and a gallery of broken files."""
    root = tmp_path_factory.mktemp("bad")
    paths = {**trained, "root": root}
    df = pd.read_csv(SAMPLE_MANIFEST, dtype=str, keep_default_na=False).head(12)[["id", "image", "title"]]
    paths["manifest"] = root / "catalogue.csv"
    df.to_csv(paths["manifest"], index=False)
    paths["export"], paths["index"] = root / "emb", root / "index"
    main(["export", "--ckpt_path", str(trained["retriever"]), "--data.manifest", str(paths["manifest"]),
          "--data.image_root", str(SAMPLE_IMAGES), "--out", str(paths["export"]), "--no_progress"])  # fmt: skip
    main(["index", str(paths["export"]), "--out", str(paths["index"])])
    broken = root / "broken"
    broken.mkdir()
    paths["pickle"] = broken / "arguments.ckpt"
    torch.save({"state_dict": {}, "arguments": argparse.Namespace(lr=1.0)}, paths["pickle"])
    paths["text"] = broken / "notes.ckpt"
    paths["text"].write_text("not a checkpoint\n")
    paths["no_config"] = broken / "no_config.ckpt"
    torch.save({"state_dict": {}}, paths["no_config"])
    state = torch.load(trained["tagger"], map_location="cpu", weights_only=True)
    config = yaml.safe_load(state["multimodal_config"])
    config["model"]["init_args"]["fusion"] = {"class_path": "os.system", "init_args": {}}
    paths["untrusted"] = broken / "untrusted.ckpt"
    torch.save({**state, "multimodal_config": yaml.safe_dump(config)}, paths["untrusted"])
    config = yaml.safe_load(state["multimodal_config"])
    config["model"]["init_args"]["text"]["init_args"]["model_kwargs"] = {"trust_remote_code": True}
    paths["remote"] = broken / "remote.ckpt"
    torch.save({**state, "multimodal_config": yaml.safe_dump(config)}, paths["remote"])
    paths["photo"] = broken / "broken.jpg"
    paths["photo"].write_bytes(b"not a jpeg")
    (broken / "empty-folder").mkdir()
    paths["empty_folder"] = broken / "empty-folder"
    paths["mine"] = broken / "my_catalogue.jsonl"
    paths["mine"].write_text('{"id": "1", "title": "mine"}\n')
    paths["foreign_dir"] = broken / "holiday-photos"
    paths["foreign_dir"].mkdir()
    (paths["foreign_dir"] / "beach.txt").write_text("keep me")
    writes = {
        "no_title.csv": df.drop(columns="title").to_csv(index=False),
        "empty.csv": "",
        "catalogue.txt": "id,image,title\n",
        "bad.jsonl": '{"id": "1", "image": "1.jpg", "title": "a"}\n{"id": 2, "ima\n',
    }
    for name, text in writes.items():
        (broken / name).write_text(text)
    pq.write_table(pa.table({"id": ["1", "2"], "image": ["a.jpg", "b.jpg"], "title": [["x"], ["y"]]}),
                   broken / "list_titles.parquet")  # fmt: skip
    pq.write_table(pa.table({"id": ["1"], "image": ["a.jpg"], "title": [b"\xff\xfe"]}), broken / "latin.parquet")
    return paths


P = "predict"
# (name, argv builder over the world's paths, text the one error line must contain)
CASES: list[tuple[str, Callable[[dict[str, Path]], list[str]], str]] = [
    ("missing checkpoint", lambda w: [P, "--ckpt_path", str(w["root"] / "no.ckpt"), "--out", "o.jsonl"], "no.ckpt"),
    ("foreign pickle", lambda w: [P, "--ckpt_path", str(w["pickle"]), "--out", "o.jsonl"], "arguments.ckpt is not a checkpoint"),
    ("text as checkpoint", lambda w: [P, "--ckpt_path", str(w["text"]), "--out", "o.jsonl"], "notes.ckpt is not a checkpoint"),
    ("no stored config", lambda w: [P, "--ckpt_path", str(w["no_config"]), "--out", "o.jsonl"], "no stored config"),
    ("untrusted class", lambda w: [P, "--ckpt_path", str(w["untrusted"]), "--out", "o.jsonl"], "'os.system'"),
    ("remote code", lambda w: [P, "--ckpt_path", str(w["remote"]), "--out", "o.jsonl"], "trust_remote_code"),
    ("batch size 0", lambda w: [*tag(w), "--batch_size", "0"], "--batch_size must be positive"),
    ("negative block", lambda w: [*tag(w), "--block_size", "-4"], "--block_size must be positive"),
    ("negative workers", lambda w: [*tag(w), "--num_workers", "-1"], "--num_workers must be 0 or more"),
    ("top_k 0", lambda w: [*tag(w), "--top_k", "0"], "--top_k must be positive"),
    ("top_k into csv", lambda w: [*tag(w, "t.csv"), "--top_k", "2"], "use a .jsonl"),
    ("input missing", lambda w: [*tag(w, manifest=w["root"] / "nowhere.csv")], "nowhere.csv"),
    ("no title column", lambda w: tag(w, manifest=w["root"] / "broken" / "no_title.csv"), "missing column(s) ['title']"),
    ("empty manifest", lambda w: tag(w, manifest=w["root"] / "broken" / "empty.csv"), "empty.csv"),
    ("unknown format", lambda w: tag(w, manifest=w["root"] / "broken" / "catalogue.txt"), "unknown format '.txt'"),
    ("cut JSONL line", lambda w: tag(w, manifest=w["root"] / "broken" / "bad.jsonl"), "bad.jsonl line 2"),
    ("list cells", lambda w: tag(w, manifest=w["root"] / "broken" / "list_titles.parquet"), "row 0, column 'title'"),
    ("non-UTF-8 bytes", lambda w: tag(w, manifest=w["root"] / "broken" / "latin.parquet"), "not UTF-8"),
    ("out is not ours", lambda w: tag(w, str(w["mine"])), "my_catalogue.jsonl exists and is not the output"),
    ("out is a folder", lambda w: tag(w, str(w["empty_folder"])), "is a folder"),
    ("out suffix", lambda w: tag(w, "tags.txt"), "must end in .jsonl or .csv"),
    ("empty photo folder", lambda w: tag(w, manifest=w["empty_folder"]), "no image files"),
    ("tagger to export", lambda w: ["export", *tag(w, "emb2")[1:]], "ProductTagger checkpoint, not a ProductRetriever"),
    ("export into a foreign folder", lambda w: ["export", *vec(w, str(w["foreign_dir"]))], "holiday-photos"),
    ("export batch 0", lambda w: ["export", *vec(w, "emb3"), "--batch-size", "0"], "--batch_size must be positive"),
    ("tagger to caption", lambda w: ["caption", *tag(w, "c.jsonl")[1:]], "not a ProductCaptioner"),
    ("caption tokens 0", lambda w: ["caption", *cap(w), "--max_new_tokens", "0"], "--max_new_tokens must be positive"),
    ("caption beams 0", lambda w: ["caption", *cap(w), "--num_beams", "0"], "--num_beams must be positive"),
    ("caption over my file", lambda w: ["caption", *cap(w, str(w["mine"]))], "is not the output of this job"),
    ("index of nothing", lambda w: ["index", str(w["root"] / "no-export"), "--out", "i"], "not an embedding export"),
    ("index over a folder", lambda w: ["index", str(w["export"]), "--out", str(w["foreign_dir"])], "not a search index"),
    ("search no index", lambda w: ["search", str(w["root"] / "no-index"), "--text", "watch"], "not a search index"),
    ("search empty text", lambda w: ["search", str(w["index"]), "--text", "  "], "empty query text"),
    ("search k 0", lambda w: ["search", str(w["index"]), "--text", "watch", "-k", "0"], "k=0 is outside 1..12"),
    ("like with k 0", lambda w: ["search", str(w["index"]), "--like", "1580", "-k", "0"], "k=0 is outside 1..12"),
    ("search k too big", lambda w: ["search", str(w["index"]), "--text", "watch", "-k", "13"], "outside 1..12"),
    ("query photo missing", lambda w: ["search", str(w["index"]), "--image", "nope.jpg"], "nope.jpg"),
    ("query photo corrupt", lambda w: ["search", str(w["index"]), "--image", str(w["photo"])], "broken.jpg"),
    ("unknown product", lambda w: ["search", str(w["index"]), "--like", "no-such-id"], "'no-such-id' is not in"),
    ("unknown command", lambda w: ["serve-me"], "unknown command 'serve-me'"),
    ("serve timeout under batch", lambda w: ["serve", "--index", str(w["index"]), "--timeout", "0.001"], "--timeout 0.001 must be longer than --batch_timeout 0.01"),
    ("fit trainer typo", lambda w: [*fit(w), "--trainer.max_stepz", "3"], "unknown option 'max_stepz' for lightning.pytorch.Trainer: did you mean 'max_steps'?"),
    ("fit data typo", lambda w: [*fit(w), "--data.init_args.batchsize", "3"], "did you mean 'batch_size'?"),
    ("fit fusion typo", lambda w: [*fit(w), "--model.init_args.fusion.init_args.dimm", "3"], "did you mean 'dim'?"),
    ("fit batch 0", lambda w: [*fit(w), "--data.init_args.batch_size", "0"], "data.batch_size must be positive"),
    ("fit fractions", lambda w: [*fit(w), "--data.init_args.val_fraction", "1.5"], "data.val_fraction"),
    ("fit from a pickle", lambda w: [*fit(w), "--ckpt_path", str(w["pickle"])], "arguments.ckpt is not a checkpoint"),
    ("fit from a retriever", lambda w: [*fit(w), "--ckpt_path", str(w["retriever"])],
     "holds a ProductRetriever; the config builds a ProductTagger"),
    ("fit other width", lambda w: [*fit(w), "--model.init_args.fusion.init_args.dim", "48", "--ckpt_path",
                                   str(w["tagger"])], "another architecture"),
    ("test a retriever", lambda w: ["test", *fit(w)[1:], "--ckpt_path", str(w["retriever"])],
     "ProductRetriever checkpoint, not a ProductTagger"),
    ("test a pickle", lambda w: ["test", *fit(w)[1:], "--ckpt_path", str(w["pickle"])], "not a checkpoint"),
]  # fmt: skip


def tag(w: dict[str, Path], out: str = "tags.jsonl", manifest: Path | None = None) -> list[str]:
    return [P, "--ckpt_path", str(w["tagger"]), "--data.manifest", str(manifest or w["manifest"]),
            "--data.image_root", str(SAMPLE_IMAGES), "--out", out, "--no_progress"]  # fmt: skip


def vec(w: dict[str, Path], out: str) -> list[str]:
    return ["--ckpt_path", str(w["retriever"]), "--data.manifest", str(w["manifest"]), "--data.image_root",
            str(SAMPLE_IMAGES), "--out", out, "--no_progress"]  # fmt: skip


def cap(w: dict[str, Path], out: str = "c.jsonl") -> list[str]:
    return ["--ckpt_path", str(w["captioner"]), "--input", str(w["manifest"]), "--image_root", str(SAMPLE_IMAGES),
            "--out", out, "--no_progress"]  # fmt: skip


def fit(w: dict[str, Path]) -> list[str]:
    return ["fit", "--config", str(TINY_CONFIGS["tagger"]), "--data.init_args.manifest", str(SAMPLE_MANIFEST),
            "--data.init_args.image_root", str(SAMPLE_IMAGES), "--trainer.max_steps", "1",
            "--trainer.default_root_dir", str(w["root"] / "fit")]  # fmt: skip


def snapshot(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_corpus_is_large() -> None:
    assert len(CASES) >= 40 and len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("name", "argv", "message"), CASES, ids=[c[0] for c in CASES])
def test_user_mistake(
    name: str, argv: Callable[[dict[str, Path]], list[str]], message: str, world: dict[str, Path],
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)  # relative --out paths land here
    args = argv(world)
    before = snapshot(world["root"])
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2, name
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert message in errors[0], (message, errors[0])
    if not name.startswith("unknown command"):
        assert len(lines) <= 3, err[-3000:]  # the error line, and at most a Lightning notice or two
    after = snapshot(world["root"])
    changed = [p for p in before if after.get(p) != before[p]]
    assert not changed, changed  # every file that was there is unchanged (and still there)
    assert json.dumps(sorted(set(after) - set(before)))  # new files only as a job's own lock or run folder
    assert all("/fit/" in p or p.endswith(".lock") for p in set(after) - set(before)), set(after) - set(before)
