"""Timing helpers shared by the speed programs: a call's seconds, calls per timed round, interleaved rounds,
per-item latencies and their percentiles.

Every comparison times its variants in the same run, round by round (one timing of each variant per round), so
slow moments of a machine shared with other jobs hit every variant alike; the programs report medians.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
Item = TypeVar("Item")


def clocked(fn: Callable[[], T]) -> tuple[float, T]:
    """Call ``fn`` once: its wall seconds and its result."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def timed(fn: Callable[[], Any], calls: int = 1) -> float:
    """Seconds per call over ``calls`` calls of ``fn``."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def wall(fn: Callable[[], Any], calls: int = 1) -> Callable[[], float]:
    """``fn`` as a timed variant for :func:`rounds`: each call runs it ``calls`` times, returns seconds a call."""
    return lambda: timed(fn, calls)


def calls_for(fn: Callable[[], Any], seconds: float) -> int:
    """After one warm-up call, how many calls of ``fn`` take about ``seconds`` (at least one)."""
    fn()
    return max(1, int(seconds / max(timed(fn), 1e-4)))


def rounds(
    variants: Mapping[str, Callable[[], float]],
    repeats: int,
    alternate: bool = False,
    each: Callable[[int, str, float], None] | None = None,
    after: Callable[[int, dict[str, list[float]]], None] | None = None,
) -> dict[str, list[float]]:
    """Time every variant once a round, ``repeats`` rounds.

    Args:
        variants: name -> a call that runs the variant and returns the seconds it measured (see :func:`wall`).
        repeats: rounds.
        alternate: reverse the order every other round (A B, B A, ...), so neither variant always runs second.
        each: called with (round, name, seconds) after every timing, e.g. to print it.
        after: called with the round and the times so far after each round, e.g. to write partial results.

    Returns:
        name -> the seconds of each round.
    """
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(repeats):
        order = list(variants)[::-1] if alternate and r % 2 else list(variants)
        for name in order:
            times[name].append(variants[name]())
            if each is not None:
                each(r, name, times[name][-1])
        if after is not None:
            after(r, times)
    return times


def each_timed(fn: Callable[[Item], T], items: Iterable[Item]) -> tuple[list[float], list[T]]:
    """Call ``fn`` on each item, one at a time (as a user's single query): milliseconds and result of each."""
    ms, out = [], []
    for item in items:
        seconds, result = clocked(lambda item=item: fn(item))
        ms.append(seconds * 1000)
        out.append(result)
    return ms, out


def percentiles(ms: Iterable[float], prefix: str = "", digits: int = 3) -> dict[str, float]:
    """``{prefix}p50_ms`` and ``{prefix}p99_ms`` of latencies in milliseconds, rounded."""
    values = list(ms)
    return {f"{prefix}p{q}_ms": round(float(np.percentile(values, q)), digits) for q in (50, 99)}
