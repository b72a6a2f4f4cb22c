"""Multimodal product understanding: tagging, captioning and image-text search on Lightning."""

__version__ = "0.1.0"
