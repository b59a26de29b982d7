"""The HMM tagger: Viterbi against brute force, normalised probabilities, learning on toy data."""
import itertools
import math
import random

import numpy as np
import pytest

from bertlab.baselines.hmm import HMMTagger, unknown_token, viterbi, word_class



def brute_force_best(log_pi: np.ndarray, log_A: np.ndarray, log_emit: np.ndarray) -> tuple[list[int], float]:
    """The same as :func:`viterbi` by enumerating all ``C^n`` paths (tiny n, C only)."""
    n, C = log_emit.shape
    best, best_score = None, -np.inf
    for path in itertools.product(range(C), repeat=n):
        s = log_pi[path[0]] + sum(log_A[path[t - 1], path[t]] for t in range(1, n)) \
            + sum(log_emit[t, path[t]] for t in range(n))
        if s > best_score:
            best, best_score = list(path), s
    return best, float(best_score)

@pytest.mark.parametrize("seed", range(10))
def test_viterbi_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    C, n = rng.integers(2, 5), rng.integers(1, 6)
    log_pi = np.log(rng.dirichlet(np.ones(C)))
    log_A = np.log(rng.dirichlet(np.ones(C), size=C))
    log_emit = np.log(rng.uniform(0.01, 1, size=(n, C)))
    path, score = viterbi(log_pi, log_A, log_emit)
    ref_path, ref_score = brute_force_best(log_pi, log_A, log_emit)
    assert path == ref_path
    assert score == pytest.approx(ref_score, abs=1e-12)


def toy_corpus(n_sentences=300, seed=0):
    """Sentences of filler words with disease names (ending in -itis/-oma) and drug names."""
    rng = random.Random(seed)
    fillers = ["the", "patient", "had", "a", "history", "of", "and", "was", "given", "for", "with"]
    diseases = ["gastr", "arthr", "derm", "mening", "hepat", "nephr", "col", "sinus"]
    drugs = ["aspirin", "ibuprofen", "heparin", "warfarin"]
    sents = []
    for _ in range(n_sentences):
        tokens, tags = [], []
        for _ in range(rng.randint(4, 10)):
            r = rng.random()
            if r < 0.15:
                tokens += [rng.choice(diseases) + rng.choice(["itis", "oma"])]
                tags += ["B-Dis"]
                if rng.random() < 0.4:
                    tokens += ["syndrome"]
                    tags += ["I-Dis"]
            elif r < 0.25:
                tokens += [rng.choice(drugs)]
                tags += ["B-Drug"]
            else:
                tokens += [rng.choice(fillers)]
                tags += ["O"]
        sents.append((tokens, tags))
    return [s[0] for s in sents], [s[1] for s in sents]


def test_probabilities_normalise():
    tokens, tags = toy_corpus(100)
    hmm = HMMTagger(k=0.5, use_shape=True).fit(tokens, tags)
    assert hmm.labels == ["O", "B-Dis", "I-Dis", "B-Drug", "I-Drug"]  # label_list order, unseen I-Drug included
    assert hmm.pi.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(hmm.A.sum(1), 1.0)
    np.testing.assert_allclose(hmm.B.sum(1), 1.0)
    np.testing.assert_allclose(hmm.S.sum(1), 1.0)
    assert (hmm.A > 0).all() and (hmm.B > 0).all()  # smoothing leaves nothing impossible


def test_joint_probability_normalises_over_a_tiny_vocabulary():
    """Σ over all (words, tags) of length n of p(w, y) = 1 for a fixed length (a proper model)."""
    tokens = [["a", "b"], ["b", "a", "a"], ["a"]]
    tags = [["O", "B-X"], ["B-X", "I-X", "O"], ["O"]]
    hmm = HMMTagger(k=1.0, rare=0).fit(tokens, tags)
    words = [w for w in hmm.vocab]  # a, b, <unk>
    total = 0.0
    for ws in itertools.product(words, repeat=2):
        for ys in itertools.product(hmm.labels, repeat=2):
            ids = [hmm.labels.index(y) for y in ys]
            v = [hmm.vocab[w] for w in ws]
            total += hmm.pi[ids[0]] * hmm.A[ids[0], ids[1]] * hmm.B[ids[0], v[0]] * hmm.B[ids[1], v[1]]
    assert total == pytest.approx(1.0)
    assert hmm.log_joint(["a", "b"], ["O", "B-X"]) == pytest.approx(
        math.log(hmm.pi[0] * hmm.A[0, 1] * hmm.B[0, hmm.vocab["a"]] * hmm.B[1, hmm.vocab["b"]]))


def test_learns_toy_corpus_and_generalises_to_unknown_words():
    tokens, tags = toy_corpus(400, seed=1)
    hmm = HMMTagger(k=0.1).fit(tokens, tags)
    test_tokens, test_tags = toy_corpus(100, seed=2)
    pred = hmm.predict(test_tokens)
    flat_true = [t for s in test_tags for t in s]
    flat_pred = [t for s in pred for t in s]
    accuracy = np.mean([a == b for a, b in zip(flat_true, flat_pred)])
    majority = np.mean([t == "O" for t in flat_true])
    assert accuracy > 0.97 > majority
    # an unseen disease word is tagged by its suffix class
    out = hmm.predict([["the", "patient", "had", "pancreatitis", "syndrome"]])[0]
    assert out == ["O", "O", "O", "B-Dis", "I-Dis"]


def test_word_classes():
    assert [word_class(w) for w in ["12", "1.5", ",", "APC", "Wnt", "coli", "mRNA", "BRCA1", "x-ray"]] == \
        ["d", "d.", "p", "X", "Xx", "x", "xX", "xd", "x-x"]
    assert unknown_token("gastritis") == "<unk:x:tis>"
    assert unknown_token("12") == "<unk:d:>"
