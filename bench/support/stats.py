"""Statistics of benchmark samples, and running compared variants interleaved in one run."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence


def median(values: Sequence[float]) -> float:
    """The median of ``values``."""
    return float(statistics.median(values))


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean of ``values``."""
    return float(statistics.fmean(values))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, by linear interpolation between order statistics."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def p99(values: Sequence[float]) -> float:
    """The 99th percentile of ``values``."""
    return percentile(values, 99)


def flatten(rounds: Sequence[Sequence[float]]) -> list[float]:
    """Every sample of every round, in one list."""
    return [value for samples in rounds for value in samples]


def ratio_of_rounds(
    numerator: Sequence[Sequence[float]],
    denominator: Sequence[Sequence[float]],
    statistic: Callable[[Sequence[float]], float] = median,
) -> float:
    """The median over rounds of ``statistic(numerator round) / statistic(denominator round)``.

    Taking the ratio inside each round, whose variants ran back to back, cancels most of the
    drift a noisy machine adds between rounds.
    """
    return median(round_ratios(numerator, denominator, statistic))


def round_ratios(
    numerator: Sequence[Sequence[float]],
    denominator: Sequence[Sequence[float]],
    statistic: Callable[[Sequence[float]], float] = median,
) -> list[float]:
    """``statistic(numerator round) / statistic(denominator round)`` for every round."""
    return [statistic(a) / statistic(b) for a, b in zip(numerator, denominator, strict=True)]


def spread(values: Sequence[float]) -> str:
    """The interquartile range of ``values``, as a note: ``IQR 1.21-1.34``."""
    return f"IQR {percentile(values, 25):.3g}-{percentile(values, 75):.3g}"


def interleave(variants: dict[str, Callable[[], list[float]]], rounds: int) -> dict[str, list[list[float]]]:
    """Run each variant once per round, in an order rotated every round; return each one's samples per round.

    A variant is a callable that runs one batch and returns its samples (seconds per operation).
    """
    names = list(variants)
    samples: dict[str, list[list[float]]] = {name: [] for name in names}
    for number in range(rounds):
        shift = number % len(names)
        order = names[shift:] + names[:shift]
        if number % 2:
            order.reverse()
        for name in order:
            samples[name].append(variants[name]())
    return samples


def ms(seconds: float) -> float:
    """Seconds to milliseconds, rounded for reports."""
    return round(seconds * 1000, 4)


def describe(samples: Sequence[float]) -> dict[str, float]:
    """Median, mean, p99 and max of samples in seconds, as milliseconds."""
    return {
        "median_ms": ms(median(samples)),
        "mean_ms": ms(mean(samples)),
        "p99_ms": ms(p99(samples)),
        "max_ms": ms(max(samples)),
        "n": len(samples),
    }
