"""Search's declaration in the task contract (:mod:`multimodal.task`): a retriever, served through its index."""

from multimodal.task import OnnxParts, Serving, Task

TASK = Task(
    name="search",
    model="multimodal.search.retriever.ProductRetriever",
    api="multimodal.search.predictor.Retriever",
    job="multimodal.search.job.export_vectors",
    row_schema="multimodal.search.job.row_schema",
    command="export",
    block_size=8192,  # vectors are small: fewer, larger shards
    serving=Serving(
        route="search", setting="index", api="multimodal.serve.search_api.SearchAPI", reads_checkpoint=False
    ),
    onnx=OnnxParts(
        graphs="multimodal.onnx.graphs.retriever_graphs",
        settings="multimodal.onnx.export.retriever_settings",
        runtime="multimodal.onnx.runtime.OnnxRetriever",
        lite="multimodal.lite.retrieval",
    ),
)
