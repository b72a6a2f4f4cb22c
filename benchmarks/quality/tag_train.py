"""Training one tagger variant with ``lightning.Trainer.fit`` and predicting the test split, also as a user runs it
(its checkpoint with real towers, on each ``--runtimes`` runtime)."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import say, seed_all
from benchmarks.quality.tag_decisions import LABEL, probabilities, train_label_counts, val_tuned_row
from benchmarks.quality.tag_variants import build_tagger, tagger_config
from benchmarks.quality.towers import RUNTIMES, deployable_checkpoint, runtime_apis


def progress_callback(variant: str, every: int) -> Any:
    import lightning as L

    class Progress(L.Callback):
        """Prints loss and speed every ``every`` steps and the val scores after every epoch."""

        def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.t0, self.seen = time.perf_counter(), 0

        def on_train_batch_end(
            self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
        ) -> None:
            self.seen += len(batch["ids"])
            if (i + 1) % every == 0:
                loss = float(outputs["loss"]) if isinstance(outputs, dict) else float("nan")
                rate = self.seen / (time.perf_counter() - self.t0)
                say(
                    f"{variant}: epoch {trainer.current_epoch} step {i + 1}/{trainer.num_training_batches} "
                    f"loss {loss:.3f} ({rate:.1f} samples/s)"
                )

        def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            # Not on_validation_epoch_end: callbacks run before the task's hook that logs this epoch's metrics.
            m = trainer.callback_metrics
            if "val/mean_macro_f1" in m:
                say(
                    f"{variant}: epoch {trainer.current_epoch} val mean acc {float(m['val/mean_acc']):.3f} "
                    f"mean macro-F1 {float(m['val/mean_macro_f1']):.3f}"
                )

    return Progress()


def run_tagger(
    args: argparse.Namespace, variant: str, dm: Any, work: Path, cache: dict[str, torch.Tensor] | None
) -> tuple[dict[str, dict[str, str]], dict[str, Any]]:
    """Fit one tagger with ``lightning.Trainer.fit``; predict the test split with the selected epoch."""
    seed_all(args.seed)
    model = build_tagger(args, variant, cache)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    say(f"{variant}: {trainable / 1e6:.2f}M trainable parameters; {len(dm.splits['train'])} train products")
    trainer, ckpt = _trainer(args, variant, work)
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    fit_s = time.perf_counter() - t0
    ckpt_path = "best" if args.select == "best" and ckpt.best_model_path else None
    best_epoch = None
    if ckpt_path:
        best_epoch = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True).get("epoch")
    say(f"{variant}: fit took {fit_s:.0f}s; testing {'best epoch ' + str(best_epoch) if ckpt_path else 'last epoch'}")
    tm = trainer.test(model, datamodule=dm, ckpt_path=ckpt_path, verbose=False)[0]
    ids, probs = probabilities(trainer, model, dm, "test", ckpt_path)
    val = probabilities(trainer, model, dm, "val", ckpt_path)
    tuned = val_tuned_row(val, (ids, probs), model.vocabularies, train_label_counts(dm, args.attributes), dm)
    preds = {i: {a: model.vocabularies[a][int(probs[a][k].argmax())] for a in args.attributes}
             for k, i in enumerate(ids)}  # fmt: skip
    runtimes = runtime_predictions(args, variant, model.cpu().eval(), dm, work) if args.runtimes else {}
    runtimes[LABEL] = tuned
    info = {
        "fit_seconds": round(fit_s, 1),
        "trainable_params": trainable,
        "selected_epoch": best_epoch,
        "best_val_mean_macro_f1": float(ckpt.best_model_score) if ckpt.best_model_score is not None else None,
        "torchmetrics_test_mean_macro_f1": tm.get("test/mean_macro_f1"),
        "torchmetrics_test_mean_acc": tm.get("test/mean_acc"),
        "skipped_products": len(dm.skipped),
    }
    _sizes_and_cleanup(info, work, trainable)
    info["train_samples_per_s"] = round(len(dm.splits["train"]) * trainer.current_epoch / fit_s, 1)
    info["runtimes"] = runtimes
    return preds, info


def _trainer(args: argparse.Namespace, variant: str, work: Path) -> tuple[Any, Any]:
    """The CPU trainer, with a checkpoint of the epoch with the best val mean macro-F1 (weights only)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt = ModelCheckpoint(dirpath=work / "checkpoints", monitor="val/mean_macro_f1", mode="max", save_top_k=1,
                           filename="best", save_weights_only=True, enable_version_counter=False)  # fmt: skip
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(work),
                        callbacks=[ckpt, progress_callback(variant, every=10)])  # fmt: skip
    return trainer, ckpt


def _sizes_and_cleanup(info: dict[str, Any], work: Path, trainable: int) -> None:
    """Record the checkpoint's size and that of what training changed, then delete the checkpoints: hundreds of MB
    each, and the predictions are what the benchmark keeps."""
    saved = list((work / "checkpoints").glob("*.ckpt"))
    info["checkpoint_mb"] = round(saved[0].stat().st_size / 1e6, 1) if saved else None
    info["trained_weights_mb"] = round(4 * trainable / 1e6, 1)  # fp32 bytes of what training changed
    for p in [*saved, work / "deployed.ckpt"]:
        p.unlink(missing_ok=True)
    shutil.rmtree(work / "onnx", ignore_errors=True)


def runtime_predictions(
    args: argparse.Namespace, variant: str, model: Any, dm: Any, work: Path
) -> dict[str, tuple[dict[str, dict[str, str]], dict[str, Any]]]:
    """The trained tagger as a user runs it (its checkpoint with real towers; ONNX Runtime fp32 and int8 from
    ``multimodal export-model``'s code), predicting the test split through the Python API (``predict_proba``)."""
    import numpy as np
    import pandas as pd

    data_args = {"id_column": "id", "image_column": "image", "text_columns": args.text_columns,
                 "attributes": args.attributes}  # fmt: skip
    ckpt, pretrained = deployable_checkpoint(model, tagger_config(args, variant), data_args, work / "deployed.ckpt")
    say(f"{variant}: deployable checkpoint ({len(pretrained)} tower tensors from the pretrained files)")
    apis, export = runtime_apis(ckpt, work, args.runtimes)
    test = dm.splits["test"]
    df = pd.DataFrame(
        [{"id": r.id, "image": str(Path(args.image_root) / r.image) if r.image else None, **r.texts} for r in test]
    )
    probs: dict[str, dict[str, pd.DataFrame]] = {}
    out: dict[str, tuple[dict[str, dict[str, str]], dict[str, Any]]] = {}
    for label, api in apis.items():
        start = time.perf_counter()
        probs[label] = api.predict_proba(df)
        seconds = time.perf_counter() - start
        preds = {i: {a: str(probs[label][a].loc[i].idxmax()) for a in args.attributes} for i in df["id"]}
        info: dict[str, Any] = {"predict_seconds": round(seconds, 1), "products": len(df)}
        if label != RUNTIMES["torch"] and export:
            info["export_seconds"] = export["export_seconds"]
            info["max_abs_diff_at_export"] = {g: v["max_abs_diff"] for g, v in export["graphs"].items()}
        out[label] = (preds, info)
        say(f"{variant} [{label}]: predicted {len(df)} test products in {seconds:.1f}s")
    reference = RUNTIMES["torch"] if RUNTIMES["torch"] in probs else None
    for label, (preds, info) in out.items():
        if reference and label != reference:
            ref_probs, ref_preds = probs[reference], out[reference][0]
            info["max_abs_prob_diff_vs_torch"] = float(
                max(np.nanmax(np.abs(probs[label][a].to_numpy() - ref_probs[a].to_numpy())) for a in args.attributes)
            )
            same = sum(preds[i][a] == ref_preds[i][a] for i in preds for a in args.attributes)
            info["top1_same_as_torch"] = round(same / (len(preds) * len(args.attributes)), 4)
    return out
