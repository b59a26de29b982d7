"""bertlab.knn.KNNClassifier against a float64 brute force and scikit-learn's brute-force KNN."""
import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from bertlab.knn import KNNClassifier


def brute_force(X, Q, k, metric):
    """float64 distances to every training row, ordered by a stable argsort: ties -> lower index."""
    X, Q = X.astype(np.float64), Q.astype(np.float64)
    if metric == "euclidean":
        D = np.sqrt(np.einsum("qnd,qnd->qn", Q[:, None] - X[None], Q[:, None] - X[None]))
    else:
        qn, xn = np.linalg.norm(Q, axis=1), np.linalg.norm(X, axis=1)
        den = qn[:, None] * xn[None]
        D = np.clip(1.0 - np.einsum("qd,nd->qn", Q, X) / np.where(den == 0, 1, den), 0.0, 2.0)
    idx = np.argsort(D, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(D, idx, axis=1), idx


def brute_force_proba(dist, idx, y, n_classes, weights):
    proba = np.zeros((len(idx), n_classes))
    for q in range(len(idx)):
        for d, i in zip(dist[q], idx[q]):
            if weights == "uniform":
                w = 1.0
            elif (dist[q] == 0).any():
                w = float(d == 0)
            else:
                w = 1.0 / d
            proba[q, y[i]] += w
    return proba / proba.sum(axis=1, keepdims=True)


def tied_data(rng, n, dim):
    """Small integer coordinates (many exactly equal distances) plus duplicated training points."""
    X = rng.integers(-2, 3, size=(n, dim)).astype(np.float32)
    dup = rng.integers(0, n, size=n // 3)
    X[rng.integers(0, n, size=n // 3)] = X[dup]
    if n > 4:
        X[0] = 0.0  # a zero vector: cosine distance 1 to everything
    Q = np.vstack([rng.integers(-2, 3, size=(15, dim)), X[: min(5, n)], np.zeros((1, dim))]).astype(np.float32)
    return X, Q


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_equals_float64_brute_force_with_ties_and_duplicates(metric):
    rng = np.random.default_rng(0 if metric == "euclidean" else 1)
    for case in range(60):
        n, dim = int(rng.integers(1, 400)), int(rng.integers(1, 12))
        k = int(rng.integers(1, min(n, 25) + 1))
        X, Q = tied_data(rng, n, dim)
        y = rng.integers(0, 4, size=n)
        weights = ["uniform", "distance"][case % 2]
        model = KNNClassifier(k=k, metric=metric, weights=weights,
                              chunk_size=int(rng.integers(1, 20)), n_jobs=int(rng.integers(1, 3))).fit(X, y)
        dist, idx = model.kneighbors(Q)
        ref_dist, ref_idx = brute_force(X, Q, k, metric)
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_array_equal(dist, ref_dist)
        classes = np.unique(y)
        ref_proba = brute_force_proba(ref_dist, ref_idx, np.searchsorted(classes, y), len(classes), weights)
        np.testing.assert_allclose(model.predict_proba(Q), ref_proba, rtol=0, atol=1e-12)
        # vote ties go to the lower class id
        np.testing.assert_array_equal(model.predict(Q), classes[np.argmax(ref_proba, axis=1)])


def test_ties_resolved_by_lower_training_index_and_lower_class():
    X = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], np.float32)  # all at distance 1
    y = np.array([3, 1, 1, 3])
    model = KNNClassifier(k=2).fit(X, y)
    dist, idx = model.kneighbors(np.zeros((1, 2), np.float32))
    assert idx.tolist() == [[0, 1]] and dist.tolist() == [[1.0, 1.0]]
    assert model.predict(np.zeros((1, 2), np.float32)).tolist() == [1]  # 1 vote each: class 1 < 3


def test_results_do_not_depend_on_chunking_or_threads():
    rng = np.random.default_rng(2)
    X, Q = tied_data(rng, 3000, 6)
    y = rng.integers(0, 5, size=len(X))
    runs = [KNNClassifier(k=9, chunk_size=c, n_jobs=j).fit(X, y).kneighbors(Q) for c, j in [(1, 1), (7, 2), (None, None)]]
    for dist, idx in runs[1:]:
        np.testing.assert_array_equal(idx, runs[0][1])
        np.testing.assert_array_equal(dist, runs[0][0])


def test_large_offsets_still_exact():
    """Points far from the origin make the float32 expansion lose digits: the candidates' exact
    recomputation must still return the true order."""
    rng = np.random.default_rng(3)
    X = (1000.0 + rng.standard_normal((500, 8))).astype(np.float32)
    Q = (1000.0 + rng.standard_normal((40, 8))).astype(np.float32)
    dist, idx = KNNClassifier(k=10).fit(X, np.zeros(500)).kneighbors(Q)
    ref_dist, ref_idx = brute_force(X, Q, 10, "euclidean")
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(dist, ref_dist)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("weights", ["uniform", "distance"])
def test_equals_sklearn_brute_force(metric, weights):
    # continuous data has no distance ties, where sklearn's heap order is not specified; sklearn
    # gets the same float32 points as float64, so it computes with float64 too
    rng = np.random.default_rng(4)
    for case in range(4):
        n, dim, k = int(rng.integers(50, 1000)), int(rng.integers(2, 40)), int(rng.integers(1, 30))
        X = rng.standard_normal((n, dim)).astype(np.float32)
        Q = rng.standard_normal((100, dim)).astype(np.float32)
        y = rng.choice(np.array(["B-Dis", "I-Dis", "O"]), size=n)
        ours = KNNClassifier(k=k, metric=metric, weights=weights).fit(X, y)
        ref = KNeighborsClassifier(n_neighbors=k, metric=metric, weights=weights, algorithm="brute")
        ref.fit(X.astype(np.float64), y)
        ref_dist, ref_idx = ref.kneighbors(Q.astype(np.float64))
        dist, idx = ours.kneighbors(Q)
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_allclose(dist, ref_dist, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(ours.classes_, ref.classes_)
        np.testing.assert_allclose(ours.predict_proba(Q), ref.predict_proba(Q.astype(np.float64)), atol=1e-9)
        np.testing.assert_array_equal(ours.predict(Q), ref.predict(Q.astype(np.float64)))


def test_kneighbors_options_and_errors():
    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    model = KNNClassifier(k=3).fit(X, [0, 0, 0, 1, 1, 1])
    idx = model.kneighbors(X[:2], n_neighbors=6, return_distance=False)
    assert idx.shape == (2, 6) and sorted(idx[0]) == list(range(6))
    with pytest.raises(ValueError, match="n_neighbors"):
        model.kneighbors(X, n_neighbors=7)
    with pytest.raises(ValueError, match="shape"):
        model.kneighbors(np.zeros((2, 3)))
    with pytest.raises(RuntimeError, match="fit"):
        KNNClassifier().predict(X)
    with pytest.raises(ValueError, match="metric"):
        KNNClassifier(metric="manhattan")


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_float64_bound_path_equals_brute_force_with_ties(metric, monkeypatch):
    """Forcing the float64 re-bound for every chunk keeps exact ties and duplicates exact."""
    import bertlab.knn
    monkeypatch.setattr(bertlab.knn, "_MAX_CANDIDATES", 0)
    rng = np.random.default_rng(7)
    for _ in range(25):
        n, dim = int(rng.integers(2, 300)), int(rng.integers(1, 10))
        k = int(rng.integers(1, min(n, 20) + 1))
        X, Q = tied_data(rng, n, dim)
        model = KNNClassifier(k=k, metric=metric, chunk_size=int(rng.integers(1, 20))).fit(X, np.zeros(n))
        dist, idx = model.kneighbors(Q)
        ref_dist, ref_idx = brute_force(X, Q, k, metric)
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_array_equal(dist, ref_dist)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_crowded_logits_take_the_float64_bound_and_stay_exact(metric, monkeypatch):
    """Logits of a collapsed model: thousands of training rows within float32 rounding of each
    other. The float32 bound admits them all; the chunk must be re-bounded in float64 (not an
    all-pairs exact gather) and the answer must still equal the brute force."""
    import bertlab.knn
    calls = []
    original = KNNClassifier._chunk_neighbors_float64
    monkeypatch.setattr(KNNClassifier, "_chunk_neighbors_float64",
                        lambda self, Q64, k: calls.append(len(Q64)) or original(self, Q64, k))
    rng = np.random.default_rng(3)
    center = rng.normal(0, 8, size=40).astype(np.float32)   # large logits, as after fine-tuning
    # spread 1e-3: far inside float32's rounding bound at this magnitude, yet well resolved in
    # float64 (at 1e-5, 1 - cos itself sits at float64's cancellation floor for any implementation)
    X = (center + rng.normal(0, 1e-3, size=(6000, 40))).astype(np.float32)
    Q = (center + rng.normal(0, 1e-3, size=(50, 40))).astype(np.float32)
    y = rng.integers(0, 3, size=len(X))
    model = KNNClassifier(k=17, metric=metric).fit(X, y)
    dist, idx = model.kneighbors(Q)
    assert sum(calls) == len(Q)
    ref_dist, ref_idx = brute_force(X, Q, 17, metric)
    np.testing.assert_array_equal(idx, ref_idx)
    # same neighbours; the distances agree to float64 rounding of the dot product (summation order)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-12, atol=4 * np.finfo(np.float64).eps)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("weights", ["uniform", "distance"])
def test_save_and_load_give_the_same_classifier(metric, weights, tmp_path):
    rng = np.random.default_rng(9)
    X, Q = tied_data(rng, 300, 7)
    y = rng.choice(np.array(["B-Dis", "I-Dis", "O"]), size=len(X))
    ours = KNNClassifier(k=5, metric=metric, weights=weights).fit(X, y)
    ours.save(tmp_path / "knn.npz")
    back = KNNClassifier.load(tmp_path / "knn.npz")
    assert (back.k, back.metric, back.weights) == (5, metric, weights)
    np.testing.assert_array_equal(back.classes_, ours.classes_)
    np.testing.assert_array_equal(back.kneighbors(Q)[1], ours.kneighbors(Q)[1])
    np.testing.assert_array_equal(back.predict_proba(Q), ours.predict_proba(Q))
    assert [p.name for p in tmp_path.iterdir()] == ["knn.npz"]  # no temp file left behind
    with pytest.raises(RuntimeError, match="fit"):
        KNNClassifier().save(tmp_path / "other.npz")
    (tmp_path / "bad.npz").write_bytes((tmp_path / "knn.npz").read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match=r"bad\.npz: not a saved KNNClassifier"):
        KNNClassifier.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", X=np.zeros((2, 2)))  # no labels
    with pytest.raises(ValueError, match=r"other\.npz: not a saved KNNClassifier \(KeyError"):
        KNNClassifier.load(tmp_path / "other.npz")
