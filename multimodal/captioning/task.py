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
    # The full install generates on torch (HF ``generate``); the torch-free runtime decodes the exported graphs.
    onnx=OnnxParts(
        graphs="multimodal.onnx.graphs.captioner_graphs",
        settings="multimodal.lite.captioning.captioner_settings",
        lite="multimodal.lite.captioning",
    ),
)
