"""What the quality benchmarks share or keep out of their programs: scoring, frozen-tower feature caches, trained
models rebuilt as users run them, and each program's models, data and reports.

The programs (``benchmarks.tagging_quality``, ``caption_quality``, ``retrieval_quality``, ``caption_rerank_grid``)
read top to bottom; the modules here hold the steps they name.
"""
