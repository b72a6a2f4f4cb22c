"""Subcommands of ``multimodal`` beyond Lightning's fit/validate/test/predict (export, index, search, caption)."""
