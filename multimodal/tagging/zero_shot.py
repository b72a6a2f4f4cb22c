"""Zero-shot tagging with a trained retriever: score products against prompts built from attribute values.

No tagging head: each attribute value becomes one prompt per template (``"a photo of a {value}"``,
``"{value}"``, ...), the text tower embeds the prompts, the template embeddings of a value are averaged (prompt
ensembling, as in CLIP) and a product gets the value whose prompt vector is most similar to its vector.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from multimodal.errors import UserError

TextEmbedder = Callable[[list[str]], Tensor]
DEFAULT_TEMPLATES = ("a photo of a {value}", "{value}", "a {value} product")


def prompts(values: Sequence[str], template: str = "a photo of a {value}") -> list[str]:
    """One prompt per value; ``template`` must contain ``{value}``."""
    if "{value}" not in template:
        raise UserError(f"zero-shot template '{template}' has no {{value}} placeholder")
    return [template.format(value=v) for v in values]


class ZeroShotTagger:
    """Predicts attribute values by nearest (ensembled) prompt.

    Args:
        embed_text: maps a list of strings to L2-normalised vectors ``(n, E)`` (e.g. a retriever's text tower).
        vocabularies: attribute -> its values.
        templates: prompt templates with ``{value}`` (one string or several); a value's vector is the
            re-normalised mean of its templates' vectors.
    """

    def __init__(
        self,
        embed_text: TextEmbedder,
        vocabularies: dict[str, list[str]],
        templates: str | Sequence[str] = DEFAULT_TEMPLATES,
    ) -> None:
        templates = [templates] if isinstance(templates, str) else list(templates)
        if not templates:
            raise UserError("zero-shot tagging needs at least one prompt template")
        self.vocabularies, self.templates = vocabularies, templates
        self.prompt_vectors: dict[str, Tensor] = {}
        with torch.inference_mode():
            for a, values in vocabularies.items():
                if values:
                    per_template = torch.stack([embed_text(prompts(values, t)).float() for t in templates])  # (T, V, E)
                    self.prompt_vectors[a] = F.normalize(per_template.mean(0), dim=-1)

    def scores(self, product_vectors: Tensor) -> dict[str, Tensor]:
        """Similarity of every product ``(N, E)`` to every value's prompt vector: attribute -> ``(N, V)``."""
        return {a: product_vectors.float() @ p.t() for a, p in self.prompt_vectors.items()}

    def predict(self, product_vectors: Tensor) -> dict[str, list[str]]:
        """The best value per attribute for each product."""
        out = {}
        for a, s in self.scores(product_vectors).items():
            vocab = self.vocabularies[a]
            out[a] = [vocab[i] for i in s.argmax(-1).tolist()]
        return out
