"""Zero-shot tagging with a trained retriever: score products against one prompt per attribute value.

No tagging head: each attribute value becomes a prompt (``"a photo of a {value}"``), the text tower embeds the
prompts, and a product gets the value whose prompt is most similar to its vector.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from multimodal.errors import UserError

TextEmbedder = Callable[[list[str]], Tensor]


def prompts(values: Sequence[str], template: str = "a photo of a {value}") -> list[str]:
    """One prompt per value; ``template`` must contain ``{value}``."""
    if "{value}" not in template:
        raise UserError(f"zero-shot template '{template}' has no {{value}} placeholder")
    return [template.format(value=v) for v in values]


class ZeroShotTagger:
    """Predicts attribute values by nearest prompt.

    Args:
        embed_text: maps a list of strings to L2-normalised vectors ``(n, E)`` (e.g. a retriever's text tower).
        vocabularies: attribute -> its values.
        template: prompt template with ``{value}``.
    """

    def __init__(
        self, embed_text: TextEmbedder, vocabularies: dict[str, list[str]], template: str = "a photo of a {value}"
    ) -> None:
        self.vocabularies = vocabularies
        with torch.inference_mode():
            self.prompt_vectors = {a: embed_text(prompts(v, template)).float() for a, v in vocabularies.items() if v}

    def scores(self, product_vectors: Tensor) -> dict[str, Tensor]:
        """Similarity of every product ``(N, E)`` to every value's prompt: attribute -> ``(N, V)``."""
        return {a: product_vectors.float() @ p.t() for a, p in self.prompt_vectors.items()}

    def predict(self, product_vectors: Tensor) -> dict[str, list[str]]:
        """The best value per attribute for each product."""
        out = {}
        for a, s in self.scores(product_vectors).items():
            vocab = self.vocabularies[a]
            out[a] = [vocab[i] for i in s.argmax(-1).tolist()]
        return out
