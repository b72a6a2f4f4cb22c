"""Synthetic data of the speed programs: random unit vectors (clustered like embedding catalogues, or uniform on
the sphere) and large catalogues that repeat the committed sample's rows under new ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def random_unit(n: int, dim: int, rng: np.random.Generator, chunk: int = 100_000) -> np.ndarray:
    """``(n, dim)`` float32 rows uniform on the unit sphere, generated in chunks to bound temporary memory."""
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        out[start : start + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def clustered_unit(
    n: int, dim: int, rng: np.random.Generator, centres: np.ndarray, spread: float, chunk: int = 100_000
) -> np.ndarray:
    """``(n, dim)`` float32 unit rows, each a random centre plus Gaussian noise of norm about ``spread``."""
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = centres[rng.integers(0, len(centres), m)]
        x = x + rng.standard_normal((m, dim), dtype=np.float32) * (spread / np.sqrt(dim))
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def vectors_and_queries(
    n: int, queries: int, dim: int, rng: np.random.Generator, clusters: int, spread: float, clustered: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` catalogue vectors and ``queries`` query vectors of one distribution: around ``clusters`` random
    centres (``spread``: noise norm) or, with ``clustered`` false, uniform on the sphere. ``(n, dim), (queries,
    dim)`` float32."""
    if not clustered:
        return random_unit(n, dim, rng), random_unit(queries, dim, rng)
    centres = random_unit(clusters, dim, rng)
    return clustered_unit(n, dim, rng, centres, spread), clustered_unit(queries, dim, rng, centres, spread)


def repeated_catalogue(n: int, source: Path, path: Path) -> Path:
    """A manifest of ``n`` rows at ``path`` repeating the rows of the manifest ``source`` (photos and titles)
    under new ids ``p0000000``, ``p0000001``, ...; row ``i`` repeats source row ``i mod len(source)``."""
    df = pd.read_csv(source, dtype=str, keep_default_na=False)
    rows = df.iloc[[i % len(df) for i in range(n)]].copy()
    rows["id"] = [f"p{i:07d}" for i in range(n)]
    rows.to_csv(path, index=False)
    return path
