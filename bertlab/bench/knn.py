"""Benchmark: bertlab's KNNClassifier against scikit-learn's brute-force KNeighborsClassifier.

Full size is the BTL paper's use: 200k training token logits with 83 labels, 50k query tokens,
k = 17. Quick mode is 10x smaller. Rows follow the bench contract (ratio > 1: bertlab is better).

CPU-only (scikit-learn and bertlab's KNN run on the CPU): ``--device cuda`` refuses this area.
"""
from __future__ import annotations

import time
import tracemalloc

import numpy as np

from bertlab.knn import KNNClassifier


def _fake_logits(rng: np.random.Generator, n: int, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Logit-like points: each token near its label's corner, so neighbours carry the label."""
    y = rng.integers(0, n_labels, size=n)
    X = rng.standard_normal((n, n_labels)).astype(np.float32)
    X[np.arange(n), y] += 4.0
    return X, y


def run(quick: bool) -> list[dict]:
    """Time ``fit`` + ``predict`` of both on the same data; report bertlab's peak traced memory."""
    from sklearn.neighbors import KNeighborsClassifier

    n_train, n_query, n_labels, k = (20_000, 5_000, 83, 17) if quick else (200_000, 50_000, 83, 17)
    rng = np.random.default_rng(0)
    X, y = _fake_logits(rng, n_train, n_labels)
    Q, _ = _fake_logits(rng, n_query, n_labels)

    tracemalloc.start()
    start = time.perf_counter()
    ours = KNNClassifier(k=k).fit(X, y).predict(Q)
    ours_s = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    start = time.perf_counter()
    ref = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(X, y).predict(Q)
    ref_s = time.perf_counter() - start

    size = f"{n_train}x{n_labels} train, {n_query} queries, k={k}"
    return [
        {"name": f"knn fit+predict ({size})", "unit": "s", "bertlab": ours_s, "reference": ref_s,
         "ratio": ref_s / ours_s},
        {"name": f"knn peak traced memory ({size}; all queries x train would be "
                 f"{4 * n_train * n_query / 2**20:.0f} MiB)", "unit": "MiB",
         "bertlab": peak / 2**20, "reference": None, "ratio": None},
        {"name": f"knn predictions equal to sklearn ({size})", "unit": "fraction",
         "bertlab": float(np.mean(ours == ref)), "reference": 1.0, "ratio": None},
    ]


if __name__ == "__main__":
    import sys

    for row in run(quick="--quick" in sys.argv):
        print(row)
