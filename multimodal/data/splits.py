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
    manifest: Path, image_root: Path, confine_images: bool, columns: DataColumns, rule: SplitRule, bad: BadRow
) -> dict[str, list[ProductRecord]]:
    """The records of every usable row of ``manifest`` by split; ``bad`` is told of each row with an empty or
    repeated id, or an image that is missing (or, with ``confine_images``, outside ``image_root``)."""
    df = read_manifest(manifest, columns.required)
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
        image = clean_value(rec[columns.image])
        if image is not None:
            try:
                path = resolve_image_path(image_root, image, confine_images)
                if not path.is_file():
                    raise BadSampleError(f"image not found: {path}")
            except BadSampleError as err:
                bad(row, item_id, f"{manifest} row {row} (id {item_id}): {err}")
                continue
        out[split].append(
            ProductRecord(
                row=row,
                id=item_id,
                image=image,
                texts={c: clean_value(rec[c]) for c in columns.texts},
                labels={a: clean_value(rec[a]) for a in columns.attributes},
                tags={c: split_tags(clean_value(rec[c]), columns.tag_separator) for c in columns.tags},
            )
        )
    if not any(out.values()):
        raise UserError(f"manifest {manifest}: no usable product (all {len(df)} rows skipped)")
    return out


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
