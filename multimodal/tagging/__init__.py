"""Tagging: ProductTagger (attribute and tag heads), its metrics, zero-shot tagging."""
