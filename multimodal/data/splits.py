"""A training manifest read into split records: every row checked (its id, its image path), a bad one refused or
skipped through the caller's policy, and the label vocabularies of the training split."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from multimodal.data.dataset import ProductRecord
from multimodal.data.images import resolve_image_path
from multimodal.data.manifest import (
    SPLITS,
    assign_splits,
    build_tag_vocabulary,
    build_vocabulary,
    clean_value,
    read_manifest,
    split_tags,
)
from multimodal.data.photo_reader import PhotoReader
from multimodal.data.photos import DEFAULT_MAX_IMAGES, Photo, kept_photos, photo_list
from multimodal.errors import BadSampleError, UserError

# (row, product id, one-line message) of a row that cannot be used: the caller raises or records it
BadRow = Callable[[int, str, str], None]


@dataclass(frozen=True)
class DataColumns:
    """Which manifest columns hold the id, the image path, the texts, the attributes and the tags."""

    id: str
    image: str
    texts: list[str]
    attributes: list[str]
    tags: list[str]
    tag_separator: str
    max_images: int = DEFAULT_MAX_IMAGES

    @property
    def required(self) -> list[str]:
        """Every column the manifest must have."""
        return [self.id, self.image, *self.texts, *self.attributes, *self.tags]


@dataclass(frozen=True)
class SplitRule:
    """How rows are split: a split column when present, else a stable hash of the id with these shares."""

    column: str | None
    val_fraction: float
    test_fraction: float
    salt: str


def read_splits(
    manifest: Path,
    photos: PhotoReader,
    columns: DataColumns,
    rule: SplitRule,
    bad: BadRow,
    bad_photo: BadRow | None = None,
) -> dict[str, list[ProductRecord]]:
    """The records of every usable row of ``manifest`` by split; ``bad`` is told of each row with an empty or
    repeated id, or whose local photos are all missing (or, with ``confine_images``, outside the image root);
    ``bad_photo`` of each missing photo of a product that keeps others (it is left out of the record)."""
    df = read_manifest(manifest, columns.required, photos=[columns.image])
    splits = assign_splits(df, columns.id, rule.column, rule.val_fraction, rule.test_fraction, rule.salt)
    out: dict[str, list[ProductRecord]] = {s: [] for s in SPLITS}
    seen: dict[str, int] = {}
    for row, (rec, split) in enumerate(zip(df.to_dict("records"), splits, strict=True)):
        item_id = clean_value(rec[columns.id])
        if item_id is None or item_id in seen:
            what = "an empty id" if item_id is None else f"duplicate id '{item_id}' (first at row {seen[item_id]})"
            bad(row, str(item_id), f"{manifest} row {row}: {what} in column '{columns.id}'")
            continue
        seen[item_id] = row
        where = f"{manifest} row {row} (id {item_id})"
        listed, ignored = kept_photos(
            photo_list(rec[columns.image], f"{where}, column '{columns.image}'"), columns.max_images
        )
        found, missing = _found_photos(listed, photos)
        if listed and not found:
            bad(row, item_id, f"{where}: {missing[0]}")
            continue
        for message in missing:
            if bad_photo is not None:
                bad_photo(row, item_id, f"{where}: {message}")
        out[split].append(
            ProductRecord(
                row=row,
                id=item_id,
                photos=found,
                texts={c: clean_value(rec[c]) for c in columns.texts},
                labels={a: clean_value(rec[a]) for a in columns.attributes},
                tags={c: split_tags(clean_value(rec[c]), columns.tag_separator) for c in columns.tags},
                ignored_photos=ignored,
            )
        )
    if not any(out.values()):
        raise UserError(f"manifest {manifest}: no usable product (all {len(df)} rows skipped)")
    return out


def _found_photos(photos: list[Photo], reader: PhotoReader) -> tuple[list[Photo], list[str]]:
    """The photos that exist (a URL is taken as it is: it is fetched when read), and why the others do not."""
    found, missing = [], []
    for photo in photos:
        try:
            if isinstance(photo, str) and reader.url(photo) is None:
                local_root = reader.root if isinstance(reader.root, Path) else None
                path = resolve_image_path(local_root, photo, reader.confine and local_root is not None)
                if not path.is_file():
                    raise BadSampleError(f"image not found: {path}")
            found.append(photo)
        except BadSampleError as err:
            missing.append(str(err))
    return found, missing


def training_vocabularies(
    train: list[ProductRecord], attributes: list[str], tag_columns: list[str], manifest: Path
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Label vocabularies per attribute and per tag column, from the training split's known values."""
    if (attributes or tag_columns) and not train:
        raise UserError(f"manifest {manifest}: the training split is empty")
    vocab = {a: build_vocabulary([r.labels[a] for r in train]) for a in attributes}
    tags = {c: build_tag_vocabulary([r.tags[c] for r in train]) for c in tag_columns}
    for name, values in {**vocab, **tags}.items():
        if not values:
            raise UserError(f"column '{name}': no known value in the training split of {manifest}")
    return vocab, tags
