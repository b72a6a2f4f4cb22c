"""Benchmarks: programs (not tests) that compare against a peer or the raw limit in the same run.

Run them as ``python -m benchmarks.<name> --help``; results go to ``benchmarks/results/<name>.json``, with the
comparison ratios and the machine's load average. ``--smoke`` checks in seconds that a program still runs.
"""
