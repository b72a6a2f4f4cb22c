"""Vision and text encoders: thin adapters over open_clip, timm and Hugging Face models.

Submodules are imported on use (``encoders.timm_encoder``, ``encoders.open_clip_encoder``, ``encoders.hf_vision``,
``encoders.text``) so that importing the shared types stays cheap.
"""

from encoders.types import Features, TextEncoder, VisionEncoder

__all__ = ["Features", "TextEncoder", "VisionEncoder"]
