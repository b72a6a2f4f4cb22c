"""The model card: what a trained checkpoint was trained on, with which settings, and how well it did.

``multimodal fit`` writes ``MODEL_CARD.md`` and ``model_card.json`` beside the checkpoints of a run; ``validate``
and ``test --ckpt_path`` add their scores and plots to it. Tasks report what they measured through
:class:`multimodal.model_card.report.EvaluationReports`; nothing here names a task.
"""
