"""Data: manifests in three formats, splits, vocabularies, unknown values, and every kind of bad input."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SAMPLE_IMAGES, SAMPLE_MANIFEST, TinyPreprocessing, write_manifest
from PIL import Image

from multimodal.cli import user_message
from multimodal.data.datamodule import ProductDataModule
from multimodal.data.dataset import IGNORE_INDEX
from multimodal.data.images import load_image, resolve_image_path, to_rgb
from multimodal.data.manifest import clean_value, hash_split, read_manifest
from multimodal.errors import BadSampleError, UserError

POLICIES = ["error", "skip"]


def datamodule(manifest: Path, **kwargs: Any) -> ProductDataModule:
    kwargs.setdefault("image_root", str(SAMPLE_IMAGES))
    kwargs.setdefault("text_columns", ["title"])
    kwargs.setdefault("attributes", ["gender", "masterCategory"])
    kwargs.setdefault("num_workers", 0)
    kwargs.setdefault("batch_size", 4)
    return ProductDataModule(str(manifest), **kwargs)


def ids_by_split(dm: ProductDataModule) -> dict[str, list[str]]:
    return {s: [r.id for r in recs] for s, recs in dm.splits.items()}


# ----------------------------------------------------------------------------------------------- formats
def test_csv_jsonl_parquet_read_the_same(make_manifest: Callable[..., Path]) -> None:
    def edit(df: pd.DataFrame) -> pd.DataFrame:
        df = df.astype(object)
        df.loc[1, "title"] = None  # null in JSONL/Parquet, empty cell in CSV
        df.loc[2, "gender"] = None
        df.loc[3, "gender"] = "NA"
        return df

    paths = [make_manifest(n=40, name=f"m{suffix}", edit=edit) for suffix in (".csv", ".jsonl", ".parquet")]
    dms = [datamodule(p) for p in paths]
    ref = dms[0]
    assert sum(len(v) for v in ref.splits.values()) == 40
    for dm in dms[1:]:
        assert ids_by_split(dm) == ids_by_split(ref)
        assert dm.vocabularies == ref.vocabularies
        for s in ref.splits:
            assert [(r.id, r.image, r.texts, r.labels) for r in dm.splits[s]] == [
                (r.id, r.image, r.texts, r.labels) for r in ref.splits[s]
            ]
    rows = {r.id: r for recs in ref.splits.values() for r in recs}
    df = pd.read_csv(paths[0], dtype=str, keep_default_na=False)
    assert rows[df.id[1]].texts["title"] is None
    assert rows[df.id[2]].labels["gender"] is None and rows[df.id[3]].labels["gender"] is None
    assert rows[df.id[0]].labels["gender"] == df.gender[0]


def test_jsonl_and_parquet_keep_integers_with_nulls(tmp_path: Path) -> None:
    """An integer column with a null reads "2010" (as in CSV), not "2010.0"; integer ids become strings."""
    image = sorted(SAMPLE_IMAGES.iterdir())[0].name
    records = [
        {"id": 1, "image": image, "title": "a", "year": 2010},
        {"id": 2, "image": image, "title": "b", "year": None},
        {"id": 3, "image": image, "title": "c", "year": 2011},
    ]
    df = pd.DataFrame(records, dtype=object)
    for name in ("m.jsonl", "m.parquet"):
        path = tmp_path / name
        if name.endswith(".jsonl"):
            path.write_text("".join(json.dumps(r) + "\n" for r in records))
        else:
            write_manifest(df, path)
        dm = datamodule(path, attributes=["year"], split_column="split", test_fraction=0.0, val_fraction=0.0)
        labels = {r.id: r.labels["year"] for r in dm.splits["train"]}
        assert labels == {"1": "2010", "2": None, "3": "2011"}, name
        assert dm.vocabularies["year"] == ["2010", "2011"]


def test_unknown_manifest_format_and_bad_json(tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_text("id\n1\n")
    with pytest.raises(UserError, match=r"unknown format '\.txt'"):
        read_manifest(tmp_path / "m.txt")
    (tmp_path / "m.jsonl").write_text('{"id": 1}\n{"id": 2,\n')
    with pytest.raises(UserError, match="line 2"):
        read_manifest(tmp_path / "m.jsonl")
    with pytest.raises(UserError, match="manifest not found"):
        read_manifest(tmp_path / "absent.csv")


# ------------------------------------------------------------------------------------------------- splits
def test_hash_split_is_deterministic_and_proportional(tmp_path: Path) -> None:
    ids = [str(i) for i in range(2000)]
    splits = [hash_split(i, 0.1, 0.1) for i in ids]
    share = {s: splits.count(s) / len(ids) for s in ("train", "val", "test")}
    assert abs(share["train"] - 0.8) < 0.03 and abs(share["val"] - 0.1) < 0.02 and abs(share["test"] - 0.1) < 0.02
    # md5-based: the same on every machine and Python run (PYTHONHASHSEED does not matter). Pinned values.
    held_out = {i: s for i, s in zip(ids[:40], splits[:40], strict=True) if s != "train"}
    assert held_out == {"6": "test", "19": "val", "24": "val", "27": "test", "33": "test", "35": "val", "36": "val"}
    assert splits == [hash_split(i, 0.1, 0.1) for i in ids]
    salted = [hash_split(i, 0.1, 0.1, salt="x") for i in ids]
    assert salted != splits


def test_same_ids_same_split_across_instances_and_row_orders(make_manifest: Callable[..., Path]) -> None:
    a = datamodule(make_manifest(n=120, name="a.csv"))
    b = datamodule(make_manifest(n=120, name="b.csv", edit=lambda df: df.iloc[::-1].reset_index(drop=True)))
    split_a = {r.id: s for s, recs in a.splits.items() for r in recs}
    split_b = {r.id: s for s, recs in b.splits.items() for r in recs}
    assert split_a == split_b
    assert {s: list(split_a.values()).count(s) for s in ("val", "test")} != {"val": 0, "test": 0}
    for item_id, split in split_a.items():
        assert split == hash_split(item_id, 0.1, 0.1)
    c = datamodule(make_manifest(n=120, name="c.csv"), split_salt="other")
    assert {r.id: s for s, recs in c.splits.items() for r in recs} != split_a


def test_split_column_wins_and_accepts_aliases(make_manifest: Callable[..., Path]) -> None:
    path = make_manifest(n=12, splits=["train", "Training", "valid", "validation", "test", "train"])
    dm = datamodule(path)
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [6, 4, 2]
    df = pd.read_csv(path, dtype=str)
    assert [r.id for r in dm.splits["test"]] == [df.id[4], df.id[10]]


def test_bad_split_value_names_row_and_column(make_manifest: Callable[..., Path]) -> None:
    path = make_manifest(n=6, splits=["train", "train", "dev"])
    with pytest.raises(UserError, match=r"row 2: split column 'split' has 'dev'"):
        datamodule(path)


# --------------------------------------------------------------------------------- vocabularies and unknowns
def test_vocabularies_come_from_training_split_and_unseen_labels_are_masked(
    make_manifest: Callable[..., Path], tmp_path: Path, preprocessing: TinyPreprocessing
) -> None:
    def edit(df: pd.DataFrame) -> pd.DataFrame:
        df["split"] = ["train"] * 8 + ["val"] * 2 + ["test"] * 2
        df["gender"] = ["Men", "Women", "Men", "", "NA", "Women", " Men ", "null", "Boys", "Men", "Girls", "Boys"]
        return df

    path = make_manifest(n=12, edit=edit)
    report = tmp_path / "out" / "report.json"
    dm = datamodule(path, attributes=["gender"], report_path=str(report))
    assert dm.vocabularies == {"gender": ["Men", "Women"]}  # sorted; unknowns and val/test-only labels left out
    assert dm.report()["unseen_labels"] == {"val": {"gender": {"Boys": 1}}, "test": {"gender": {"Girls": 1, "Boys": 1}}}
    dm.attach(preprocessing)
    train_labels = [dm.dataset("train")[i]["labels"].item() for i in range(8)]
    assert train_labels == [0, 1, 0, IGNORE_INDEX, IGNORE_INDEX, 1, 0, IGNORE_INDEX]
    assert [dm.dataset("val")[i]["labels"].item() for i in range(2)] == [IGNORE_INDEX, 0]
    assert [dm.dataset("test")[i]["labels"].item() for i in range(2)] == [IGNORE_INDEX, IGNORE_INDEX]
    dm.write_report()
    saved = json.loads(report.read_text())
    assert saved["unseen_labels"]["test"]["gender"] == {"Girls": 1, "Boys": 1}
    assert saved["rows"] == {"train": 8, "val": 2, "test": 2}
    assert saved["skipped"] == []


@pytest.mark.parametrize("value", ["", "NA", "N/A", "null", "None", "nan", None, float("nan"), "  "])
def test_missing_values_are_unknown(value: object) -> None:
    assert clean_value(value) is None


def test_known_values_are_stripped_strings() -> None:
    assert clean_value(" Men ") == "Men"
    assert clean_value(2010) == "2010"
    assert clean_value("0") == "0"


def test_tag_columns_split_and_unknown_rows_masked(make_manifest: Callable[..., Path], preprocessing) -> None:
    tags = ["cotton|slim fit", "leather", "NA", "cotton | round neck|", "", "slim fit|leather"]
    path = make_manifest(n=6, splits=["train"], edit=lambda df: df.assign(tags=tags))
    dm = datamodule(path, tag_columns=["tags"], attributes=[])
    assert dm.tag_vocabularies == {"tags": ["cotton", "leather", "round neck", "slim fit"]}
    dm.attach(preprocessing)
    ds = dm.dataset("train")
    hot = torch.stack([ds[i]["tags"]["tags"] for i in range(6)])
    assert hot[0].tolist() == [1, 0, 0, 1]
    assert hot[3].tolist() == [1, 0, 1, 0]
    assert (hot[2] == IGNORE_INDEX).all() and (hot[4] == IGNORE_INDEX).all()


def test_no_labelled_training_rows_fails_fit_only(
    make_manifest: Callable[..., Path], preprocessing: TinyPreprocessing
) -> None:
    """An unlabelled catalogue can be read (for predict with a checkpoint's vocabularies) but not fitted."""
    path = make_manifest(n=8, edit=lambda df: df.assign(gender=""))
    dm = datamodule(path)
    with pytest.raises(UserError, match="column 'gender': no known value in the training split"):
        dm.setup("fit")
    dm.attach(preprocessing)
    with pytest.raises(UserError, match="column 'gender'"):
        dm.dataset("all")
    dm.set_vocabularies({"gender": ["Men", "Women"], "masterCategory": ["Apparel"]}, {})  # from a checkpoint
    assert [it["labels"][0].item() for it in dm.dataset("all")] == [IGNORE_INDEX] * 8
    assert dm.report()["rows"] == {s: len(v) for s, v in dm.splits.items()}


def test_datamodule_state_round_trip(make_manifest: Callable[..., Path]) -> None:
    dm = datamodule(make_manifest(n=30))
    other = datamodule(make_manifest(n=30, name="other.csv"))
    other.load_state_dict(dm.state_dict())
    assert other.vocabularies == dm.vocabularies
    with pytest.raises(UserError, match="attributes"):
        other.set_vocabularies({"colour": ["Red"]}, {})


# ------------------------------------------------------------------------------------------------- batches
def test_collate_builds_a_batch_with_missing_modalities(make_manifest: Callable[..., Path], preprocessing) -> None:
    def edit(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[1, "image"] = ""  # product without a photo
        df.loc[2, "title"] = "NA"  # product without text
        return df

    dm = datamodule(make_manifest(n=6, splits=["train"], edit=edit))
    dm.attach(preprocessing)
    batch = next(iter(dm.loader("train")))
    assert batch["ids"] == [r.id for r in dm.splits["train"][:4]]
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    assert batch["has_image"].tolist() == [True, False, True, True]
    assert batch["has_text"].tolist() == [True, True, False, True]
    assert (batch["pixel_values"][1] == 0).all()
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[0] == 4
    assert batch["attention_mask"][2].sum() == 2  # [CLS] [SEP] of an empty text
    assert batch["labels"].shape == (4, 2)
    assert batch["skipped"] == []
    # Real photos decode to real, distinct pixels.
    assert batch["pixel_values"][0].std() > 0.1
    assert not torch.equal(batch["pixel_values"][0], batch["pixel_values"][2])


def test_worker_processes_decode_the_same_batches(make_manifest: Callable[..., Path], preprocessing) -> None:
    path = make_manifest(n=8, splits=["train"])
    dm0, dm1 = datamodule(path), datamodule(path, num_workers=1)
    dm0.attach(preprocessing)
    dm1.attach(preprocessing)
    for a, b in zip(dm0.loader("train"), dm1.loader("train"), strict=True):
        assert a["ids"] == b["ids"]
        assert torch.equal(a["pixel_values"], b["pixel_values"])
        assert torch.equal(a["input_ids"], b["input_ids"])


# ---------------------------------------------------------------------------------------- image conversion
def _save(img: Image.Image, path: Path, **kwargs: Any) -> Path:
    img.save(path, **kwargs)
    return path


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (8, 4), (255, 0, 0, 255))
    img.paste((0, 0, 255, 0), (0, 0, 4, 4))  # left half fully transparent
    out = load_image(_save(img, tmp_path / "rgba.png"))
    assert out.mode == "RGB" and out.size == (8, 4)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((7, 0)) == (255, 0, 0)


def test_palette_grey_and_bilevel_become_rgb(tmp_path: Path) -> None:
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    assert load_image(_save(p, tmp_path / "p.png")).getpixel((0, 0)) == (10, 200, 30)
    p_alpha = p.copy()
    p_alpha.info["transparency"] = 1  # palette index 1 is transparent -> white
    assert load_image(_save(p_alpha, tmp_path / "pa.png")).getpixel((0, 0)) == (255, 255, 255)
    grey = load_image(_save(Image.new("L", (4, 4), 100), tmp_path / "l.jpg", quality=100))
    assert grey.mode == "RGB" and all(abs(c - 100) <= 1 for c in grey.getpixel((1, 1)))
    bilevel = load_image(_save(Image.new("1", (4, 4), 1), tmp_path / "one.png"))
    assert bilevel.getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    img = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    out = load_image(_save(img, tmp_path / "cmyk.jpg", quality=100))
    assert out.mode == "RGB"
    r, g, b = out.getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60


def test_16_bit_grey_is_rescaled_to_8_bit(tmp_path: Path) -> None:
    ramp = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000).astype(np.uint16)  # 0 .. 60000
    img = Image.fromarray(ramp)
    assert img.mode.startswith("I;16")
    out = load_image(_save(img, tmp_path / "grey16.png"))
    arr = np.asarray(out)
    assert out.mode == "RGB" and arr.dtype == np.uint8
    assert arr[0, 0].tolist() == [0, 0, 0] and arr[3, 3].tolist() == [255, 255, 255]
    assert (np.diff(arr[..., 0].flatten().astype(int)) >= 0).all()  # order kept
    flat = to_rgb(Image.fromarray(np.full((2, 2), 7, dtype=np.uint16)))  # constant image: no division by zero
    assert np.asarray(flat).max() == 0


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    out = load_image(_save(img, tmp_path / "rotated.jpg", exif=exif, quality=95))
    assert out.size == (20, 40)  # width and height swapped
    top, bottom = out.getpixel((10, 5)), out.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_path_escaping_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    (tmp_path / "secret.jpg").write_bytes(b"x")
    with pytest.raises(BadSampleError, match=r"'\.\./secret\.jpg' escapes the image root"):
        resolve_image_path(root, "../secret.jpg")
    with pytest.raises(BadSampleError, match="escapes"):
        resolve_image_path(root, str(tmp_path / "secret.jpg"))
    (root / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    with pytest.raises(BadSampleError, match="escapes"):
        resolve_image_path(root, "link.jpg")
    assert resolve_image_path(root, "sub/../a.jpg") == (root / "a.jpg").resolve()


# ------------------------------------------------------------------------------------------------ bad input
@pytest.fixture
def catalogue(tmp_path: Path, sample_df: pd.DataFrame) -> Callable[..., Path]:
    """A catalogue in tmp_path: six real products (photos copied) plus extra rows; returns the manifest path."""
    root = tmp_path / "images"
    root.mkdir()
    good = sample_df.iloc[::100].head(6).copy()
    for name in good["image"]:
        shutil.copy(SAMPLE_IMAGES / name, root / name)

    def make(extra: list[dict[str, str]] | None = None, name: str = "catalogue.csv") -> Path:
        rows = good.to_dict("records") + [{**good.iloc[0].to_dict(), **e} for e in extra or []]
        df = pd.DataFrame(rows)
        df["split"] = "train"
        path = tmp_path / name
        write_manifest(df, path)
        return path

    return make


def bad_images(root: Path) -> dict[str, Path]:
    """Unreadable files of several kinds, next to the good ones."""
    real = next(p for p in root.iterdir() if p.suffix == ".jpg").read_bytes()
    files = {
        "corrupt.jpg": b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10,
        "truncated.jpg": real[: len(real) // 2],
        "empty.jpg": b"",
        "text.png": b"hello",
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    return {name: root / name for name in files}


@pytest.mark.parametrize("kind", ["corrupt.jpg", "truncated.jpg", "empty.jpg", "text.png"])
def test_unreadable_image_is_a_bad_sample_naming_the_file(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "images"
    root.mkdir()
    shutil.copy(next(SAMPLE_IMAGES.iterdir()), root / "good.jpg")
    files = bad_images(root)
    with pytest.raises(BadSampleError, match=kind.replace(".", r"\.")):
        load_image(files[kind])
    with pytest.raises(BadSampleError, match="image not found"):
        load_image(root / "missing.jpg")


def test_decompression_bomb_is_a_bad_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(Image.new("RGB", (64, 64)), tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels > 2 x the limit: PIL refuses to decode
    with pytest.raises(BadSampleError, match="huge.png"):
        load_image(path)


@pytest.mark.parametrize("policy", POLICIES)
def test_unreadable_images_under_each_policy(
    catalogue: Callable[..., Path], preprocessing: TinyPreprocessing, policy: str, tmp_path: Path
) -> None:
    root = tmp_path / "images"
    bad = bad_images(root)
    extra = [{"id": f"bad-{i}", "image": name} for i, name in enumerate(bad)]
    report = tmp_path / "report.json"
    dm = datamodule(
        catalogue(extra), image_root=str(root), on_bad_sample=policy, batch_size=20, report_path=str(report)
    )
    dm.attach(preprocessing)
    if policy == "error":
        with pytest.raises(BadSampleError) as info:
            next(iter(dm.loader("train")))
        assert "row 6 (id bad-0)" in str(info.value) and "corrupt.jpg" in str(info.value)
        return
    batch = dm.on_before_batch_transfer(next(iter(dm.loader("train"))), 0)  # the hook Lightning calls
    assert len(batch["ids"]) == 6 and not any(i.startswith("bad") for i in batch["ids"])
    dm.write_report()
    skipped = json.loads(report.read_text())["skipped"]
    assert sorted(s["id"] for s in skipped) == sorted(e["id"] for e in extra)
    for s, name in zip(sorted(skipped, key=lambda s: s["id"]), bad, strict=True):
        assert name in s["reason"]
        assert s["row"] == 6 + int(s["id"].split("-")[1])


def test_worker_error_reaches_the_user_as_one_line(
    catalogue: Callable[..., Path], preprocessing: TinyPreprocessing, tmp_path: Path
) -> None:
    root = tmp_path / "images"
    bad_images(root)
    dm = datamodule(catalogue([{"id": "bad", "image": "truncated.jpg"}]), image_root=str(root), num_workers=1)
    dm.attach(preprocessing)
    with pytest.raises(BadSampleError) as info:
        list(dm.loader("train"))
    line = user_message(info.value)
    assert "\n" not in line and "truncated.jpg" in line and "id bad" in line


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "CMYK", "I;16", "exif"])
@pytest.mark.parametrize("policy", POLICIES)
def test_unusual_images_are_converted_not_rejected(
    catalogue: Callable[..., Path], preprocessing: TinyPreprocessing, tmp_path: Path, mode: str, policy: str
) -> None:
    root = tmp_path / "images"
    photo = Image.open(next(p for p in root.iterdir())).convert("RGB")
    if mode == "exif":
        exif = Image.Exif()
        exif[0x0112] = 8
        photo.save(root / "odd.jpg", exif=exif)
        name = "odd.jpg"
    elif mode == "I;16":
        arr = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        Image.fromarray(arr).save(root / "odd.png")
        name = "odd.png"
    else:
        name = "odd.jpg" if mode in ("L", "CMYK") else "odd.png"
        photo.convert(mode).save(root / name)
    report = tmp_path / "report.json"
    dm = datamodule(
        catalogue([{"id": "odd", "image": name}]), image_root=str(root), on_bad_sample=policy, report_path=str(report)
    )
    dm.attach(preprocessing)
    ds = dm.dataset("train")
    item = ds[len(ds) - 1]
    assert item["id"] == "odd" and "error" not in item
    assert item["pixel_values"].shape == (3, 32, 32) and item["has_image"]
    assert item["pixel_values"].std() > 0.05
    dm.write_report()
    assert json.loads(report.read_text())["skipped"] == []


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(
    ("problem", "row_values", "message"),
    [
        ("missing image", {"id": "x1", "image": "nope.jpg"}, r"row 6 \(id x1\): image not found: .*nope\.jpg"),
        ("escapes root", {"id": "x2", "image": "../outside.jpg"}, r"row 6 \(id x2\): image path '\.\./outside\.jpg'"),
        ("duplicate id", {"image": ""}, r"row 6: duplicate id '\w+' \(first at row 0\) in column 'id'"),
        ("empty id", {"id": "", "image": ""}, r"row 6: an empty id in column 'id'"),
    ],
)
def test_bad_rows_under_each_policy(
    catalogue: Callable[..., Path], tmp_path: Path, problem: str, row_values: dict, message: str, policy: str
) -> None:
    shutil.copy(next((tmp_path / "images").iterdir()), tmp_path / "outside.jpg")  # exists, but outside the root
    path = catalogue([row_values])
    report = tmp_path / "report.json"
    kwargs = {"image_root": str(tmp_path / "images"), "on_bad_sample": policy, "report_path": str(report)}
    kwargs["confine_images"] = problem == "escapes root"  # off by default: the path would be read
    if policy == "error":
        with pytest.raises(UserError, match=message) as info:
            datamodule(path, **kwargs)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
        return
    dm = datamodule(path, **kwargs)
    assert len(dm.splits["train"]) == 6
    dm.write_report()
    saved = json.loads(report.read_text())
    assert len(saved["skipped"]) == 1
    assert saved["skipped"][0]["row"] == 6
    assert pd.Series([saved["skipped"][0]["reason"]]).str.contains(message).all()
    assert saved["rows"]["train"] == 6


@pytest.mark.parametrize("policy", POLICIES)
def test_manifest_missing_a_configured_column(catalogue: Callable[..., Path], policy: str) -> None:
    with pytest.raises(UserError, match=r"missing column\(s\) \['colour'\]; columns present: \['id', 'image'"):
        datamodule(catalogue(), attributes=["gender", "colour"], on_bad_sample=policy)
    with pytest.raises(UserError, match=r"missing column\(s\) \['description'\]"):
        datamodule(catalogue(), text_columns=["title", "description"], on_bad_sample=policy)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", ["empty.csv", "header_only.csv", "empty.jsonl", "empty.parquet"])
def test_empty_manifest(tmp_path: Path, name: str, policy: str) -> None:
    path = tmp_path / name
    if name == "empty.csv" or name == "empty.jsonl":
        path.write_text("")
    elif name == "header_only.csv":
        path.write_text("id,image,title,gender,masterCategory\n")
    else:
        pd.DataFrame({c: pd.Series([], dtype=str) for c in ("id", "image", "title")}).to_parquet(path)
    with pytest.raises(UserError, match=f"manifest {path}.*(empty|could not be read)"):
        datamodule(path, on_bad_sample=policy)


def test_all_rows_bad_is_an_error_even_when_skipping(catalogue: Callable[..., Path], tmp_path: Path) -> None:
    df = pd.read_csv(catalogue(), dtype=str)
    df["image"] = "missing.jpg"
    df.to_csv(tmp_path / "all_bad.csv", index=False)
    with pytest.raises(UserError, match="no usable product"):
        datamodule(tmp_path / "all_bad.csv", image_root=str(tmp_path / "images"), on_bad_sample="skip")


def test_invalid_policy_and_predict_split() -> None:
    with pytest.raises(UserError, match="on_bad_sample"):
        datamodule(SAMPLE_MANIFEST, on_bad_sample="ignore")
    with pytest.raises(UserError, match="predict_split"):
        datamodule(SAMPLE_MANIFEST, predict_split="holdout")


def test_manifest_cells_are_read_by_explicit_rules(tmp_path: Path) -> None:
    """No silent coercion: integer ids stay integers (also when nulls made the column float), bytes are UTF-8
    text, a list cell is refused with its row and column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "typed.parquet"
    table = pa.table(
        {
            "id": pa.array([1580, 1581, None], pa.int64()),
            "code": pa.array([1580.0, None, 2.5], pa.float64()),
            "title": pa.array([b"Nike shoe", "Caf\u00e9 mug".encode(), b"x"], pa.binary()),
            "flag": [True, False, None],
        }
    )
    pq.write_table(table, path)
    df = read_manifest(path, ["id", "code", "title", "flag"])
    assert df["id"].tolist() == ["1580", "1581", None]
    assert df["code"].tolist() == ["1580", None, "2.5"]
    assert df["title"].tolist() == ["Nike shoe", "Caf\u00e9 mug", "x"]
    assert df["flag"].tolist() == ["true", "false", None]
    lists = tmp_path / "lists.jsonl"
    lists.write_text('{"id": "1", "tags": "a|b"}\n{"id": "2", "tags": ["a", "b"]}\n')
    with pytest.raises(UserError, match=r"lists.jsonl row 1, column 'tags': a list cell"):
        read_manifest(lists, ["id", "tags"])
