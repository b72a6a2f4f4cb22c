"""``MODEL_CARD.md``: the card's JSON rendered for people (data, training, evaluations with plots, settings)."""

from __future__ import annotations

from typing import Any

import yaml

MD_MARK = "<!-- model card written by `multimodal`"  # the first line of every MODEL_CARD.md of ours


def render(card: dict[str, Any]) -> str:
    """The Markdown text of ``card`` (links are relative to the card's folder, as the JSON stores them)."""
    lines = [
        f"{MD_MARK}: `fit` writes it, `validate` / `test --ckpt_path` add to it; edit a copy, not this file -->",
        f"# Model card: {card.get('task')}",
        "",
        f"Updated {card.get('updated')} by `{card.get('updated_by')}`; the same content as data: `model_card.json`.",
        "",
        "## Training data",
        *_data(card.get("data"), "the card was written after training: the manifest as configured"),
        "## Training",
        *_training(card.get("training") or {}),
    ]
    for entry in (card.get("evaluations") or {}).values():
        lines += _evaluation(entry, card.get("data"))
    lines += ["## Settings", "", "The resolved config, as stored in the checkpoints:", "", "```yaml"]
    lines += [yaml.safe_dump(card.get("settings") or {}, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


def _data(data: dict[str, Any] | None, missing: str, training: dict[str, Any] | None = None) -> list[str]:
    if not data:
        return [f"Not recorded ({missing}).", ""]
    sha = f"`{data['sha256']}`" if data.get("sha256") else "not hashed (not a local file)"
    lines = [f"- manifest: `{data.get('manifest')}`", f"- sha256: {sha}"]
    if training and data.get("sha256") and _file(data) == _file(training):
        lines = [f"- manifest: `{data.get('manifest')}`, the same file as in training (same sha256)"]
    rows = data.get("rows") or {}
    if rows:
        lines.append("- products per split: " + ", ".join(f"{k} {v}" for k, v in rows.items()))
    if "skipped_products" in data:
        lines.append(f"- skipped: {data['skipped_products']} product(s), {data.get('skipped_photos', 0)} photo(s)")
    for s in data.get("skipped_examples") or []:
        lines.append(f"  - `{s.get('id')}` (row {s.get('row')}): {s.get('reason')}")
    for split, per in (data.get("unseen_labels") or {}).items():
        for column, counts in per.items():
            shown = ", ".join(f"{label} {n}" for label, n in counts.items())
            lines.append(f"- {split} labels never seen in training (masked), {column}: {shown}")
    return [*lines, ""]


def _file(data: dict[str, Any]) -> tuple[Any, Any]:
    return data.get("manifest"), data.get("sha256")


def _training(training: dict[str, Any]) -> list[str]:
    if not training:
        return ["Not recorded.", ""]
    lines = [f"- status: {training.get('status')}"]
    lines.append(f"- epochs: {training.get('epochs')}, optimizer steps: {training.get('steps')}")
    if training.get("best_checkpoint"):
        score = training.get("best_score")
        shown = f" ({training.get('monitor')} = {score:.4f})" if isinstance(score, float) else ""
        lines.append(f"- best checkpoint: `{training['best_checkpoint']}`{shown}")
    if training.get("last_checkpoint"):
        lines.append(f"- last checkpoint: `{training['last_checkpoint']}`")
    return [*lines, ""]


def _evaluation(entry: dict[str, Any], training_data: dict[str, Any] | None) -> list[str]:
    lines = [f"## {entry.get('stage')}: `{entry.get('checkpoint')}`", ""]
    lines.append(f"Epoch {entry.get('epoch')}, step {entry.get('step')}; outputs in `{entry.get('folder')}/`.")
    if entry.get("status") != "done":
        return [*lines, "", f"Status: {entry.get('status')} (no scores recorded).", ""]
    lines += ["", "### Data", "", *_data(entry.get("data"), "the data module reports no counts", training_data)]
    if entry.get("scores"):
        lines += ["### Scores", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_number(v)} |" for k, v in entry["scores"].items()]
        lines.append("")
    lines += _groups(entry.get("groups") or {})
    plots = entry.get("plots") or {}
    for name, summary in (entry.get("classes") or {}).items():
        lines += _classes(name, summary, plots.get(name, []))
    for name, curve in (entry.get("curves") or {}).items():
        lines += _curve(name, curve, plots.get(name, []))
    return lines


def _groups(groups: dict[str, dict[str, float]]) -> list[str]:
    """One row per group (attribute, tag column...), one column per metric any of them has."""
    if not groups:
        return []
    metrics = list(dict.fromkeys(m for values in groups.values() for m in values))
    lines = ["### Per attribute", "", "| | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, values in groups.items():
        lines.append(f"| {name} | " + " | ".join(_number(values.get(m)) for m in metrics) + " |")
    return [*lines, ""]


def _classes(name: str, summary: dict[str, Any], plots: list[str]) -> list[str]:
    lines = [f"### {name}", "", f"{summary.get('classes')} classes; expected calibration error (ECE) "
             f"{_number(summary.get('ece'))}.", ""]  # fmt: skip
    tables = [("Most frequent classes", "most_frequent"), ("Worst classes by F1", "worst")]
    names = [{r["class"] for r in summary.get(key) or []} for _, key in tables]
    if names[0] == names[1]:  # every class with examples fits in one table
        tables = [("Every class with examples, most frequent first", "most_frequent")]
    for title, key in tables:
        lines += [f"{title}:", "", "| class | support | F1 |", "|---|---|---|"]
        lines += [f"| {r['class']} | {r['support']} | {_number(r['f1'])} |" for r in summary.get(key) or []]
        lines.append("")
    return [*lines, *_images(name, plots)]


def _curve(name: str, curve: dict[str, Any], plots: list[str]) -> list[str]:
    series = curve.get("series") or {}
    x = curve.get("x") or []
    shown = [i for i, k in enumerate(x) if k in (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000)]
    lines = [f"### {curve.get('title')}", "", f"| {curve.get('x_label')} | " + " | ".join(series) + " |"]
    lines.append("|---" * (len(series) + 1) + "|")
    lines += [f"| {x[i]} | " + " | ".join(_number(v[i]) for v in series.values()) + " |" for i in shown]
    return [*lines, "", *_images(name, plots)]


def _images(name: str, plots: list[str]) -> list[str]:
    return [*(f"![{name}: {p.rsplit('/', 1)[-1].removesuffix('.png')}]({p})" for p in plots), ""] if plots else []


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "—" if value is None else str(value)
