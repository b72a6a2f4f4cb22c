"""Captioning's declaration in the task contract (:mod:`multimodal.task`)."""

from multimodal.task import OnnxParts, Serving, Task

TASK = Task(
    name="captioning",
    model="multimodal.captioning.captioner.ProductCaptioner",
    api="multimodal.captioning.predictor.Captioner",
    job="multimodal.captioning.job.caption_rows",
    row_schema="multimodal.captioning.job.row_schema",
    command="caption",
    serving=Serving(route="caption", setting="captioner", api="multimodal.serve.caption_api.CaptionAPI"),
    # Only the vision side is exported: generation runs on torch (HF ``generate``), so no ONNX runtime task.
    onnx=OnnxParts(graphs="multimodal.onnx.graphs.captioner_graphs"),
)
