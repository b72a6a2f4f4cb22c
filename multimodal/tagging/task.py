"""Tagging's declaration in the task contract (:mod:`multimodal.task`)."""

from multimodal.task import OnnxParts, Serving, Task

TASK = Task(
    name="tagging",
    model="multimodal.tagging.tagger.ProductTagger",
    api="multimodal.tagging.predictor.Tagger",
    job="multimodal.tagging.job.tag_rows",
    row_schema="multimodal.tagging.job.row_schema",
    serving=Serving(route="tag", setting="tagger", api="multimodal.serve.tag_api.TagAPI"),
    onnx=OnnxParts(
        graphs="multimodal.onnx.graphs.tagger_graphs",
        settings="multimodal.onnx.export.tagger_settings",
        runtime="multimodal.onnx.runtime.OnnxTagger",
        lite="multimodal.lite.tagging",
    ),
)
