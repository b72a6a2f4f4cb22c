"""The interface every fusion block implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import nn

from encoders.types import Features


class FusionBlock(nn.Module, ABC):
    """Fuses vision and text features into one :class:`Features`.

    Every block takes the two input widths first, so a config can name the block and its own settings and the
    task supplies the widths of the encoders it was given: ``fusion(vision.output_dim, text.output_dim)``.

    Args:
        vision_dim: width ``Dv`` of the vision tokens and pooled vector.
        text_dim: width ``Dt`` of the text tokens and pooled vector.
    """

    output_dim: int

    def __init__(self, vision_dim: int, text_dim: int) -> None:
        super().__init__()
        self.vision_dim = vision_dim
        self.text_dim = text_dim

    @abstractmethod
    def forward(self, vision: Features, text: Features) -> Features:
        """Fuse ``vision`` (tokens ``(B, Nv, Dv)``) and ``text`` (tokens ``(B, Nt, Dt)``).

        Returns:
            fused tokens ``(B, N, output_dim)`` with their mask ``(B, N)``, and pooled ``(B, output_dim)``.
            A masked input position never changes any output; masked output tokens are zero.
        """
