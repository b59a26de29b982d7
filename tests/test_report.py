"""bertlab.report against references: every number printed in report.md is recomputed here from
results.jsonl and the prediction files with numpy, scipy.stats, statsmodels, scikit-learn and
seqeval directly.

The study folders are synthetic (no training): runs whose predictions are gold tags with seeded
noise, so the variants really differ and the numbers are not trivial."""
import json
import math
import re
import shutil
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats as sps
from seqeval.metrics import classification_report
from seqeval.scheme import IOB2, Entities
from sklearn.metrics import balanced_accuracy_score

from bertlab.environment import environment
from bertlab.results import read_results, write_results
from bertlab.study import expand, load_study
from bertlab.study.folder import write_json
from bertlab import stats
from bertlab.metrics import entity_report, unweighted_accuracy
from bertlab.report import build_report
from bertlab.report.counts import stack_counts, variant_interval
from bertlab.report.rows import METRICS

TYPES = ["Age", "Dose", "Sign"]  # Sign common, Dose middle, Age rare
LABELS = ["O"] + [f"{b}-{t}" for t in TYPES for b in "BI"] + ["B-Freq"]  # Freq: predicted, never gold
METRIC_NAMES = {"f1_micro": "micro F1", "f1_macro": "macro F1", "unweighted_accuracy": "unweighted acc."}
FAMILIES = {"sampler": {"vary": "sampler.name", "baseline": "atl"},
            "loss": {"vary": "loss.name", "baseline": "ce"},
            "decode": {"vary": "decode", "baseline": "argmax"}}


def make_documents(n_docs=10, seed=0):
    """Gold test documents: a few sentences each, Sign frequent, Age rare."""
    rng = np.random.default_rng(seed)
    docs = []
    for d in range(n_docs):
        sents = []
        for _ in range(int(rng.integers(2, 5))):
            tags = []
            while len(tags) < 12:
                u = rng.random()
                typ = "Sign" if u < 0.25 else "Dose" if u < 0.35 else "Age" if u < 0.38 else None
                if typ is None:
                    tags.append("O")
                else:
                    tags += [f"B-{typ}"] + [f"I-{typ}"] * int(rng.integers(0, 3))
            sents.append(tags)
        docs.append((f"doc{d}", sents))
    return docs


def noisy(tags, rng, p):
    """Replace each tag with a random label with probability p (may break IOB2: realistic)."""
    return [LABELS[rng.integers(len(LABELS))] if rng.random() < p else t for t in tags]


def make_study(tmp_path, noise, seeds=(0, 1, 2), decodes=("argmax", "knn"), baseline=None, report=None,
               predict=None, deterministic=(), docs=None, name="study"):
    """A study folder as bertlab.study leaves it; ``noise[(sampler, loss, decode)]`` is the
    corruption rate of that variant's predictions, or ``predict(variant, seed, tags, rng)`` makes
    them. ``deterministic``: (sampler, loss) cells that are one run, marked deterministic."""
    sdir = tmp_path / name
    sdir.mkdir()
    docs = docs or make_documents()
    samplers = sorted({k[0] for k in noise})
    losses = sorted({k[1] for k in noise})
    axes = {"sampler.name": samplers, "loss.name": losses, "train.seed": list(seeds)}
    runs = [f"sampler={s}__loss={l}__seed={k}" for s in samplers for l in losses for k in seeds
            if (s, l) not in deterministic or k == seeds[0]]
    write_json(sdir / "study.json", {
        "name": "fake", "scale": "smoke", "source": "experiments/fake.toml", "description": "synthetic",
        "axes": axes, "short_names": {"sampler.name": "sampler", "loss.name": "loss", "train.seed": "seed"},
        "baseline": baseline if baseline is not None else {"sampler.name": "atl", "loss.name": "ce",
                                                           "decode": "argmax"},
        "decodes": list(decodes), "report": {"bands": {"head": 40, "tail": 10},
                                             "figures": False, **(report or {})},
        "gradflow": False, "runs": runs})
    env = environment()
    mentions = {"Sign": 120, "Dose": 30, "Age": 4}
    for run_id in runs:
        s, l, k = (part.split("=")[1] for part in run_id.split("__"))
        k = int(k)
        rdir = sdir / run_id
        rdir.mkdir()
        write_json(rdir / "run.json", {"study": "fake", "scale": "smoke", "run_id": run_id,
                                        "axes": {"sampler.name": s, "loss.name": l, "train.seed": k}, "env": env})
        test = {}
        for decode in decodes:
            rng = np.random.default_rng(zlib.crc32(f"{s}{l}{k}{decode}".encode()))
            gold, pred, lines = [], [], []
            for doc_id, sents in docs:
                for i, tags in enumerate(sents):
                    p = predict((s, l, decode), k, tags, rng) if predict else noisy(tags, rng, noise[(s, l, decode)])
                    gold.append(tags)
                    pred.append(p)
                    lines.append(json.dumps({"doc_id": doc_id, "sentence": i, "tokens": ["w"] * len(tags),
                                             "tags": tags, "pred": p}))
            (rdir / f"predictions_test_{decode}.jsonl").write_text("\n".join(lines) + "\n")
            test[decode] = {"entity_report": dict(entity_report(gold, pred, zero_division=0)),
                            "unweighted_accuracy": unweighted_accuracy(gold, pred),
                            "tokens_per_second": 1000.0 + 100 * k ** 3}  # skewed: median != mean
        write_json(rdir / "metrics.json", {"test": test, "train_seconds": 10.0 + k ** 3, "epochs": 2,
                                            "params": 1_000_000, "train_mentions": mentions,
                                            "deterministic": (s, l) in deterministic})
        write_json(rdir / "timing.json", {"wall_seconds": 12.0 + k, "sessions": 1, "resumed": False})
    write_results(sdir)
    return sdir


NOISE = {("atl", "ce", "argmax"): 0.10, ("atl", "ce", "knn"): 0.12,
         ("atl", "focal", "argmax"): 0.04, ("atl", "focal", "knn"): 0.11,
         ("btl", "ce", "argmax"): 0.10, ("btl", "ce", "knn"): 0.30,
         ("btl", "focal", "argmax"): 0.09, ("btl", "focal", "knn"): 0.10}
ALL_METRICS = ["f1_micro", "f1_macro", "unweighted_accuracy"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The factorial study with its three declared families, every metric tested."""
    sdir = make_study(tmp_path_factory.mktemp("report"), NOISE, report={"compare": FAMILIES, "metrics": ALL_METRICS})
    path = build_report(sdir)
    return sdir, path.read_text(), read_results(sdir / "results.jsonl")


def table_rows(md, section):
    """The rows (lists of cells) of the first markdown table after the heading that starts with
    ``section`` (``## Main results``, ``### Family `loss```)."""
    lines = md.splitlines()
    head = next(i for i, l in enumerate(lines) if l.startswith(section))
    start = next(i for i, l in enumerate(lines) if i > head and l.startswith("| "))
    out = []
    for l in lines[start + 2:]:
        if not l.startswith("|"):
            break
        out.append([c.strip() for c in l.strip("|").split("|")])
    return out


def variant_of(row):
    return f"sampler={row['axes']['sampler.name']}, loss={row['axes']['loss.name']}, decode={row['decode']}"


def by_variant(rows):
    out = {}
    for r in rows:
        out.setdefault(variant_of(r), []).append(r)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in out.items()}


# ---- references ------------------------------------------------------------------------------------

def read_docs(sdir, row):
    """The prediction file of a results row as documents: ``[[sentence dict, ...], ...]``."""
    docs = {}
    for l in (sdir / row["predictions"]).read_text().splitlines():
        l = json.loads(l)
        docs.setdefault(l["doc_id"], []).append(l)
    return list(docs.values())


def seqeval_scores(sents, full=None):
    """micro F1, macro F1 over the fixed class set and unweighted accuracy of some sentences, by
    seqeval (strict IOB2) and scikit-learn. ``full``: the same run on the full test set, whose
    per-class scores stand in for classes without a gold mention in ``sents``."""
    gold, pred = [s["tags"] for s in sents], [s["pred"] for s in sents]
    rep = classification_report(gold, pred, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
    f1 = {t: v["f1-score"] for t, v in rep.items() if t not in ("micro avg", "macro avg", "weighted avg")
          and v["support"] > 0}
    flat_g = [t for s in gold for t in s]
    flat_p = [t for s in pred for t in s]
    recall = {l: np.mean([p == l for g, p in zip(flat_g, flat_p) if g == l]) for l in set(flat_g)}
    out = {"f1_micro": rep["micro avg"]["f1-score"] if "micro avg" in rep else 0.0, "per_f1": f1, "recall": recall}
    classes, tags = (sorted(full["per_f1"]), sorted(full["recall"])) if full else (sorted(f1), sorted(recall))
    fill_f1 = {t: f1.get(t, full["per_f1"][t] if full else math.nan) for t in classes}
    fill_r = {l: recall.get(l, full["recall"][l] if full else math.nan) for l in tags}
    out["f1_macro"] = float(np.mean(list(fill_f1.values())))
    out["unweighted_accuracy"] = float(np.mean(list(fill_r.values())))
    if full is None:  # on a full test set the recall mean is sklearn's balanced accuracy
        with warnings.catch_warnings():  # "y_pred contains classes not in y_true": B-Freq, on purpose
            warnings.simplefilter("ignore")
            assert out["unweighted_accuracy"] == pytest.approx(balanced_accuracy_score(flat_g, flat_p), abs=1e-12)
    return out


def doc_counts(docs):
    """Per-document counts by seqeval's own entity reader: ``[{type: [tp, predicted, gold]}, ...]``
    and ``[{tag: [correct, gold]}, ...]``."""
    ents, toks = [], []
    for sents in docs:
        e, t = {}, {}
        for s in sents:
            gold = {(x.tag, x.start, x.end) for x in Entities([s["tags"]], IOB2).entities[0]}
            pred = {(x.tag, x.start, x.end) for x in Entities([s["pred"]], IOB2).entities[0]}
            for typ, *_ in gold & pred:
                e.setdefault(typ, [0, 0, 0])[0] += 1
            for typ, *_ in pred:
                e.setdefault(typ, [0, 0, 0])[1] += 1
            for typ, *_ in gold:
                e.setdefault(typ, [0, 0, 0])[2] += 1
            for g, p in zip(s["tags"], s["pred"]):
                t.setdefault(g, [0, 0])[1] += 1
                t[g][0] += int(g == p)
        ents.append(e)
        toks.append(t)
    return ents, toks


def counts_score(ents, toks, weights, metric, full=None):
    """A metric of one run from its per-document counts, documents weighted by multiplicity
    (float64, plain Python); macro classes without gold take the full-test-set score."""
    e, t = {}, {}
    for w, de, dt in zip(weights, ents, toks):
        for k, v in de.items():
            acc = e.setdefault(k, [0.0, 0.0, 0.0])
            for i in range(3):
                acc[i] += w * v[i]
        for k, v in dt.items():
            acc = t.setdefault(k, [0.0, 0.0])
            for i in range(2):
                acc[i] += w * v[i]
    if metric == "f1_micro":
        tp, pr, go = (sum(v[i] for v in e.values()) for i in range(3))
        return 2 * tp / (pr + go) if tp > 0 else 0.0
    if metric == "f1_macro":
        classes = sorted(k for k in {k for d in ents for k in d} if sum(d.get(k, [0, 0, 0])[2] for d in ents) > 0)
        vals = []
        for c in classes:
            tp, pr, go = e.get(c, [0, 0, 0])
            vals.append(2 * tp / (pr + go) if go > 0 else full[c])
        return sum(vals) / len(vals)
    tags = sorted({k for d in toks for k in d})
    vals = [t[l][0] / t[l][1] if t.get(l, [0, 0])[1] > 0 else full[l] for l in tags]
    return sum(vals) / len(vals)


def per_class_full(ents, toks, metric):
    """Full-test-set per-class F1 / recall of one run (the values a missing class takes)."""
    if metric == "f1_macro":
        out = {}
        for c in {k for d in ents for k in d}:
            tp, pr, go = (sum(d.get(c, [0, 0, 0])[i] for d in ents) for i in range(3))
            if go > 0:
                out[c] = 2 * tp / (pr + go)
        return out
    if metric == "unweighted_accuracy":
        return {l: sum(d[l][0] for d in toks if l in d) / sum(d[l][1] for d in toks if l in d)
                for l in {k for d in toks for k in d}}
    return None


def seed_mean(runs, weights, metric):
    return sum(counts_score(e, t, weights, metric, per_class_full(e, t, metric)) for e, t in runs) / len(runs)


def crossed_interval(y, estimate):
    """The seed × document t interval written out from statsmodels' two-way ANOVA mean squares:
    V = [MS_resid + max(MS_seed − MS_resid, 0) + max(MS_doc − MS_resid, 0)] / (S·D), Satterthwaite
    df; one seed: the one-sample t over documents (scipy). Returns (low, high, p)."""
    from statsmodels.formula.api import ols
    from statsmodels.stats.anova import anova_lm

    y = np.asarray(y, float)
    S, D = y.shape
    if S == 1:
        t = sps.ttest_1samp(y[0], 0.0)
        se = y[0].std(ddof=1) / np.sqrt(D)
        q = sps.t.ppf(0.975, D - 1)
        return estimate - q * se, estimate + q * se, 2 * sps.t.sf(abs(estimate / se), D - 1)
    frame = pd.DataFrame({"y": y.ravel(), "s": np.repeat(np.arange(S), D), "d": np.tile(np.arange(D), S)})
    table = anova_lm(ols("y ~ C(s) + C(d)", frame).fit(), typ=2)
    ms = (table["sum_sq"] / table["df"]).to_dict()
    terms = [(1.0, ms["Residual"], (S - 1) * (D - 1))]
    if ms["C(s)"] > ms["Residual"]:
        terms += [(1.0, ms["C(s)"], S - 1)]
    if ms["C(d)"] > ms["Residual"]:
        terms += [(1.0, ms["C(d)"], D - 1)]
    c_e = 1.0 - (len(terms) - 1)
    terms[0] = (c_e, ms["Residual"], (S - 1) * (D - 1))
    total = sum(c * m for c, m, _ in terms)
    df = total**2 / sum((c * m) ** 2 / f for c, m, f in terms if c)
    se = np.sqrt(total / (S * D))
    q = sps.t.ppf(0.975, df)
    return estimate - q * se, estimate + q * se, 2 * sps.t.sf(abs(estimate / se), df)


def pseudo_values(runs, metric):
    """[S, D] jackknife pseudo-values of each run's score, re-scored by counts_score (no report code)."""
    D = len(runs[0][0])
    out = []
    for e, t in runs:
        full_scores = per_class_full(e, t, metric)
        full = counts_score(e, t, [1] * D, metric, full_scores)
        loo = [counts_score(e, t, [int(k != j) for k in range(D)], metric, full_scores) for j in range(D)]
        out.append([D * full - (D - 1) * x for x in loo])
    return np.array(out)


def crossed_reference(runs_a, runs_b, metric, estimate):
    """The comparison's interval and p by hand: seed-paired pseudo-value differences, crossed t."""
    return crossed_interval(pseudo_values(runs_a, metric) - pseudo_values(runs_b, metric), estimate)


def permutation_reference(runs_a, runs_b, metric):
    """scipy's exact paired permutation test: whole documents swapped between the two variants
    (run i of one with run i of the other), seed means compared."""
    D = len(runs_a[0][0])

    def stat(i, j):
        i, j = i.astype(int), j.astype(int)
        sa = [([runs_a[s][0][k] if k < D else runs_b[s][0][k - D] for k in i],
               [runs_a[s][1][k] if k < D else runs_b[s][1][k - D] for k in i]) for s in range(len(runs_a))]
        sb = [([runs_a[s][0][k] if k < D else runs_b[s][0][k - D] for k in j],
               [runs_a[s][1][k] if k < D else runs_b[s][1][k - D] for k in j]) for s in range(len(runs_a))]
        # after a swap every class is still present once: no imputation needed
        return (sum(counts_score(e, t, [1] * D, metric) for e, t in sa)
                - sum(counts_score(e, t, [1] * D, metric) for e, t in sb)) / len(runs_a)

    return sps.permutation_test((np.arange(D), np.arange(D) + D), stat, permutation_type="samples",
                                n_resamples=9999, vectorized=False).pvalue


def fmt_p(p):
    """How a report prints a p-value: 4 decimals, never 0.0000."""
    return "<0.0001" if p < 0.00005 else f"{p:.4f}"


def holm_by_hand(ps):
    order = np.argsort(ps, kind="stable")
    adj = np.empty(len(ps))
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, ps[i] * (len(ps) - rank)))
        adj[i] = running
    return adj


# ---- the main table ------------------------------------------------------------------------------

def test_results_rows_match_seqeval(study):
    sdir, _, rows = study
    assert len(rows) == 2 * 2 * 3 * 2  # runs x decodes, no duplicates
    assert len({(r["run_id"], r["decode"]) for r in rows}) == len(rows)
    for r in rows:
        lines = [json.loads(l) for l in (sdir / r["predictions"]).read_text().splitlines()]
        ref = classification_report([l["tags"] for l in lines], [l["pred"] for l in lines],
                                    mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
        assert r["f1_micro"] == pytest.approx(ref["micro avg"]["f1-score"], abs=1e-12)
        assert r["f1_macro"] == pytest.approx(ref["macro avg"]["f1-score"], abs=1e-12)
        assert r["seconds_per_epoch"] == pytest.approx(r["train_seconds"] / 2)


def test_main_table_mean_std_over_the_fixed_class_set(study):
    """Macro F1 averages the types with gold support only (seqeval's macro also averages types that
    are only predicted); unweighted accuracy is sklearn's balanced accuracy."""
    sdir, md, rows = study
    table = {row[0]: row for row in table_rows(md, "## Main results")}
    groups = by_variant(rows)
    assert set(table) == set(groups)
    for name, group in groups.items():
        scores = [seqeval_scores([s for d in read_docs(sdir, r) for s in d]) for r in group]
        assert table[name][1] == "3"
        for col, metric in ((2, "f1_micro"), (4, "f1_macro"), (6, "unweighted_accuracy")):
            v = np.array([s[metric] for s in scores])
            assert table[name][col] == f"{v.mean():.4f} ± {v.std(ddof=1):.4f}", (name, metric)
    # the noisy predictions produce types with no gold mention: the two macro averages differ
    assert any(abs(r["f1_macro"] - np.mean([v["f1"] for v in r["per_type"].values() if v["support"]]))
               > 1e-6 for r in rows)


def test_main_interval_recomputed_with_seqeval_and_statsmodels(study):
    """The CI of the mean over seeds and documents: each run re-scored by seqeval / scikit-learn on
    the whole test set and with each document left out (a class left without gold mentions keeps
    its full-test-set score), turned into jackknife pseudo-values, then the seed × document t from
    statsmodels' two-way ANOVA mean squares (``crossed_interval``)."""
    sdir, md, rows = study
    table = {row[0]: row for row in table_rows(md, "## Main results")}
    for name in ("sampler=btl, loss=focal, decode=knn", "sampler=atl, loss=ce, decode=argmax"):
        per_seed = [read_docs(sdir, r) for r in by_variant(rows)[name]]
        full = [seqeval_scores([s for d in docs for s in d]) for docs in per_seed]
        D = len(per_seed[0])
        loo = [[seqeval_scores([s for k, d in enumerate(docs) if k != j for s in d], f) for j in range(D)]
               for docs, f in zip(per_seed, full)]
        for col, metric in ((3, "f1_micro"), (5, "f1_macro"), (7, "unweighted_accuracy")):
            y = np.array([[D * f[metric] - (D - 1) * l[metric] for l in runs] for f, runs in zip(full, loo)])
            mean = np.mean([f[metric] for f in full])
            lo, hi, _ = crossed_interval(y, mean)
            assert table[name][col] == f"[{lo:.4f}, {hi:.4f}]", (name, metric)


def intervals_of(data):
    """Every printed interval of a report.json with its estimate: (what, estimate, low, high)."""
    out = []
    for name, v in data["variants"].items():
        for m in METRIC_NAMES:
            if v.get(m, {}).get("ci"):
                out.append((f"{name} {m}", v[m]["mean"], *v[m]["ci"]))
    for c in data.get("comparisons", []):
        if c["ci"]:
            out.append((f"{c['variant']} vs {c['baseline']} {c['metric']}", c["diff"], *c["ci"]))
    return out


def rare_class_predictions(variant, seed, tags, rng):
    """A weak model: finds Sign now and then, never Dose or Age (the rare classes)."""
    out = []
    for t in tags:
        keep = t.endswith("Sign") and rng.random() < 0.5 + 0.1 * seed
        out.append(t if keep else ("B-Dose" if rng.random() < 0.02 else "O"))
    return out


def all_o(variant, seed, tags, rng):
    return ["O"] * len(tags)


def perfect(variant, seed, tags, rng):
    return list(tags)


def rare_documents(n_docs=12, seed=3):
    """Test documents where Age occurs in one document only and Dose in two."""
    docs = make_documents(n_docs, seed)
    out = []
    for i, (doc_id, sents) in enumerate(docs):
        keep = {"Age": i == 0, "Dose": i in (1, 2)}
        sents = [[("O" if any(t.endswith(k) for k, ok in keep.items() if not ok) else t) for t in s] for s in sents]
        out.append((doc_id, sents))
    return out


@pytest.mark.parametrize("case", ["random", "rare classes", "all O", "perfect", "mixed"])
def test_every_printed_interval_contains_its_estimate(tmp_path, case):
    """Main-table intervals of every metric and every difference interval contain their estimate,
    on random studies and degenerate ones: a weak model whose rare classes sit in one or two
    documents (the case whose macro intervals used to exclude the estimate), all-O predictions,
    perfect predictions. And intervals are printed, not refused."""
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    noise = {k: float(rng.uniform(0.02, 0.5)) for k in NOISE}
    predict = {"random": None, "rare classes": rare_class_predictions, "all O": all_o, "perfect": perfect,
               "mixed": lambda v, k, t, r: (all_o if v[0] == "btl" and v[2] == "argmax" else
                                            rare_class_predictions if v[1] == "focal" else perfect)(v, k, t, r)}[case]
    docs = rare_documents() if case in ("rare classes", "mixed") else None
    sdir = make_study(tmp_path, noise, predict=predict, docs=docs,
                      report={"compare": FAMILIES, "metrics": ALL_METRICS})
    build_report(sdir)
    data = json.loads((sdir / "report.json").read_text())
    intervals = intervals_of(data)
    for what, estimate, lo, hi in intervals:
        assert lo - 1e-9 <= estimate <= hi + 1e-9, (what, estimate, lo, hi)
    printed_main = sum(1 for v in data["variants"].values() for m in METRIC_NAMES if v[m].get("ci"))
    assert printed_main == len(data["variants"]) * 3  # no main-table interval was refused
    assert sum(1 for c in data["comparisons"] if c["ci"]) >= 0.9 * len(data["comparisons"])


def test_fixed_class_set_keeps_rare_class_intervals_around_their_estimate():
    """The issue's case in numbers: a weak model scoring 0 on rare classes that occur in one
    document each. Dropping a class from a resample that lacks it (the old rule) puts the bootstrap
    distribution above the estimate, so its percentile interval excludes it; with the fixed class
    set (an absent class keeps its full score) the interval is printed and contains it."""
    rng = np.random.default_rng(21)
    counts = []
    D = 20
    for seed in range(3):
        ent = {"Common": np.column_stack([rng.integers(2, 6, D), rng.integers(6, 10, D), rng.integers(6, 10, D)])}
        for r in range(8):  # 8 rare classes, each in one document, never found
            gold = np.zeros(D, int)
            gold[r] = 1
            ent[f"Rare{r}"] = np.column_stack([np.zeros(D, int), np.zeros(D, int), gold])
        tok = {"O": np.column_stack([np.full(D, 50), np.full(D, 50)]),
               "B-Common": np.column_stack([rng.integers(2, 6, D), np.full(D, 8)])}
        for r in range(8):
            gold = np.zeros(D, int)
            gold[r] = 2
            tok[f"B-Rare{r}"] = np.column_stack([np.zeros(D, int), gold])
        counts.append({"docs": [f"d{i}" for i in range(D)], "entities": ent, "tokens": tok})
    x, layout = stack_counts(counts)
    idx = np.random.default_rng(0).integers(0, D, (2000, D))
    for metric in ("f1_macro", "unweighted_accuracy"):
        theta, lo, hi, why = variant_interval(x, layout, metric)
        assert why is None and lo <= theta <= hi, (metric, theta, lo, hi, why)
        # the old rule, by hand: mean over the classes present in each resample
        old = []
        for row in idx:
            w = np.bincount(row, minlength=D)
            per_seed = []
            for c in counts:
                if metric == "f1_macro":
                    vals = [2 * (w @ e[:, 0]) / (w @ e[:, 1] + w @ e[:, 2]) for e in c["entities"].values()
                            if w @ e[:, 2] > 0]
                else:
                    vals = [(w @ t[:, 0]) / (w @ t[:, 1]) for t in c["tokens"].values() if w @ t[:, 1] > 0]
                per_seed.append(np.mean(vals))
            old.append(np.mean(per_seed))
        old_lo, old_hi = np.quantile(old, [0.025, 0.975])
        assert not old_lo <= theta <= old_hi, (metric, theta, old_lo, old_hi)


def test_random_count_tables_give_intervals_that_contain_the_estimate():
    """Many random per-document tables (few documents, sparse classes, zeros): an interval is
    printed in almost every case, and every printed one contains its estimate."""
    rng = np.random.default_rng(22)
    printed = refused = 0
    for case in range(60):
        D, S, T = int(rng.integers(2, 15)), int(rng.integers(1, 4)), int(rng.integers(1, 6))
        counts = []
        present = rng.random((D, T)) < rng.uniform(0.1, 0.9)
        for _ in range(S):
            gold = rng.integers(1, 5, (D, T)) * present
            tp = np.minimum(gold, rng.integers(0, 4, (D, T)))
            pred = tp + rng.integers(0, 3, (D, T))
            ent = {f"T{t}": np.column_stack([tp[:, t], pred[:, t], gold[:, t]]) for t in range(T)}
            tok = {f"B-T{t}": np.column_stack([tp[:, t], gold[:, t]]) for t in range(T)}
            tok["O"] = np.column_stack([rng.integers(5, 10, D), np.full(D, 10)])
            counts.append({"docs": [f"d{i}" for i in range(D)], "entities": ent, "tokens": tok})
        x, layout = stack_counts(counts)
        for metric in METRIC_NAMES:
            theta, lo, hi, why = variant_interval(x, layout, metric)
            if why is None:
                printed += 1
                assert lo - 1e-12 <= theta <= hi + 1e-12, (case, metric, theta, lo, hi)
            elif not math.isnan(theta):
                refused += 1
    assert refused <= 0.05 * (printed + refused), (printed, refused)


# ---- comparisons ---------------------------------------------------------------------------------

def family_table(md, family):
    return table_rows(md, f"### Family `{family}`")


def expected_pairs(family, names):
    vary, base = {"sampler": (0, "atl"), "loss": (1, "ce"), "decode": (2, "argmax")}[family]
    out = []
    for name in names:
        parts = [p.split("=")[1] for p in name.split(", ")]
        if parts[vary] != base:
            parts[vary] = base
            out.append((name, f"sampler={parts[0]}, loss={parts[1]}, decode={parts[2]}"))
    return out


def test_families_are_factorial_contrasts_with_holm_within_family_and_metric(study):
    """Each family compares each level with the baseline level within every combination of the
    other factors; Holm runs over one family and one metric (4 comparisons here, not 7 or 12)."""
    _, md, rows = study
    names = list(by_variant(rows))
    data = json.loads((study[0] / "report.json").read_text())
    for family in FAMILIES:
        printed = family_table(md, family)
        pairs = expected_pairs(family, names)
        assert len(pairs) == 4
        assert sorted({(r[0], r[1]) for r in printed}) == sorted(pairs)
        assert len(printed) == 4 * len(ALL_METRICS)
        for metric in ALL_METRICS:
            mine = [c for c in data["comparisons"] if c["family"] == family and c["metric"] == metric]
            assert [c["family_size"] for c in mine] == [4] * 4
            np.testing.assert_allclose([c["p_holm"] for c in mine], holm_by_hand([c["p"] for c in mine]), rtol=1e-12)
            assert all(c["holm_source"] == "sd" for c in mine)


def test_comparisons_recomputed_with_scipy_statsmodels_and_seqeval(study):
    """Every number of the `loss` family's table: Δ of seed means (seqeval / scikit-learn), the
    seed × document interval and its p (pseudo-values re-scored from the documents, statsmodels'
    ANOVA mean squares), Holm by hand, the exact document permutation p
    (scipy.stats.permutation_test), the seed-paired t (scipy), paired d, and the detectable
    difference from the mean squares pooled over the study's tested comparisons of the metric."""
    sdir, md, rows = study
    groups = by_variant(rows)
    data = json.loads((sdir / "report.json").read_text())
    printed = {(r[0], r[2]): r for r in family_table(md, "loss")}
    counts = {name: [doc_counts(read_docs(sdir, r)) for r in group] for name, group in groups.items()}
    for metric in ALL_METRICS:
        refs = {}
        for name, base in expected_pairs("loss", list(groups)):
            va = np.array([seqeval_scores([s for d in read_docs(sdir, r) for s in d])[metric] for r in groups[name]])
            vb = np.array([seqeval_scores([s for d in read_docs(sdir, r) for s in d])[metric] for r in groups[base]])
            refs[name] = (va, vb, permutation_reference(counts[name], counts[base], metric),
                          crossed_reference(counts[name], counts[base], metric, va.mean() - vb.mean()))
        adjusted = dict(zip(refs, holm_by_hand([r[3][2] for r in refs.values()])))
        # the pooled variance: every tested comparison of this metric in the study (all families)
        tested = [c for c in data["comparisons"] if c["metric"] == metric and not c["excluded"] and not c.get("same_as")]
        pooled = {k: np.mean([c["ms"][k] for c in tested]) for k in ("seed", "doc", "resid")}
        V, df = stats.CrossedVariance(3, 10, **pooled).variance_of_mean()
        mdd = stats.detectable_difference_se(np.sqrt(V), df)
        for name, (va, vb, p_perm, (lo, hi, p_sd)) in refs.items():
            row = printed[(name, METRIC_NAMES[metric])]
            t = sps.ttest_rel(va, vb)
            sd = (va - vb).std(ddof=1)
            assert row[3] == f"{va.mean() - vb.mean():+.4f}", (name, metric)
            assert row[4] == f"[{lo:+.4f}, {hi:+.4f}]", (name, metric)
            assert row[5] == fmt_p(p_sd) and row[6] == fmt_p(adjusted[name])
            assert row[7] == fmt_p(p_perm)
            assert row[8] == f"{t.statistic:.3f}" and row[9] == fmt_p(t.pvalue)
            assert row[10] == f"{(va - vb).mean() / sd:.2f}"
            assert row[11] == "3" and row[12] == f"{mdd:.4f}"


def test_sentences_claim_only_what_the_tests_support(study):
    _, md, _ = study
    data = json.loads((study[0] / "report.json").read_text())
    sentences = [l for l in md.splitlines() if l.startswith("- sampler=")]
    assert len(sentences) == len(data["comparisons"]) == 3 * 4 * len(ALL_METRICS)
    claims = 0
    for s, c in zip(sentences, data["comparisons"]):
        assert s.startswith(f"- {c['variant']} vs {c['baseline']}, {METRIC_NAMES[c['metric']]}: {c['diff']:+.4f}")
        if "significant (" in s and "not significant" not in s:  # a claim: adjusted p and interval agree
            assert c["p_holm"] < 0.05 and (c["ci"][0] > 0 or c["ci"][1] < 0), s
            claims += 1
        if "detects only differences of" in s:
            assert f"{c['mdd']:.4f} or more" in s
    # the fixture holds both kinds, so the guards above run (a test that cannot fail is a defect)
    assert 0 < claims < len(sentences)
    assert "MDD" in md and "detectable_difference_se" in md


def test_old_single_baseline_form_keeps_working(tmp_path):
    """Without [report.compare] the study's baseline is one family: every variant against it."""
    sdir = make_study(tmp_path, NOISE)
    md = build_report(sdir).read_text()
    rows = table_rows(md, "### Family `baseline`")
    assert len(rows) == 7 * 2  # 7 variants x 2 default metrics
    assert {r[1] for r in rows} == {"sampler=atl, loss=ce, decode=argmax"}
    data = json.loads((sdir / "report.json").read_text())
    assert {c["family_size"] for c in data["comparisons"]} == {7}


def test_a_pairs_family_compares_only_its_pairs_each_against_its_own_baseline(tmp_path):
    """``pairs = [["calibrated", "knn"]]`` on the decode axis: calibrated against KNN only (not argmax,
    not KNN against anything), in every sampler x loss cell, with Holm over those 4 comparisons alone;
    the differences are those of the seed means in results.jsonl."""
    noise = {**NOISE, **{(s, l, "calibrated"): 0.05 + 0.1 * (s == "btl") for s in ("atl", "btl") for l in ("ce", "focal")}}
    families = {**FAMILIES, "calibration": {"vary": "decode", "pairs": [["calibrated", "knn"]]}}
    sdir = make_study(tmp_path, noise, decodes=("argmax", "knn", "calibrated"), report={"compare": families})
    md = build_report(sdir).read_text()
    rows = [r for r in family_table(md, "calibration") if r[2] == "micro F1"]
    assert len(rows) == 4
    results = read_results(sdir / "results.jsonl")
    for row in rows:
        assert row[0].endswith("decode=calibrated") and row[1] == row[0].replace("calibrated", "knn")
        a, b = ([r["f1_micro"] for r in results if variant_of(r) == name] for name in row[:2])
        assert row[3] == f"{np.mean(a) - np.mean(b):+.4f}"
    mine = [c for c in json.loads((sdir / "report.json").read_text())["comparisons"]
            if c["family"] == "calibration" and c["metric"] == "f1_micro"]
    assert len(mine) == 4 and {c["family_size"] for c in mine} == {4}
    assert [c["p_holm"] for c in mine] == pytest.approx(holm_by_hand([c["p_sd"] for c in mine]), abs=1e-12)
    assert "### Family `calibration`: `calibrated` against `knn` (levels of `decode`)" in md
    assert len([r for r in family_table(md, "decode") if r[2] == "micro F1"]) == 8  # the baseline form: knn and calibrated vs argmax


@pytest.mark.parametrize("spec, says", [
    ({"vary": "decode", "pairs": [["calibrated", "argmax"]]}, "pairs: 'calibrated' is not a level of decode"),
    ({"vary": "decode", "pairs": [["knn", "knn"]]}, "pairs must be a non-empty list of [level, baseline level]"),
    ({"vary": "decode", "pairs": []}, "pairs must be a non-empty list"),
    ({"vary": "decode", "pairs": [["knn", "argmax"]], "baseline": "argmax"}, "expected { vary = "),
])
def test_bad_pairs_family_names_the_file_and_key(tmp_path, spec, says):
    sdir = make_study(tmp_path, NOISE, report={"compare": {"pairwise": spec}})
    with pytest.raises(ValueError) as e:
        build_report(sdir)
    assert "fake.toml: [report.compare] pairwise: " in str(e.value) and says in str(e.value)


def test_bad_family_declaration_names_the_file_and_key(tmp_path):
    sdir = make_study(tmp_path, NOISE, report={"compare": {"loss": {"vary": "loss", "baseline": "ce"}}})
    with pytest.raises(ValueError, match=r"fake.toml: \[report.compare\] loss: vary = 'loss' is not an axis"):
        build_report(sdir)


def test_constant_comparisons_are_reported_and_left_out_of_the_family(tmp_path):
    """BTL + CE + argmax predicts only O on every seed: its F1 is 0 and its unweighted accuracy
    1/|tags| on any test set, so comparing it is certain by construction; it is shown, not tested,
    and the Holm family shrinks."""
    def predict(variant, seed, tags, rng):
        return ["O"] * len(tags) if variant == ("btl", "ce", "argmax") else noisy(tags, rng, NOISE[variant])

    sdir = make_study(tmp_path, NOISE, predict=predict, report={"compare": FAMILIES, "metrics": ALL_METRICS})
    md = build_report(sdir).read_text()
    data = json.loads((sdir / "report.json").read_text())
    collapsed = "sampler=btl, loss=ce, decode=argmax"
    for family in FAMILIES:
        for metric in ALL_METRICS:
            mine = [c for c in data["comparisons"] if c["family"] == family and c["metric"] == metric]
            out = [c for c in mine if collapsed in (c["variant"], c["baseline"])]
            assert out and all(c["excluded"] and math.isnan(c["p_holm"]) for c in out)
            assert {c["family_size"] for c in mine if not c["excluded"]} == {len(mine) - len(out)}
    assert "predicts no entity at all on any seed" in md
    assert "left out of the `sampler` Holm family" in md
    row = {r[0]: r for r in family_table(md, "sampler")}[collapsed]
    assert row[5] == "–" and row[6] == "left out" and row[7] == "–"
    main = {r[0]: r for r in table_rows(md, "## Main results")}[collapsed]
    assert main[3] == "[0.0000, 0.0000]"


def test_declared_construction_leaves_those_comparisons_out_with_the_reason(tmp_path):
    """``[[report.by_construction]]`` where = {sampler = btl, decode = argmax}: every comparison with
    that variant on either side (sampler and loss families, and KNN against it in the decode
    family) is shown with the study's reason and left out of Holm; the others are tested exactly
    as in a report without the rule, over the smaller family (Holm by hand)."""
    why = "reads BTL's logits with argmax, which its objective rules out"
    rule = [{"where": {"sampler.name": "btl", "decode": ["argmax"]}, "why": why}]
    plain = make_study(tmp_path, NOISE, report={"compare": FAMILIES, "metrics": ALL_METRICS}, name="plain")
    ruled = make_study(tmp_path, NOISE, report={"compare": FAMILIES, "metrics": ALL_METRICS, "by_construction": rule},
                       name="ruled")
    md = build_report(ruled).read_text()
    build_report(plain)
    before, after = (json.loads((d / "report.json").read_text())["comparisons"] for d in (plain, ruled))
    key = lambda c: (c["family"], c["metric"], c["variant"], c["baseline"])
    before = {key(c): c for c in before}
    hit = lambda label: "sampler=btl" in label and label.endswith("decode=argmax")
    out = [c for c in after if hit(c["variant"]) or hit(c["baseline"])]
    # btl+ce and btl+focal argmax against ATL (sampler), btl+focal argmax against btl+ce (loss),
    # btl knn against btl argmax (decode, two losses): 5 comparisons x 3 metrics
    assert len(out) == 15 and all(why in c["excluded"] and math.isnan(c["p_holm"]) for c in out)
    for family in FAMILIES:
        for metric in ALL_METRICS:
            mine = [c for c in after if c["family"] == family and c["metric"] == metric]
            tested = [c for c in mine if not c["excluded"]]
            assert tested and all(not before[key(c)]["excluded"] for c in tested)
            for c in tested:  # the same test, corrected over the smaller family
                assert c["p_sd"] == before[key(c)]["p_sd"] and c["diff"] == before[key(c)]["diff"]
            assert [c["p_holm"] for c in tested] == pytest.approx(holm_by_hand([c["p_sd"] for c in tested]))
            assert {c["family_size"] for c in tested} == {len(tested)}
    assert f"Not tested: the variant {why}. The difference follows from the construction" in md
    assert f"Not tested: the baseline {why}." in md
    assert not any(why in (c["excluded"] or "") for c in before.values())


def test_the_study_file_check_knows_every_report_option():
    from bertlab.families import REPORT_OPTIONS
    from bertlab.report.rows import DEFAULTS
    assert sorted(REPORT_OPTIONS) == sorted(DEFAULTS)


def test_deterministic_model_is_one_run_and_gets_no_seed_test(tmp_path):
    """A deterministic cell is one run: the main table says so; its comparisons have no seed-paired
    t, and their document permutation test pairs the single run with each seed of the other
    variant (scipy, exact), their interval resamples only the other variant's seeds."""
    sdir = make_study(tmp_path, NOISE, deterministic={("btl", "focal")},
                      report={"compare": FAMILIES, "metrics": ["f1_micro"]})
    md = build_report(sdir).read_text()
    rows = read_results(sdir / "results.jsonl")
    assert len([r for r in rows if r["axes"]["sampler.name"] == "btl" and r["axes"]["loss.name"] == "focal"]) == 2
    main = {r[0]: r for r in table_rows(md, "## Main results")}
    assert main["sampler=btl, loss=focal, decode=knn"][1] == "1 (deterministic)"
    assert main["sampler=btl, loss=focal, decode=knn"][2].endswith("± –")
    groups = by_variant(rows)
    name, base = "sampler=btl, loss=focal, decode=knn", "sampler=atl, loss=focal, decode=knn"
    row = {r[0]: r for r in family_table(md, "sampler")}[name]
    assert row[8] == "–" and row[9] == "–" and row[11] == "1 run"
    ca = [doc_counts(read_docs(sdir, r)) for r in groups[name]]
    cb = [doc_counts(read_docs(sdir, r)) for r in groups[base]]
    assert row[7] == fmt_p(permutation_reference(ca * 3, cb, 'f1_micro'))
    diff = next(c["diff"] for c in json.loads((sdir / "report.json").read_text())["comparisons"]
                if c["variant"] == name and c["baseline"] == base)
    lo, hi, p = crossed_reference(ca * 3, cb, "f1_micro", diff)  # the one run paired with every seed
    assert row[4] == f"[{lo:+.4f}, {hi:+.4f}]" and row[5] == fmt_p(p)


def test_identical_seeds_of_old_results_count_as_one_run(tmp_path):
    """Results written before deterministic runs were marked (an HMM trained on 3 seeds): identical
    predictions on every seed are one run, not three."""
    def predict(variant, seed, tags, rng):
        if variant[:2] == ("btl", "focal"):
            rng = np.random.default_rng(len(tags))  # ignores the seed
        return noisy(tags, rng, NOISE[variant])

    sdir = make_study(tmp_path, NOISE, predict=predict, report={"compare": FAMILIES})
    md = build_report(sdir).read_text()
    main = {r[0]: r for r in table_rows(md, "## Main results")}
    assert main["sampler=btl, loss=focal, decode=argmax"][1] == "1 (3 identical runs)"
    assert main["sampler=atl, loss=focal, decode=argmax"][1] == "3"


def test_expand_trains_deterministic_models_once():
    """The shipped baselines study: the HMM and the L-BFGS feature CRF are one run per dataset;
    a feature CRF trained by Adam (shuffled mini-batches) keeps its seeds."""
    study = load_study("baselines")
    runs = [r.run_id for r in expand(study)]
    for data in ("ncbi_disease", "maccrobat"):
        assert [r for r in runs if f"data={data}__model=hmm" in r] == [f"data={data}__model=hmm__seed=0"]
        assert [r for r in runs if f"data={data}__model=crf" in r] == [f"data={data}__model=crf__seed=0"]
        assert len([r for r in runs if f"data={data}__model=minilm__" in r]) == 3
    for m in study.axes["model"]:
        if m.get("arch") == "crf":
            m.setdefault("overrides", {})["optimizer"] = "adam"
    assert len([r for r in expand(study) if "model=crf" in r.run_id]) == 6


def test_one_seed_has_a_document_test_but_no_seed_test(tmp_path):
    sdir = make_study(tmp_path, NOISE, seeds=(0,), decodes=("argmax",))
    md = build_report(sdir).read_text()
    data = json.loads((sdir / "report.json").read_text())
    for c in data["comparisons"]:
        assert math.isnan(c["p_t"]) and not math.isnan(c["p_perm"]) and not math.isnan(c["p_sd"])
        assert c["ci"] is not None and c["ci_note"] == "one seed: the interval covers the test documents only"
    assert "cover the test documents only (one seed)" in md


# ---- the rest of the report ----------------------------------------------------------------------

def test_bands_and_compute(study):
    _, md, rows = study
    groups = by_variant(rows)
    bands = {r[0]: r for r in table_rows(md, "## Per-class F1 by frequency band")}
    compute = {r[0]: r for r in table_rows(md, "## Compute cost")}
    for name, group in groups.items():
        # Sign: 120 mentions -> head (>= 40); Dose 30 -> middle; Age 4 -> tail (< 10)
        for col, typ in ((1, "Sign"), (2, "Dose"), (3, "Age")):
            f1 = np.mean([r["per_type"][typ]["f1"] for r in group])
            assert bands[name][col] == f"{f1:.4f} (1)"
        assert compute[name][2] == f"{np.median([r['seconds_per_epoch'] for r in group]):.1f}"
        assert compute[name][3] == f"{np.median([r['train_seconds'] for r in group]):.1f}"
        assert compute[name][4] == f"{np.median([r['inference_tokens_per_s'] for r in group]):.0f}"
        assert compute[name][5] == f"{np.mean([r['f1_micro'] for r in group]):.4f}"
    total = sum(12.0 + k for k in (0, 1, 2)) * 4
    assert f"Total wall time: {total:.1f} s" in md


def test_report_without_predictions_or_baseline(tmp_path):
    """Runs without prediction files give n/a CIs; a study without baseline says nothing is tested."""
    sdir = make_study(tmp_path, NOISE, seeds=(0, 1), decodes=("argmax",), baseline={})
    for f in sdir.glob("*/predictions_*.jsonl"):
        f.unlink()
    write_results(sdir)
    md = build_report(sdir).read_text()
    assert "n/a" in md and "names no baseline" in md


def test_without_predictions_the_seed_t_test_is_corrected_and_says_so(tmp_path):
    sdir = make_study(tmp_path, NOISE)
    for f in sdir.glob("*/predictions_*.jsonl"):
        f.unlink()
    write_results(sdir)
    md = build_report(sdir).read_text()
    data = json.loads((sdir / "report.json").read_text())
    micro = [c for c in data["comparisons"] if c["metric"] == "f1_micro"]
    assert all(c["holm_source"] == "t" and c["ci"] is None for c in micro)
    np.testing.assert_allclose([c["p_holm"] for c in micro], holm_by_hand([c["p_t"] for c in micro]), rtol=1e-12)
    assert "test-set variance is not accounted for" in md


def test_report_rebuild_is_deterministic(study):
    sdir, md, _ = study
    assert build_report(sdir).read_text() == md


def write_rows(sdir, rows, report, axes, name="synthetic"):
    sdir.mkdir()
    write_json(sdir / "study.json", {
        "name": name, "scale": "smoke", "axes": axes, "baseline": {}, "decodes": sorted({r["decode"] for r in rows}),
        "short_names": {k: k.split(".")[-1] for k in axes}, "report": report, "runs": []})
    (sdir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def synthetic_row(axes, decode, f1, **extra):
    return {"run_id": "__".join(f"{k}={v}" for k, v in axes.items()), "decode": decode, "seed": axes["train.seed"],
            "axes": axes, "f1_micro": f1, "f1_macro": f1, "unweighted_accuracy": f1, "dev_f1_micro": f1,
            "per_type": {"X": {"precision": f1, "recall": f1, "f1": f1, "support": 5}},
            "train_mentions": {"X": 10}, "train_seconds": 1.0, "seconds_per_epoch": 1.0, "epochs": 1, "params": 10,
            "inference_tokens_per_s": 5.0, "wall_seconds": 1.0, "predictions": None, "env": {}, **extra}


def test_anova_with_seed_blocks_matches_statsmodels(tmp_path):
    """The two-way ANOVA of an lr x batch-size study, seeds as blocks (each seed shared by all nine
    cells), equals statsmodels' anova_lm of y ~ C(a) * C(b) + C(seed)."""
    import pandas as pd
    import statsmodels.api as sm
    from statsmodels.formula.api import ols
    rng = np.random.default_rng(1)
    axes = {"optim.lr": [1e-4, 5e-5], "sampler.batch_size": [8, 16, 32], "train.seed": [0, 1, 2]}
    seed_effect = rng.normal(0, 0.02, 3)
    rows = []
    for lr in axes["optim.lr"]:
        for bs in axes["sampler.batch_size"]:
            for seed in axes["train.seed"]:
                f1 = 0.5 + (lr > 6e-5) * 0.05 + bs * 0.001 + seed_effect[seed] + rng.normal(0, 0.01)
                rows.append(synthetic_row({"optim.lr": lr, "sampler.batch_size": bs, "train.seed": seed}, "argmax", f1))
    write_rows(tmp_path / "anova", rows, {"figures": False, "anova": {"a": "optim.lr", "b": "sampler.batch_size"}}, axes)
    md = build_report(tmp_path / "anova").read_text()
    df = pd.DataFrame({"y": [r["dev_f1_micro"] for r in rows], "a": [str(r["axes"]["optim.lr"]) for r in rows],
                       "b": [str(r["axes"]["sampler.batch_size"]) for r in rows], "k": [r["seed"] for r in rows]})
    ref = sm.stats.anova_lm(ols("y ~ C(a) * C(b) + C(k)", data=df).fit(), typ=2)
    printed = {r[0]: r for r in table_rows(md, "## Two-way ANOVA")}
    for name, ref_name in (("lr", "C(a)"), ("batch_size", "C(b)"), ("lr × batch_size", "C(a):C(b)"),
                           ("seed (block)", "C(k)"), ("residual", "Residual")):
        assert printed[name][1] == f"{ref.loc[ref_name, 'sum_sq']:.6f}"
        assert printed[name][2] == f"{ref.loc[ref_name, 'df']:.0f}"
        if ref_name != "Residual":
            assert printed[name][4] == f"{ref.loc[ref_name, 'F']:.3f}"
            assert printed[name][5] == f"{ref.loc[ref_name, 'PR(>F)']:.4f}"
    assert "randomised complete block" in md


def test_anova_list_gives_one_section_per_metric_macro_f1_over_the_fixed_class_set(tmp_path):
    """``anova = [{...metric = "f1_micro"}, {...metric = "f1_macro"}]``: size x loss, seeds as blocks,
    one section each, equal to statsmodels; macro F1 is the mean over the types with test support
    (a type only predicted, support 0, is left out, unlike the row's seqeval ``f1_macro``); a seed
    that has not finished every cell is left out (named) until it has."""
    import pandas as pd
    import statsmodels.api as sm
    from statsmodels.formula.api import ols
    rng = np.random.default_rng(3)
    axes = {"model.num_layers": [2, 4, 6], "loss": ["ce", "focal"], "train.seed": [0, 1, 2, 3]}
    rows, frame = [], []
    for layers in axes["model.num_layers"]:
        for loss in axes["loss"]:
            for seed in axes["train.seed"]:
                f1s = rng.uniform(0.1, 0.9, 3) + (loss == "focal") * (layers == 2) * 0.05
                row = synthetic_row({"model.num_layers": layers, "loss": loss, "train.seed": seed}, "argmax",
                                    float(rng.uniform(0.4, 0.6)))
                row["per_type"] = {t: {"precision": f, "recall": f, "f1": float(f), "support": 4}
                                   for t, f in zip("ABC", f1s)} | {"D": {"precision": 0, "recall": 0, "f1": 0.0,
                                                                           "support": 0}}
                row["f1_macro"] = float(np.mean(list(f1s) + [0.0]))  # seqeval's: D counted
                rows.append(row)
                frame.append({"micro": row["f1_micro"], "macro": float(np.mean(f1s)), "a": str(layers),
                              "b": loss, "k": str(seed)})
    # a study in progress: seed 4 has one cell so far; the complete block design leaves it out
    rows.append(synthetic_row({"model.num_layers": 2, "loss": "ce", "train.seed": 4}, "argmax", 0.9))
    spec = [{"a": "model.num_layers", "b": "loss", "metric": m} for m in ("f1_micro", "f1_macro")]
    write_rows(tmp_path / "sizes", rows, {"figures": False, "anova": spec}, {**axes, "train.seed": [0, 1, 2, 3, 4]})
    md = build_report(tmp_path / "sizes").read_text()
    assert md.count("left out until they have every cell: seed 4") == 2 and md.count(", 24 runs, decode") == 2
    # one seed with every cell (a study that has just begun): no table of NaN, a sentence saying why
    one = [r for r in rows if r["axes"]["train.seed"] in (0, 4)]
    write_rows(tmp_path / "begun", one, {"figures": False, "anova": spec}, {**axes, "train.seed": [0, 4]})
    md_one = build_report(tmp_path / "begun").read_text()
    assert md_one.count("One run per cell so far (6 runs: seed 0): the model with interaction fits them exactly") == 2
    assert "| source |" not in md_one and "anova" not in json.loads((tmp_path / "begun" / "report.json").read_text())
    sections = md.split("## Two-way ANOVA: ")[1:]
    assert [s.split("\n")[0] for s in sections] == ["f1_micro ~ num_layers × loss", "f1_macro ~ num_layers × loss"]
    df = pd.DataFrame(frame)
    for section, column in zip(sections, ("micro", "macro")):
        ref = sm.stats.anova_lm(ols(f"{column} ~ C(a) * C(b) + C(k)", data=df).fit(), typ=2)
        printed = {r[0]: r for r in table_rows("## " + section, "## ")}
        for name, ref_name in (("num_layers", "C(a)"), ("loss", "C(b)"), ("num_layers × loss", "C(a):C(b)"),
                               ("seed (block)", "C(k)"), ("residual", "Residual")):
            assert printed[name][1] == f"{ref.loc[ref_name, 'sum_sq']:.6f}", (column, name)
            if ref_name != "Residual":
                assert printed[name][5] == f"{ref.loc[ref_name, 'PR(>F)']:.4f}", (column, name)
    report = json.loads((tmp_path / "sizes" / "report.json").read_text())
    assert [a["metric"] for a in report["anova"]] == ["f1_micro", "f1_macro"]


def test_a_long_learning_curve_table_shows_every_kth_epoch_and_the_last(tmp_path):
    """50 epochs (a BiLSTM) next to 8 (MiniLM): at most 13 epoch columns, epochs 0, 5, ..., 45 and 49, each
    the mean over the seeds that trained it (one seed stopped at 30)."""
    from bertlab.report.training import CURVE_COLUMNS
    rng = np.random.default_rng(9)
    rows, expected = [], {}
    for model, n_epochs in (("bilstm", (50, 30)), ("minilm", (8, 8))):
        for seed, n in enumerate(n_epochs):
            f1 = [float(v) for v in np.round(rng.uniform(0.2, 0.6, n), 4)]
            curve = {"epoch": list(range(n)), "dev_f1_micro": f1}
            rows.append(synthetic_row({"model": model, "train.seed": seed}, "argmax", 0.5, curve=curve,
                                      best_epoch=int(np.argmax(f1)), select="f1_micro"))
            expected.setdefault(model, []).append(f1)
    write_rows(tmp_path / "long", rows, {"figures": False}, {"model": ["bilstm", "minilm"], "train.seed": [0, 1]})
    md = build_report(tmp_path / "long").read_text()
    section = md.split("## Learning curves (dev)")[1].split("\n## ")[0]
    header = next(l for l in section.splitlines() if l.startswith("| variant"))
    shown = [int(c.split()[1]) for c in header.strip("|").split("|")[3:-1]]
    assert header.strip("|").split("|")[-1].strip() == "last"
    assert shown == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 49] and len(shown) <= CURVE_COLUMNS
    assert "Epochs 0, 5, 10, … and the last (49) are shown" in section
    for model, curves in expected.items():  # each seed's own last epoch (MiniLM's 7 is not a column)
        last = table_rows(md, "## Learning curves")
        row = next(r for r in last if r[0] == f"model={model}, decode=argmax")
        assert row[-1] == f"{np.mean([c[-1] for c in curves]):.4f} ({', '.join(str(len(c) - 1) for c in curves)})"
    table = {r[0]: r for r in table_rows(md, "## Learning curves")}
    for model, curves in expected.items():
        for col, epoch in enumerate(shown):  # the last column is "last", after the epochs
            values = [c[epoch] for c in curves if epoch < len(c)]
            want = f"{np.mean(values):.4f}" if values else "–"
            assert table[f"model={model}, decode=argmax"][3 + col] == want, (model, epoch)


def test_learning_curves_table_and_figure(tmp_path):
    """Rows carrying ``curve`` / ``best_epoch`` / ``select``: the table gives each variant's best
    epoch per seed and the mean dev F1 per epoch (a shorter curve and None values allowed), the
    figure has one panel per decode. Rows without curves (old results, an HMM) change nothing."""
    axes = {"loss.name": ["ce", "focal"], "train.seed": [0, 1, 2]}
    rows, expected = [], {}
    rng = np.random.default_rng(5)
    for loss in axes["loss.name"]:
        for decode in ("argmax", "knn"):
            for seed in axes["train.seed"]:
                n = 3 if seed < 2 else 2  # one run stopped early
                f1 = [float(v) for v in np.round(rng.uniform(0.2, 0.6, n), 4)]
                if seed == 1:
                    f1[1] = None
                curve = {"epoch": list(range(n)), "train_loss": [1.0] * n, "dev_loss": [0.5] * n,
                         "dev_f1_micro": f1, "dev_f1_macro": f1, "dev_unweighted_accuracy": f1}
                rows.append(synthetic_row({"loss.name": loss, "train.seed": seed}, decode, 0.5, curve=curve,
                                          best_epoch=int(np.nanargmax([np.nan if v is None else v for v in f1])),
                                          select="f1_micro"))
                expected.setdefault((loss, decode), []).append(f1)
    rows.append(synthetic_row({"loss.name": "hmm", "train.seed": 0}, "viterbi", 0.3))  # no curve at all
    rows.append(synthetic_row({"loss.name": "hmm", "train.seed": 1}, "viterbi", 0.3, curve=None, best_epoch=None))
    write_rows(tmp_path / "curves", rows, {"figures": True}, {**axes, "loss.name": ["ce", "focal", "hmm"]})
    md = build_report(tmp_path / "curves").read_text()
    table = {r[0]: r for r in table_rows(md, "## Learning curves")}
    assert set(table) == {f"name={l}, decode={d}" for l in ("ce", "focal") for d in ("argmax", "knn")}
    for (loss, decode), curves in expected.items():
        row = table[f"name={loss}, decode={decode}"]
        group = [r for r in rows if r["axes"]["loss.name"] == loss and r["decode"] == decode]
        assert row[1] == "f1_micro"
        assert row[2] == ", ".join(str(r["best_epoch"]) for r in group)
        for epoch in range(3):
            values = [c[epoch] for c in curves if epoch < len(c) and c[epoch] is not None]
            assert row[3 + epoch] == f"{np.mean(values):.4f}"
    figure = tmp_path / "curves" / "figures" / "learning_curves.png"
    assert figure.exists() and figure.stat().st_size > 1000
    assert "![dev micro F1 per epoch](figures/learning_curves.png)" in md

    old = [{k: v for k, v in r.items() if k not in ("curve", "best_epoch", "select")} for r in rows]
    write_rows(tmp_path / "old", old, {"figures": True}, {**axes, "loss.name": ["ce", "focal", "hmm"]})
    md = build_report(tmp_path / "old").read_text()
    assert "Learning curves" not in md and not (tmp_path / "old" / "figures" / "learning_curves.png").exists()


def test_per_class_table_takes_each_class_count_from_its_own_corpus():
    """Variants on two corpora (a study swept over datasets): each class's training mentions and
    band come from the variant that has that class, not from the first variant."""
    from bertlab.report.classes import band_table
    from bertlab.report.markdown import band_section
    rows = {("data", "a"): [{"train_mentions": {"Disease": 900}, "per_type": {"Disease": {"f1": 0.8, "support": 5}}}],
            ("data", "b"): [{"train_mentions": {"Age": 30, "Dose": 120},
                             "per_type": {"Age": {"f1": 0.9, "support": 3}, "Dose": {"f1": 0.5, "support": 2}}}]}
    labels = {k: f"data={k[1]}" for k in rows}
    bands = {"head": 500, "tail": 50}
    per_variant, detail = band_table(rows, labels, bands)
    md = band_section({label: {"bands": entry} for label, entry in per_variant.items()}, detail, bands)
    table = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:3] for line in md if line.startswith("| ")}
    assert table["Disease"] == ["900", "head"]
    assert table["Dose"] == ["120", "middle"]
    assert table["Age"] == ["30", "tail"]
    assert per_variant["data=b"]["tail"] == {"f1": 0.9, "classes": 1}


# ---- where the time went (time_split) ---------------------------------------------------------------

PARTS = ["training", "dev_forward", "knn_fit", "calibration_fit", "dev_decoding", "best_model_saving",
         "checkpoints", "final_scoring"]
PART_NAMES = {"training": "training", "dev_forward": "dev forward", "knn_fit": "KNN fit",
              "dev_decoding": "dev decoding", "best_model_saving": "best-model saving",
              "checkpoints": "checkpoints", "final_scoring": "final scoring"}


def test_time_split_table_means_shares_and_study_total(tmp_path):
    """Per trained variant (decode dropped): the mean over seeds of each part and its share of the
    summed parts; a run scored with two decodes counts once. The study total sums the runs. A part
    that is 0 in every run (calibration) is named, not shown; an HMM without a split is left out."""
    rng = np.random.default_rng(7)
    axes = {"loss.name": ["ce", "focal", "hmm"], "train.seed": [0, 1, 2]}
    rows, splits = [], {}
    for loss in ("ce", "focal"):
        for seed in axes["train.seed"]:
            split = {p: float(np.round(rng.uniform(0.5, 60), 3)) for p in PARTS}
            split["calibration_fit"] = 0.0
            splits.setdefault(loss, []).append(split)
            for decode in ("argmax", "knn"):  # the same split on both rows of the run
                rows.append(synthetic_row({"loss.name": loss, "train.seed": seed}, decode, 0.5, time_split=split))
    rows.append(synthetic_row({"loss.name": "hmm", "train.seed": 0}, "viterbi", 0.3, time_split=None))
    write_rows(tmp_path / "split", rows, {"figures": False}, axes)
    md = build_report(tmp_path / "split").read_text()
    data = json.loads((tmp_path / "split" / "report.json").read_text())

    shown = [p for p in PARTS if p != "calibration_fit"]
    lines = md.splitlines()
    header = next(l for l in lines if l.startswith("| trained variant"))
    assert header == "| trained variant | runs | " + " | ".join(f"{PART_NAMES[p]} s" for p in shown) + " | timed total s |"
    assert "Zero in every run, so not shown: calibration fit." in md
    table = {r[0]: r for r in table_rows(md, "### Where the time went")}
    assert set(table) == {"name=ce", "name=focal", "study total (sum over runs)"}

    def expect(values):
        return [f"{v:.1f} ({v / values.sum():.0%})" for v in values] + [f"{values.sum():.1f}"]

    for loss, runs in splits.items():
        mean = np.array([[s[p] for p in shown] for s in runs]).mean(0)
        assert table[f"name={loss}"][1:] == ["3"] + expect(mean)
        np.testing.assert_allclose([data["time_split"]["variants"][f"name={loss}"]["mean"][p] for p in shown], mean)
        np.testing.assert_allclose([data["time_split"]["variants"][f"name={loss}"]["share"][p] for p in shown],
                                   mean / mean.sum())
    total = np.array([[s[p] for p in shown] for runs in splits.values() for s in runs]).sum(0)
    assert table["study total (sum over runs)"][1:] == ["6"] + expect(total)
    largest = max(range(1, len(shown)), key=lambda i: total[i])  # index 0 is training
    assert data["time_split"]["largest_non_training"] == shown[largest]
    assert (f"Besides training, the study's seconds go mostly to **{PART_NAMES[shown[largest]]}**: "
            f"{total[largest]:.1f} s") in md
    assert f"{total[largest] / total.sum():.0%} of the timed total" in md

    # old results: no split anywhere, no table and no error
    old = [{k: v for k, v in r.items() if k != "time_split"} for r in rows]
    write_rows(tmp_path / "old", old, {"figures": False}, axes)
    md = build_report(tmp_path / "old").read_text()
    assert "## Compute cost" in md and "Where the time went" not in md


# ---- publishing a study folder as docs/results/NAME commits it ---------------------------------------

def test_publish_copies_finished_runs_without_resume_files_and_reports_the_same_numbers(tmp_path, capsys):
    from bertlab.report.cli import main
    noise = {(s, l, d): 0.1 for s in ("atl", "btl") for l in ("ce", "wce") for d in ("argmax", "knn")}
    sdir = make_study(tmp_path, noise, seeds=(0, 1))
    build_report(sdir)
    runs = sorted(p.name for p in sdir.iterdir() if (p / "metrics.json").exists())
    for run_id in runs:  # what a real run folder also holds: resume and serving files
        rdir = sdir / run_id
        (rdir / "checkpoint.pt").write_bytes(b"x" * 100)
        (rdir / "best").mkdir()
        (rdir / "best" / "model.safetensors").write_bytes(b"x")
        (rdir / "best-knn").mkdir()
        (rdir / "predictions_dev_argmax.jsonl").write_text("{}\n")
        (rdir / "claim-0.json").write_text("{}")
        (rdir / ".metrics.json.abc.tmp").write_text("")
        (rdir / "gradflow").mkdir()
        (rdir / "gradflow" / "gradflow.csv").write_text("step,layer\n")
        (rdir / "gradflow" / "gradflow.jsonl").write_text("{}\n")  # the same rows: not published
    training = sdir / "sampler=btl__loss=wce__seed=2"  # a run still training: no metrics.json yet
    training.mkdir()
    (training / "run.json").write_text("{}")
    (training / "checkpoint.pt").write_bytes(b"x")

    dest = tmp_path / "docs" / "results" / "study"
    assert main([str(sdir), "--publish", str(dest)]) == 0
    assert f"published {len(runs)} finished run(s)" in capsys.readouterr().out
    published = sorted(p.name for p in dest.iterdir() if p.is_dir() and p.name != "figures")
    assert published == runs
    for run_id in runs:
        kept = sorted(p.name for p in (dest / run_id).iterdir())
        assert kept == sorted(["run.json", "metrics.json", "timing.json", "gradflow",
                               "predictions_test_argmax.jsonl", "predictions_test_knn.jsonl"])
        assert [p.name for p in (dest / run_id / "gradflow").iterdir()] == ["gradflow.csv"]
    assert read_results(dest / "results.jsonl") == read_results(sdir / "results.jsonl")
    src_json = json.loads((sdir / "report.json").read_text())
    dest_json = json.loads((dest / "report.json").read_text())
    assert dest_json["variants"] == src_json["variants"]  # the same numbers, intervals included
    assert dest_json["comparisons"] == src_json["comparisons"]

    # published in parts: a run already in dest stays when the source no longer has it
    import shutil
    shutil.rmtree(sdir / runs[0])
    assert main([str(sdir), "--publish", str(dest)]) == 0
    assert (dest / runs[0] / "metrics.json").exists()
    assert len({r["run_id"] for r in read_results(dest / "results.jsonl")}) == len(runs)

    assert main([str(tmp_path / "nowhere"), "--publish", str(dest)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "study.json: not found" in err
    assert main([str(sdir), "--publish", str(sdir)]) == 2
    assert "the same folder as the study" in capsys.readouterr().err


def test_publish_on_a_full_disk_swaps_each_run_folder_whole_or_not_at_all(tmp_path, capsys, monkeypatch):
    """Publishing a second study over a first one's runs with the disk filling up midway used to
    leave one folder holding files of both (the new metrics.json beside the old predictions) and
    end in a traceback. Now a run folder is written beside its place and swapped in whole: the
    failed one is the old run's, byte for byte, no temp folder is left, and the error is one line
    naming the file."""
    import errno

    import bertlab.files
    from bertlab.report.cli import main
    first = make_study(tmp_path, {("atl", "ce", "argmax"): 0.1}, seeds=(0, 1), decodes=("argmax",), name="first")
    second = make_study(tmp_path, {("atl", "ce", "argmax"): 0.4}, seeds=(0, 1), decodes=("argmax",), name="second")
    dest = tmp_path / "published"
    assert main([str(first), "--publish", str(dest)]) == 0
    capsys.readouterr()

    def snapshot(folder):
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    before = {r.name: snapshot(r) for r in dest.iterdir() if r.is_dir() and r.name != "figures"}
    runs = sorted(before)
    assert snapshot(dest / runs[0]) != snapshot(second / runs[0])  # the two studies' runs differ
    real, calls = bertlab.files.write_bytes, []

    def full_disk(path, data):
        calls.append(path)
        if len(calls) == 3:  # the third file of the first run folder
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)
    monkeypatch.setattr(bertlab.files, "write_bytes", full_disk)
    assert main([str(second), "--publish", str(dest)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    failed = Path(calls[2]).name
    assert err == [f"bertlab report: {dest / runs[0] / failed}: No space left on device"]
    assert {r: snapshot(dest / r) for r in runs} == before  # each run folder the old one, whole
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]

    monkeypatch.setattr(bertlab.files, "write_bytes", real)  # room again: the publish goes through
    assert main([str(second), "--publish", str(dest)]) == 0
    assert {r: snapshot(dest / r) for r in runs} == {r: snapshot(second / r) for r in runs}


def test_report_adds_the_rows_of_finished_runs_that_results_jsonl_lacks(tmp_path, capsys):
    """A worker killed between a run's metrics.json and the results left results.jsonl a row short,
    and `bertlab report` said "3 of 4 runs finished" with all four metrics.json there. It now
    rebuilds results.jsonl from the run folders first (the same rows write_results gives), and
    leaves a complete file byte for byte."""
    from bertlab.report.cli import main
    sdir = make_study(tmp_path, {("atl", "ce", "argmax"): 0.1, ("btl", "ce", "argmax"): 0.2}, seeds=(0, 1),
                      decodes=("argmax",))
    complete = (sdir / "results.jsonl").read_bytes()
    lines = complete.decode().splitlines(keepends=True)
    lost = json.loads(lines[2])["run_id"]
    (sdir / "results.jsonl").write_text("".join(lines[:2] + lines[3:]))
    assert main([str(sdir)]) == 0
    assert "4 of 4 runs finished" in (sdir / "report.md").read_text()
    assert (sdir / "results.jsonl").read_bytes() == complete
    err = capsys.readouterr().err
    assert err == f"{sdir / 'results.jsonl'}: 1 finished run(s) had no row ({lost}); rebuilt from the run folders\n"
    mtime = (sdir / "results.jsonl").stat().st_mtime_ns
    assert main([str(sdir)]) == 0 and capsys.readouterr().err == ""
    assert (sdir / "results.jsonl").stat().st_mtime_ns == mtime  # complete: not rewritten


# ---- a committed folder: the hint, and the intervals of the earlier build ---------------------------

def test_missing_study_folder_points_to_the_committed_result(tmp_path, capsys):
    from bertlab.report.cli import main
    assert main(["btl_focal", "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "study.json: not found" in err and "docs/results/btl_focal/" in err
    assert err.endswith("docs/results/btl_focal`.") and "rebuild it with `bertlab report " in err
    assert main(["no_such_study", "--out", str(tmp_path / "runs")]) == 2
    assert "docs/results" not in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"", b"\x00\x01\xff", b"[]"])
def test_a_damaged_study_json_is_one_line_naming_it(tmp_path, capsys, content):
    """Issue #41: an empty, binary or non-object study.json was "Expecting value: line 1 column 1"
    or a traceback, without the file's name."""
    from bertlab.report.cli import main
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "study.json").write_bytes(content)
    assert main([str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"bertlab report: {tmp_path / 's' / 'study.json'}: ") \
        and "damaged" in err


def test_rebuild_without_prediction_files_keeps_the_earlier_intervals(tmp_path):
    """A committed folder (results.jsonl and report.json, no prediction files) rebuilt in place:
    the main-table intervals and the comparisons' document-level results of the earlier build are
    kept, marked as such, wherever that build scored the same runs with the same values and the same
    statistics; others are n/a, and a second rebuild changes nothing."""
    (tmp_path / "docs" / "results").mkdir(parents=True)
    sdir = make_study(tmp_path / "docs" / "results", NOISE, report={"compare": FAMILIES, "metrics": ALL_METRICS})
    build_report(sdir)
    first = json.loads((sdir / "report.json").read_text())
    for f in sdir.glob("*/predictions_*.jsonl"):
        f.unlink()
    write_results(sdir)
    # the earlier build as older code wrote it: one interval of other values (another definition)
    stored = json.loads((sdir / "report.json").read_text())
    stale = "sampler=atl, loss=ce, decode=knn"
    stored["variants"][stale]["f1_macro"]["values"][0] += 0.01
    (sdir / "report.json").write_text(json.dumps(stored))
    # an earlier build made with other statistics is not reused at all
    other = tmp_path / "other"
    other.mkdir()
    shutil.copytree(sdir, other / "study")
    older = json.loads((other / "study" / "report.json").read_text())
    (other / "study" / "report.json").write_text(json.dumps({**older, "statistics": "hierarchical bootstrap"}))
    older_md = build_report(other / "study").read_text()
    assert all(cell == "n/a" for r in table_rows(older_md, "## Main results") for cell in r[3::2])
    assert all(c["ci_note"] == "no prediction files" and c["holm_source"] == "t"
               for c in json.loads((other / "study" / "report.json").read_text())["comparisons"])

    md = build_report(sdir).read_text()
    assert "rebuild with `bertlab report docs/results/study`" in md
    table = {r[0]: r for r in table_rows(md, "## Main results")}
    data = json.loads((sdir / "report.json").read_text())
    for name, entry in first["variants"].items():
        for col, m in ((3, "f1_micro"), (5, "f1_macro"), (7, "unweighted_accuracy")):
            if (name, m) == (stale, "f1_macro"):
                assert table[name][col] == "n/a"
            else:
                lo, hi = entry[m]["ci"]
                assert table[name][col] == f"[{lo:.4f}, {hi:.4f}]²"
                assert data["variants"][name][m]["ci"] == [lo, hi]
                assert data["variants"][name][m]["ci_from"] == "earlier build"
    assert "² From the earlier build of this folder" in md
    assert f"{stale}, macro F1 were of other values" in md

    # comparisons: the earlier interval and permutation p where both sides are unchanged; Holm on them
    before = {(c["family"], c["variant"], c["baseline"], c["metric"]): c for c in first["comparisons"]}
    touched = {(c["family"], c["metric"]) for c in data["comparisons"]
               if c["metric"] == "f1_macro" and stale in (c["variant"], c["baseline"])}
    for c in data["comparisons"]:
        old = before[(c["family"], c["variant"], c["baseline"], c["metric"])]
        if c["metric"] == "f1_macro" and stale in (c["variant"], c["baseline"]):
            assert c["ci"] is None and c["ci_note"] == "no prediction files" and math.isnan(c["p_perm"])
            continue
        assert c["document_level_from"] == "earlier build"
        assert c["ci"] == old["ci"] and c["p_perm"] == old["p_perm"] and c["p_sd"] == old["p_sd"]
        if (c["family"], c["metric"]) in touched:  # one comparison without p (docs): Holm on the t-tests
            assert c["holm_source"] == "t"
        elif old["excluded"] is None:  # every p (docs) of the family kept: the same Holm correction
            assert c["holm_source"] == "sd" and c["p_holm"] == pytest.approx(old["p_holm"], abs=1e-15)
    assert touched
    assert "come from the earlier build of this folder" in md

    again = build_report(sdir).read_text()
    assert [l for l in again.splitlines() if l.startswith("|")] == [l for l in md.splitlines() if l.startswith("|")]


# ---- figures ---------------------------------------------------------------------------------------

PAGE_INCHES = 6.5  # a page's text width (US letter, 1 in margins): a figure wider than it is shown shrunk
READABLE_POINTS = 5.5  # the smallest text a printed figure can carry (journals ask for 5 to 7 pt)


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's header."""
    head = path.read_bytes()[:24]
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_figures_are_readable_at_page_size(tmp_path):
    """What a reader needs of every figure, shown at page width: its text is at least 5.5 pt there,
    nothing is cut off (every text lies inside the PNG build_report writes) and no legend covers a
    data point; axes are labelled with units. In F1 vs frequency, points at the same (mentions, F1)
    (every variant at F1 = 0 on a class none finds) spread sideways by a fixed rule, at most 0.1
    decade, the y values and the lone points untouched."""
    plt = pytest.importorskip("matplotlib.pyplot")
    from matplotlib.collections import PathCollection
    from matplotlib.transforms import Bbox

    from bertlab.report import figures
    from bertlab.report.compute import compute_report
    axes = {"loss.name": ["ce", "focal", "wce"], "train.seed": [0, 1]}
    f1 = {"ce": {"Age": 0.0, "Dose": 0.4, "Sign": 0.8}, "focal": {"Age": 0.0, "Dose": 0.4, "Sign": 0.7},
          "wce": {"Age": 0.0, "Dose": 0.5, "Sign": 0.8}}
    mentions = {"Age": 3, "Dose": 40, "Sign": 900}

    def knn(v):  # the KNN decode finds a little more, except where nothing is found
        return v + 0.05 if v > 0 else v
    rows = []
    for loss in axes["loss.name"]:
        for seed in axes["train.seed"]:
            for decode in ("argmax", "knn"):
                per_type = {t: {"precision": v, "recall": v, "f1": knn(v) if decode == "knn" else v, "support": 5}
                            for t, v in f1[loss].items()}
                curve = {"epoch": [0, 1], "dev_f1_micro": [0.3, 0.4]}
                rows.append(synthetic_row({"loss.name": loss, "train.seed": seed}, decode, 0.5, per_type=per_type,
                                          train_mentions=mentions, curve=curve, train_seconds=10.0 + seed))
    write_rows(tmp_path / "figs", rows, {"figures": True}, axes)
    build_report(tmp_path / "figs")
    names = {"f1_vs_frequency.png", "accuracy_vs_time.png", "learning_curves.png"}
    assert {p.name for p in (tmp_path / "figs" / "figures").glob("*.png")} == names
    drawn = figures.report_figures(compute_report(tmp_path / "figs"))  # the same figures, as objects
    assert set(drawn) == names
    for name, fig in drawn.items():
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        saved = fig.bbox_inches  # inches: the region savefig writes
        if figures.SAVE.get("bbox_inches") == "tight":  # the artists' box with savefig's padding
            saved = fig.get_tightbbox(renderer).padded(figures.SAVE.get("pad_inches", plt.rcParams["savefig.pad_inches"]))
        width, height = _png_size(tmp_path / "figs" / "figures" / name)  # the file is that region (a few
        # pixels of rounding, and of the constrained layout redrawn at the saving dpi)
        assert abs(width - saved.width * figures.SAVE["dpi"]) <= 4 and abs(height - saved.height * figures.SAVE["dpi"]) <= 4
        region = Bbox(saved.get_points() * fig.dpi)  # display units
        shrink = min(1.0, PAGE_INCHES / saved.width)
        legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
        panels = [ax for ax in fig.axes if ax.get_visible()]
        assert legends
        texts = [t for legend in legends for t in [*legend.get_texts(), legend.get_title()]]
        for ax in panels:
            texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
            for axis in (ax.xaxis, ax.yaxis):  # the tick labels drawn: those of ticks inside the view
                low, high = sorted(axis.get_view_interval())
                texts += [tick.label1 for tick in axis.get_major_ticks() + axis.get_minor_ticks()
                          if low <= tick.get_loc() <= high]
        for text in (t for t in texts if t.get_visible() and t.get_text().strip()):
            assert text.get_fontsize() * shrink >= READABLE_POINTS, (name, text.get_text())
            box = text.get_window_extent(renderer)
            assert (box.x0 >= region.x0 - 1 and box.x1 <= region.x1 + 1 and box.y0 >= region.y0 - 1
                    and box.y1 <= region.y1 + 1), (name, text.get_text(), "cut off")
        points = [np.empty((0, 2))]  # every data point in display units: lines' vertices, scatters' offsets
        for ax in panels:
            points += [line.get_transform().transform(line.get_xydata()) for line in ax.get_lines()]
            points += [c.get_offset_transform().transform(c.get_offsets()) for c in ax.collections
                       if isinstance(c, PathCollection)]
        points = np.concatenate(points)
        points = points[np.isfinite(points).all(1)]
        assert len(points)
        for legend in legends:
            box = legend.get_window_extent(renderer)
            over = (points[:, 0] >= box.x0) & (points[:, 0] <= box.x1) & (points[:, 1] >= box.y0) & (points[:, 1] <= box.y1)
            assert not over.any(), (name, "a legend covers the data")
        for ax in panels:
            assert ax.get_xlabel() and (ax is not panels[0] or ax.get_ylabel())

    scatter = next(f for f in drawn.values() if "class frequency" in f.axes[0].get_title())
    ax = scatter.axes[0]
    assert "log scale" in ax.get_xlabel() and "count" in ax.get_xlabel()
    points = np.concatenate([c.get_offsets() for c in ax.collections])
    # reference: one point per (variant, class); a pile of n at the same (x, y) spread over 10^±h
    ref_x, ref_y = [], []
    for loss in axes["loss.name"]:
        for decode in ("argmax", "knn"):
            for t in sorted(f1[loss]):
                ref_x.append(float(mentions[t]))
                ref_y.append(knn(f1[loss][t]) if decode == "knn" else f1[loss][t])
    ref_x, ref_y = np.array(ref_x), np.array(ref_y)
    expected = ref_x.copy()
    for point in set(zip(ref_x, ref_y)):
        at = np.flatnonzero((ref_x == point[0]) & (ref_y == point[1]))
        if len(at) > 1:
            h = min(0.02 * (len(at) - 1) / 2, 0.1)
            expected[at] = ref_x[at] * 10.0 ** np.linspace(-h, h, len(at))
    np.testing.assert_allclose(points[:, 1], ref_y)
    np.testing.assert_allclose(points[:, 0], expected, rtol=1e-12)
    assert len(np.unique(points[:, 0][ref_y == 0.0])) == 6  # the F1 = 0 pile: six distinct points
    assert np.all(np.abs(np.log10(points[:, 0] / ref_x)) <= 0.1 + 1e-12)
    alone = [i for i in range(len(ref_x)) if ((ref_x == ref_x[i]) & (ref_y == ref_y[i])).sum() == 1]
    assert alone and np.array_equal(points[alone, 0], ref_x[alone])
    timing = next(f for f in drawn.values() if "training time" in f.axes[0].get_title())
    assert "(s, median over seeds" in timing.axes[0].get_xlabel()  # a cost: the median, as in the compute table
    for fig in drawn.values():
        plt.close(fig)


def test_type_shares_by_hand():
    """Training: A 600 mentions (head), B 100 (middle), C 20 (tail); predicted: 3 A, 1 B, 0 C
    (one orphan I-C is not a mention in strict IOB2)."""
    from bertlab.report.classes import type_shares
    pred = [["B-A", "I-A", "O", "B-B"], ["B-A", "O", "I-C"], ["B-A"]]
    out = type_shares(pred, {"A": 600, "B": 100, "C": 20}, {"head": 500, "tail": 50})
    assert out["predicted"] == 4
    assert out["types"]["A"] == pytest.approx((600 / 720, 3 / 4))
    assert out["types"]["C"] == pytest.approx((20 / 720, 0.0))
    expected = {"head": (600 / 720, 0.75), "middle": (100 / 720, 0.25), "tail": (20 / 720, 0.0)}
    assert set(out["bands"]) == set(expected)
    for band, shares in expected.items():
        assert out["bands"][band] == pytest.approx(shares), band


def test_type_probabilities_by_hand_and_the_prior_only_model():
    """Decoder-free shares: by hand on a small case, and a model whose entity probability is split
    exactly by the training word shares (any O mass, any B/I split) has ratio 1 in every band."""
    from bertlab.report.classes import type_probabilities
    bands = {"head": 500, "tail": 50}
    mentions = {"A": 600, "B": 100, "C": 20}
    tags = {"O": 1000, "B-A": 600, "I-A": 300, "B-B": 100, "B-C": 20, "I-C": 80}  # entity words 900 / 100 / 100
    prob = {"O": 0.5, "B-A": 0.2, "I-A": 0.1, "B-B": 0.15, "I-B": 0.0, "B-C": 0.05, "I-C": None}
    out = type_probabilities(prob, tags, mentions, bands)
    assert out["entity_probability"] == pytest.approx(0.5)
    assert out["types"]["A"] == pytest.approx((900 / 1100, 0.6))
    assert out["types"]["C"] == pytest.approx((100 / 1100, 0.1))
    assert out["bands"]["middle"] == pytest.approx((100 / 1100, 0.3))
    rng = np.random.default_rng(0)
    for mass in rng.uniform(0.05, 0.95, size=5):
        split = rng.uniform(size=3)
        words = {"A": 900, "B": 100, "C": 100}
        prior = {"O": 1 - mass}
        for t, frac in zip("ABC", split):
            prior[f"B-{t}"] = mass * words[t] / 1100 * frac
            prior[f"I-{t}"] = mass * words[t] / 1100 * (1 - frac)
        out = type_probabilities(prior, tags, mentions, bands)
        for band, (train, pred) in out["bands"].items():
            assert pred == pytest.approx(train), band


# ---- the epoch budget (plateau rule) ------------------------------------------------------------

def _plateau_brute_force(values, delta, window):
    """The rule read literally: the first e with max_j |F1(e+j) - F1(e)| < delta over a full window."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) > window:
        windows = np.lib.stride_tricks.sliding_window_view(v, window + 1)  # [e, F1(e)..F1(e+window)]
        ok = np.abs(windows[:, 1:] - windows[:, :1]).max(axis=1) < delta
        if ok.any():
            return int(np.argmax(ok)), True
    return len(v) - 1, False


def test_plateau_epoch_by_hand_and_against_the_rule_read_literally():
    from bertlab.report.training import plateau_epoch
    assert plateau_epoch([0.1, 0.5, 0.6, 0.602, 0.603, 0.6049]) == (2, True)
    assert plateau_epoch([0.1, 0.5, 0.6, 0.602, 0.603, 0.605]) == (5, False)  # 0.005 is not < 0.005
    assert plateau_epoch([0.1, 0.2, 0.3, 0.4, 0.5]) == (4, False)  # still rising: a lower bound
    assert plateau_epoch([0.5, 0.5, 0.5]) == (2, False)  # too short to show a window of 3
    assert plateau_epoch([0.3, 0.6, 0.597, 0.601, 0.598], window=2) == (1, True)  # small moves both ways
    assert plateau_epoch([0.3, 0.6, 0.59, 0.601, 0.598], window=2) == (4, False)  # a dip of 0.01 is a move
    rng = np.random.default_rng(0)
    for _ in range(300):
        n, window = int(rng.integers(1, 14)), int(rng.integers(1, 5))
        delta = float(rng.choice([0.002, 0.005, 0.02]))
        values = np.cumsum(rng.exponential(0.01, n) * rng.choice([0, 1], n)) + rng.normal(0, 0.002, n)
        assert plateau_epoch(values, delta, window) == _plateau_brute_force(values, delta, window)


def test_budget_section_chooses_the_lr_with_the_best_plateau_and_takes_the_largest_budget(tmp_path):
    """Two settings x two learning rates x two seeds (one stopped early); the budget per setting is
    the plateau epoch + 1 of its better lr on the seed-mean curve over the epochs both seeds reached,
    and the study's budget per decode is the largest; an arm that never plateaued is a lower bound."""
    curves = {  # (setting, lr) -> per seed dev micro F1
        ("atl", 1e-4): [[0.3, 0.55, 0.60, 0.601, 0.602, 0.603], [0.32, 0.57, 0.60, 0.603, 0.604]],
        ("atl", 2e-4): [[0.4, 0.58, 0.61, 0.612, 0.611, 0.612], [0.4, 0.58, 0.61, 0.612, 0.611, 0.612]],
        ("btl", 1e-4): [[0.1, 0.2, 0.3, 0.4, 0.5, 0.55], [0.1, 0.2, 0.3, 0.4, 0.5, 0.56]],  # still rising
        ("btl", 2e-4): [[0.2, 0.3, 0.31, 0.312, 0.313, 0.31], [0.2, 0.3, 0.31, 0.312, 0.313, 0.31]],
    }
    zero = {("btl", 1e-4): [[0.0] * 6] * 2, ("btl", 2e-4): [[0.0] * 6] * 2}  # argmax after BTL
    rows = []
    runs = [(decode, key, seed, f1) for decode, of in (("knn", curves), ("argmax", zero))
            for key, per_seed in of.items() for seed, f1 in enumerate(per_seed)]
    for decode, (setting, lr), seed, f1 in runs:
        rows.append(synthetic_row({"setting": setting, "optim.lr": lr, "train.seed": seed}, decode, 0.5,
                                  curve={"epoch": list(range(len(f1))), "dev_f1_micro": f1},
                                  best_epoch=len(f1) - 1, select="f1_micro"))
    axes = {"setting": ["atl", "btl"], "optim.lr": [1e-4, 2e-4], "train.seed": [0, 1]}
    write_rows(tmp_path / "s", rows, {"figures": False, "plateau": {"delta": 0.005, "window": 3,
                                                                    "choose": "optim.lr"}}, axes)
    md = build_report(tmp_path / "s").read_text()
    table = {r[0]: r for r in table_rows(md, "## Epoch budget")}
    # atl lr 1e-4: the seed-mean over the 5 epochs both seeds reached
    mean = np.mean([c[:5] for c in curves[("atl", 1e-4)]], axis=0)
    row = table["setting=atl, lr=0.0001, decode=knn"]
    assert row[2] == "5" and _plateau_brute_force(mean, 0.005, 3) == (int(row[3]), row[4] == "yes")
    assert table["setting=btl, lr=0.0001, decode=knn"][4] == "**not plateaued**"
    data = json.loads((tmp_path / "s" / "report.json").read_text())["budget"]
    arms = {a["arm"]["setting"]: a for a in data["arms"]}
    assert arms["atl"]["chosen"] == 2e-4 and arms["atl"]["budget_epochs"] == 3 and arms["atl"]["plateaued"]
    # btl: 2e-4 plateaus at 0.31 (epoch 2), 1e-4 never plateaus but its last value (0.555) is higher
    assert arms["btl"]["chosen"] == 1e-4 and arms["btl"]["budget_epochs"] == 6 and not arms["btl"]["plateaued"]
    assert data["by_decode"] == {"knn": {"epochs": 6, "plateaued": False}}  # argmax: at 0, no budget
    assert table["setting=btl, lr=0.0001, decode=argmax"][4] == "F1 0 throughout: no budget"
    assert "knn: **6 epochs** (a lower bound" in md
    study = json.loads((tmp_path / "s" / "study.json").read_text())
    study["report"]["plateau"]["windw"] = 2  # a misspelt key is an error naming it, not a silent default
    (tmp_path / "s" / "study.json").write_text(json.dumps(study))
    with pytest.raises(ValueError, match=r"\[report\] plateau: unknown key\(s\) \['windw'\]"):
        build_report(tmp_path / "s")


# ---- accuracy against compute across studies (bertlab tradeoff) ----------------------------------

def test_tradeoff_points_are_seed_means_across_studies_and_only_filters(tmp_path):
    from bertlab.tradeoff import main as tradeoff_main
    from bertlab.tradeoff import parse_only, tradeoff_points
    rng = np.random.default_rng(2)
    expected = {}
    for study, models in (("sizes", ["l2", "l6"]), ("classic", ["hmm", "bilstm"])):
        rows = []
        for model in models:
            for data in ("maccrobat", "ncbi"):
                for seed in (0, 1, 2):
                    f1, spe, wps = (float(x) for x in (rng.uniform(0.3, 0.6), rng.uniform(1, 100), rng.uniform(1e3, 1e5)))
                    epochs = int(rng.integers(1, 60))
                    rows.append(synthetic_row({"model": model, "data.name": data, "train.seed": seed}, "argmax", f1,
                                              seconds_per_epoch=spe, train_seconds=spe * epochs, epochs=epochs,
                                              inference_tokens_per_s=wps))
                    expected.setdefault((study, model, data), []).append((f1, spe, wps, spe * epochs))
        write_rows(tmp_path / study, rows, {}, {"model": models, "data.name": ["maccrobat", "ncbi"],
                                                 "train.seed": [0, 1, 2]}, name=study)
    points = tradeoff_points([tmp_path / "sizes", tmp_path / "classic"], only=parse_only(["data.name=maccrobat"]))
    assert len(points) == 4 and {p["axes"]["data.name"] for p in points} == {"maccrobat"}
    for p in points:
        want = np.array(expected[(p["study"], p["axes"]["model"], "maccrobat")])
        assert p["seeds"] == 3
        assert np.isclose(p["f1_micro"], want[:, 0].mean()) and np.isclose(p["f1_micro_std"], want[:, 0].std(ddof=1))
        assert np.isclose(p["seconds_per_epoch"], np.median(want[:, 1]))  # costs: medians over seeds
        assert np.isclose(p["train_seconds"], np.median(want[:, 3]))  # the whole run's, also a median
        assert np.isclose(p["inference_words_per_s"], np.median(want[:, 2]))
    out = tmp_path / "out"
    assert tradeoff_main([str(tmp_path / "sizes"), str(tmp_path / "classic"), "--only", "data.name=maccrobat",
                          "--out", str(out)]) == 0
    table = table_rows((out / "tradeoff.md").read_text(), "# Accuracy against compute")
    assert len(table) == 4 and [float(r[3]) for r in table] == sorted((float(r[3]) for r in table), reverse=True)
    assert (out / "tradeoff.png").stat().st_size > 1000 and len(json.loads((out / "tradeoff.json").read_text())) == 4
    assert tradeoff_main([str(tmp_path / "sizes"), "--only", "data.name", "--out", str(out)]) == 2  # not KEY=VALUE
    assert tradeoff_main([str(tmp_path / "nowhere"), "--out", str(out)]) == 2


def test_tradeoff_anchor_divides_each_study_by_its_own_anchor_variant(tmp_path, capsys):
    """``--anchor STUDY:KEY=VALUE``: every point's cost over its own study's anchor, as ratios of seed
    medians (computed here from the generated rows); an anchor naming no variant, several, an unknown
    key, or a study left without one, is one line and exit 2."""
    from bertlab.tradeoff import main as tradeoff_main
    from bertlab.tradeoff import parse_anchors, tradeoff_points
    rng = np.random.default_rng(7)
    raw = {}
    for study, sizes in (("sizes", [2, 6]), ("classic", ["hmm", "minilm"])):
        key = "model.num_layers" if study == "sizes" else "model"
        rows = []
        for size in sizes:
            for loss in ("ce", "focal"):
                for seed in (0, 1, 2):
                    spe, wps, epochs = float(rng.uniform(1, 100)), float(rng.uniform(1e3, 1e5)), int(rng.integers(1, 60))
                    rows.append(synthetic_row({key: size, "loss": loss, "train.seed": seed}, "argmax", 0.5,
                                              seconds_per_epoch=spe, train_seconds=spe * epochs, epochs=epochs,
                                              inference_tokens_per_s=wps))
                    raw.setdefault((study, str(size), loss), []).append((spe * epochs, wps, spe))
        write_rows(tmp_path / study, rows, {}, {key: sizes, "loss": ["ce", "focal"], "train.seed": [0, 1, 2]},
                   name=study)  # short names: num_layers, model, loss, seed
    anchors = parse_anchors(["sizes:num_layers=6,loss=ce", "classic:model=minilm,loss=ce"])
    # the training cost is the whole run's by default (--cost run), or per epoch (--cost epoch)
    for cost, column in (("run", 0), ("epoch", 2)):
        points = tradeoff_points([tmp_path / "sizes", tmp_path / "classic"], anchors=anchors, cost=cost)
        assert len(points) == 8
        for p in points:
            study = p["study"]
            size = str(p["axes"].get("model.num_layers", p["axes"].get("model")))
            mine = np.median(raw[(study, size, p["axes"]["loss"])], axis=0)
            ref = np.median(raw[(study, "6" if study == "sizes" else "minilm", "ce")], axis=0)
            assert p["train_cost_vs_anchor"] == pytest.approx(mine[column] / ref[column], rel=1e-12)
            assert p["inference_speed_vs_anchor"] == pytest.approx(mine[1] / ref[1], rel=1e-12)
    with pytest.raises(ValueError, match="--cost 'step'"):
        tradeoff_points([tmp_path / "sizes"], cost="step")
    out = tmp_path / "out"
    args = [str(tmp_path / "sizes"), str(tmp_path / "classic"), "--out", str(out)]
    assert tradeoff_main(args + ["--anchor", "sizes:num_layers=6,loss=ce", "--anchor", "classic:model=minilm,loss=ce"]) == 0
    table = table_rows((out / "tradeoff.md").read_text(), "# Accuracy against compute")
    assert len(table) == 8 and sorted(float(r[8]) for r in table).count(1.0) == 2
    assert "training cost × anchor (per run)" in (out / "tradeoff.md").read_text()
    assert "anchor's (log scale)" not in (out / "tradeoff.md").read_text()  # the label is the figure's
    capsys.readouterr()
    for bad, says in ((["--anchor", "sizes:num_layers=6,loss=ce"], "no --anchor for study 'classic'"),
                      (["--anchor", "sizes:num_layers=6", "--anchor", "classic:model=minilm,loss=ce"], "names 2"),
                      (["--anchor", "sizes:num_layers=4,loss=ce", "--anchor", "classic:model=minilm,loss=ce"], "names 0"),
                      (["--anchor", "sizes:width=6", "--anchor", "classic:model=minilm,loss=ce"], "not every key"),
                      (["--anchor", "sizes=6"], "expected STUDY:KEY=VALUE"),
                      (["--anchor", "sizes:num_layers=6,loss=ce", "--anchor", "sizes:num_layers=2,loss=ce"], "a second anchor")):
        assert tradeoff_main(args + bad) == 2, bad
        err = capsys.readouterr().err.strip()
        assert err.startswith("bertlab tradeoff: ") and says in err and "\n" not in err, (bad, err)


# ---- gradient flow across seeds -------------------------------------------------------------------

def test_gradflow_section_means_over_steps_and_seeds_and_paired_tests_against_scipy(tmp_path):
    """Per trained variant and layer: mean over recorded steps, then over seeds; against the
    baseline variant the ratio of seed means and scipy's paired t-test on log norms, Holm over layers."""
    import scipy.stats
    from statsmodels.stats.multitest import multipletests

    from bertlab.gradflow import write_rows as write_gradflow
    rng = np.random.default_rng(4)
    layers = ["embeddings", "layer.0", "layer.1", "head"]
    sdir = tmp_path / "gf"
    rows, norms, records = [], {}, {}
    for sampler, scale in (("atl", 1.0), ("btl", 3.0)):
        for seed in (0, 1, 2):
            axes = {"sampler": sampler, "train.seed": seed}
            rows.append(synthetic_row(axes, "argmax", 0.5))
            run_rows = []
            for step in (10, 20, 30):
                for i, layer in enumerate(layers):
                    value = float(scale * (i + 1) * rng.lognormal(0, 0.3))
                    run_rows.append({"step": step, "layer": layer, "component": "all", "statistic": "grad_norm",
                                     "value": value})
                    norms.setdefault((sampler, layer), {}).setdefault(seed, []).append(value)
                    run_rows.append({"step": step, "layer": layer, "component": "ffn", "statistic": "grad_norm",
                                     "value": 99.0})  # a component row: not counted
            records[rows[-1]["run_id"]] = run_rows
    write_rows(sdir, rows, {"figures": False}, {"sampler": ["atl", "btl"], "train.seed": [0, 1, 2]})
    for run_id, run_rows in records.items():
        write_gradflow(run_rows, sdir / run_id / "gradflow")
    study = json.loads((sdir / "study.json").read_text())
    study.update(gradflow=True, baseline={"sampler": "atl", "decode": "argmax"})
    (sdir / "study.json").write_text(json.dumps(study))
    md = build_report(sdir).read_text()
    table = {r[0]: r for r in table_rows(md, "## Gradient flow")}
    run_means = {k: {s: np.mean(v) for s, v in seeds.items()} for k, seeds in norms.items()}
    for sampler in ("atl", "btl"):
        for j, layer in enumerate(layers):
            m = np.array(list(run_means[(sampler, layer)].values()))
            assert table[f"sampler={sampler}"][2 + j] == f"{m.mean():.3g} ± {m.std(ddof=1):.2g}"
    data = json.loads((sdir / "report.json").read_text())["gradflow"]["comparisons"]
    assert len(data) == 1 and data[0]["variant"] == "sampler=btl" and data[0]["seeds"] == [0, 1, 2]
    pvalues = []
    for layer in layers:
        a = np.array([run_means[("btl", layer)][s] for s in (0, 1, 2)])
        b = np.array([run_means[("atl", layer)][s] for s in (0, 1, 2)])
        assert np.isclose(data[0]["ratio"][layer], a.mean() / b.mean())
        pvalues.append(scipy.stats.ttest_rel(np.log(a), np.log(b)).pvalue)
    want = multipletests(pvalues, method="holm")[1]
    assert np.allclose([data[0]["p_holm"][layer] for layer in layers], want)


@pytest.mark.parametrize("decades", [0.3, 1, 2, 3, 4.5, 6])
def test_tradeoff_figure_tick_labels_never_overlap(decades):
    """The log x axes label 1-2-5 over a short span and powers of 10 over a wide one (an HMM beside
    BERT spans 4 decades of training cost): no two drawn tick labels may overlap, at any span."""
    plt = pytest.importorskip("matplotlib.pyplot")
    from bertlab.tradeoff import tradeoff_figure
    xs = np.geomspace(1.0, 10 ** decades, 5)
    points = [{"study": "s", "variant": f"v{i}", "f1_micro": 0.5 + 0.01 * i, "f1_micro_std": 0.01,
               "cost": "run", "train_seconds": x, "seconds_per_epoch": x / 8, "inference_words_per_s": 1000 * x}
              for i, x in enumerate(xs)]
    fig = tradeoff_figure(points)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels()
                 if t.get_visible() and t.get_text() and lo <= t.get_position()[0] <= hi]
        assert len(boxes) >= 2, [t.get_text() for t in ax.get_xticklabels()]
        boxes.sort(key=lambda b: b.x0)
        assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:])), [t.get_text() for t in ax.get_xticklabels()]
    plt.close(fig)


def test_compute_cost_shows_each_variants_lowest_cpu_share(tmp_path):
    """The compute table's "CPU share (lowest)" is the minimum over a variant's runs (a run that shared
    its cores overstates the variant's seconds); '–' for a variant whose runs predate the measure, and
    how many runs have one where only some do; no column at all when no run has one."""
    axes = {"model": ["a", "b", "c"], "train.seed": [0, 1, 2]}
    shares = {"a": [0.97, 0.52, 0.99], "b": [None, None, None], "c": [None, 0.91, 0.95]}
    rows = [synthetic_row({"model": m, "train.seed": s}, "argmax", 0.5, cpu_share=shares[m][s])
            for m in ("a", "b", "c") for s in (0, 1, 2)]
    write_rows(tmp_path / "new", rows, {"figures": False}, axes)
    md = build_report(tmp_path / "new").read_text()
    table = {r[0]: r for r in table_rows(md, "## Compute cost")}
    assert "CPU share (lowest)" in md.split("## Compute cost")[1].split("\n\n### ")[0]
    assert table["model=a, decode=argmax"][-1] == "0.52" and table["model=b, decode=argmax"][-1] == "–"
    assert table["model=c, decode=argmax"][-1] == "0.91 (2 of 3 runs)"
    data = json.loads((tmp_path / "new" / "report.json").read_text())
    assert data["variants"]["model=a, decode=argmax"]["compute"]["cpu_share_min"] == 0.52
    old = [{k: v for k, v in r.items() if k != "cpu_share"} for r in rows]
    write_rows(tmp_path / "old", old, {"figures": False}, axes)
    assert "CPU share" not in build_report(tmp_path / "old").read_text()


def test_variants_with_identical_predictions_are_called_identical_not_untested_or_insignificant(tmp_path):
    """BTL on a corpus with one entity type is ATL: a variant whose predictions equal its baseline's
    on every seed gets Δ = 0 and a sentence that says the two are the same function (the NCBI-disease
    check of cross_dataset); a variant that differs on one document of one seed does not."""
    changed = set()

    def predict(variant, seed, tags, rng):
        sampler, loss, decode = variant
        if sampler == "btl" and loss == "ce" and seed == 1 and decode not in changed:
            changed.add(decode)  # BTL + CE differs from ATL + CE in one sentence of one seed
            return ["O"] * len(tags)
        # both samplers draw the same corruption for a sentence, seed and decode
        rng = np.random.default_rng(zlib.crc32(f"{loss}{seed}{decode}{tags}".encode()))
        return noisy(tags, rng, NOISE[("atl", loss, decode)])

    sdir = make_study(tmp_path, NOISE, predict=predict, report={"compare": FAMILIES, "metrics": ["f1_micro"]})
    md = build_report(sdir).read_text()
    data = json.loads((sdir / "report.json").read_text())
    sampler = {c["variant"]: c for c in data["comparisons"] if c["family"] == "sampler"}
    for decode in ("argmax", "knn"):
        same = sampler[f"sampler=btl, loss=focal, decode={decode}"]
        assert same["identical"] and same["diff"] == 0
        assert same["excluded"] and math.isnan(same["p_holm"])  # no test, and no weight in Holm's correction
        assert f"sampler=btl, loss=focal, decode={decode} vs sampler=atl, loss=focal, decode={decode}, micro F1: " \
               f"+0.0000. Identical predictions" in md
    assert {c["family_size"] for c in sampler.values() if not c["excluded"]} == {2}
    assert not any(c["identical"] for c in data["comparisons"]
                   if c["family"] != "sampler" or "loss=ce" in c["variant"])


def test_a_comparison_that_repeats_a_tested_one_is_counted_once_in_holm(tmp_path):
    """BTL + focal predicts what ATL + focal predicts under every decode, so BTL + focal's KNN
    against argmax is ATL + focal's test again: Holm counts it once (a family of 3, checked by
    hand), the row carries its twin's p-values and says so. BTL + CE, which differs from ATL + CE
    in one sentence of one seed, is tested on its own; a rebuild without the prediction files keeps
    the same reading from the earlier build."""
    changed = set()

    def predict(variant, seed, tags, rng):
        sampler, loss, decode = variant
        if sampler == "btl" and loss == "ce" and seed == 1 and decode not in changed:
            changed.add(decode)
            return ["O"] * len(tags)
        rng = np.random.default_rng(zlib.crc32(f"{loss}{seed}{decode}{tags}".encode()))
        return noisy(tags, rng, NOISE[("atl", loss, decode)])

    (tmp_path / "docs" / "results").mkdir(parents=True)
    sdir = make_study(tmp_path / "docs" / "results", NOISE, predict=predict,
                      report={"compare": FAMILIES, "metrics": ["f1_micro", "f1_macro"]})
    build_report(sdir)

    def check():
        md = (sdir / "report.md").read_text()
        data = json.loads((sdir / "report.json").read_text())
        twin = "sampler=atl, loss=focal, decode=knn vs sampler=atl, loss=focal, decode=argmax"
        for metric in ("f1_micro", "f1_macro"):
            decode = {c["variant"]: c for c in data["comparisons"] if c["family"] == "decode" and c["metric"] == metric}
            repeat, first = decode["sampler=btl, loss=focal, decode=knn"], decode["sampler=atl, loss=focal, decode=knn"]
            assert repeat["same_as"] == twin and not repeat["excluded"]
            assert repeat["p_holm"] == first["p_holm"] and repeat["p"] == first["p"] == repeat["p_sd"] == first["p_sd"]
            tested = [c for c in decode.values() if not c.get("same_as")]
            assert len(tested) == 3 and {c["family_size"] for c in decode.values()} == {3}
            assert [c["p_holm"] for c in tested] == pytest.approx(holm_by_hand([c["p_sd"] for c in tested]), abs=1e-12)
            assert not any(c.get("same_as") for c in data["comparisons"] if c["family"] != "decode")
        assert f"The same test as `{twin}`" in md and "2 the same test as another row" in md
        return [(c["variant"], c["metric"], c["p_holm"]) for c in data["comparisons"]]

    first = check()
    for f in sdir.glob("*/predictions_*.jsonl"):
        f.unlink()
    write_results(sdir)
    build_report(sdir)
    assert check() == first


def test_two_models_that_predict_only_o_are_not_called_the_same_function(tmp_path):
    """BTL + argmax under CE and under focal both predict only O: their predictions are equal, but
    because each is constant, not because the design makes the two one function; the sentence
    gives the constant reason (the identical-predictions wording is kept for the NCBI-disease kind)."""
    def predict(variant, seed, tags, rng):
        return ["O"] * len(tags) if variant[0] == "btl" and variant[2] == "argmax" else noisy(tags, rng, NOISE[variant])

    sdir = make_study(tmp_path, NOISE, predict=predict, report={"compare": FAMILIES, "metrics": ["f1_micro"]})
    md = build_report(sdir).read_text()
    c = next(c for c in json.loads((sdir / "report.json").read_text())["comparisons"]
             if c["family"] == "loss" and c["variant"] == "sampler=btl, loss=focal, decode=argmax")
    assert c["identical"] and "predicts no entity at all" in c["excluded"] and math.isnan(c["p_holm"])
    line = next(l for l in md.splitlines()
                if l.startswith("- sampler=btl, loss=focal, decode=argmax vs sampler=btl, loss=ce, decode=argmax"))
    assert "Not tested: the variant predicts no entity at all" in line and "Identical predictions" not in line


# ---- pairing by seed, and the per-class rule ---------------------------------------------------------

def test_runs_are_paired_by_seed_never_by_position(tmp_path):
    """A baseline that lost a run (seeds {1, 2}) against a variant with {0, 1, 2}; a variant that ran
    seed 2 only. Every test uses the shared seeds, matched by seed: the seed-paired t equals scipy's
    ttest_rel on them, the document permutation and the seed × document t pair run 1 with run 1 and
    run 2 with run 2 (by position, seed 0 would meet seed 1)."""
    sdir = make_study(tmp_path, NOISE, report={"compare": FAMILIES, "metrics": ["f1_micro"]})
    for run in ("sampler=atl__loss=ce__seed=0", "sampler=btl__loss=focal__seed=0", "sampler=btl__loss=focal__seed=1"):
        shutil.rmtree(sdir / run)
    write_results(sdir)
    build_report(sdir)
    data = json.loads((sdir / "report.json").read_text())
    rows = by_variant(read_results(sdir / "results.jsonl"))

    def runs(name, seeds):
        return [r for r in rows[name] if r["axes"]["train.seed"] in seeds]

    def score(r):
        return seqeval_scores([s for d in read_docs(sdir, r) for s in d])["f1_micro"]

    def comparison(family, name, base):
        return next(c for c in data["comparisons"] if (c["family"], c["variant"], c["baseline"]) == (family, name, base))

    name, base = "sampler=atl, loss=focal, decode=argmax", "sampler=atl, loss=ce, decode=argmax"
    c = comparison("loss", name, base)
    va, vb = [score(r) for r in runs(name, (1, 2))], [score(r) for r in runs(base, (1, 2))]
    t = sps.ttest_rel(va, vb)
    assert c["n"] == 2 and c["t"] == pytest.approx(t.statistic, rel=1e-9) and c["p_t"] == pytest.approx(t.pvalue, rel=1e-9)
    assert c["diff"] == pytest.approx(np.mean(va) - np.mean(vb), rel=1e-9)
    ca = [doc_counts(read_docs(sdir, r)) for r in runs(name, (1, 2))]
    cb = [doc_counts(read_docs(sdir, r)) for r in runs(base, (1, 2))]
    assert c["p_perm"] == pytest.approx(permutation_reference(ca, cb, "f1_micro"), rel=1e-9)
    lo, hi, p = crossed_reference(ca, cb, "f1_micro", c["diff"])
    assert c["ci"] == pytest.approx([lo, hi], rel=1e-9) and c["p_sd"] == pytest.approx(p, rel=1e-9)

    # one non-deterministic run (seed 2) is paired with the baseline's seed 2 alone, not with every seed
    name, base = "sampler=btl, loss=focal, decode=argmax", "sampler=btl, loss=ce, decode=argmax"
    c = comparison("loss", name, base)
    ca = [doc_counts(read_docs(sdir, r)) for r in runs(name, (2,))]
    cb = [doc_counts(read_docs(sdir, r)) for r in runs(base, (2,))]
    assert c["diff"] == pytest.approx(score(runs(name, (2,))[0]) - score(runs(base, (2,))[0]), rel=1e-9)
    assert c["p_perm"] == pytest.approx(permutation_reference(ca, cb, "f1_micro"), rel=1e-9)
    assert c["ci_note"] == "one seed: the interval covers the test documents only"


def test_a_class_predicted_but_without_gold_has_no_f1_in_that_resample():
    """Per-class F1 of a class with predictions but no gold mention in the summed counts is
    undefined (NaN), not 0: the resample says nothing about that class's recall."""
    from bertlab.report.counts import CountLayout, per_class_scores

    layout = CountLayout(["A", "B"], ["B-A", "B-B"], np.array([0, 1]), np.array([0, 1]))
    x = np.array([3, 4, 5,   0, 2, 0,   3, 5,   0, 0], float)  # A: tp 3, pred 4, gold 5; B: pred 2, gold 0
    f1 = per_class_scores(x, layout, "f1_macro")
    assert f1[0] == pytest.approx(6 / 9) and np.isnan(f1[1])
    recall = per_class_scores(x, layout, "unweighted_accuracy")
    assert recall[0] == pytest.approx(3 / 5) and np.isnan(recall[1])


def test_scoring_conventions_side_by_side_against_seqeval_and_sklearn(study):
    """Each variant's seed means: strict and conlleval micro F1 by seqeval (strict IOB2 / its default
    mode), lenient F1 from metrics.lenient_counts (brute-force checked in test_metrics.py), token
    accuracy by scikit-learn, and invalid transitions as the entities seqeval's conlleval reader
    starts at an I- tag. The fixture's noisy predictions make stray I- tags, so the conventions differ."""
    from seqeval.metrics.sequence_labeling import get_entities
    from sklearn.metrics import accuracy_score

    from bertlab.metrics import lenient_counts, micro_f1

    sdir, md, rows = study
    data = json.loads((sdir / "report.json").read_text())["conventions"]
    table = {r[0]: r for r in table_rows(md, "## Scoring conventions")}
    differ = 0
    for name, group in by_variant(rows).items():
        per_run = []
        for r in group:
            sents = [s for d in read_docs(sdir, r) for s in d]
            gold, pred = [s["tags"] for s in sents], [s["pred"] for s in sents]
            loose = classification_report(gold, pred, output_dict=True, zero_division=0)
            per_run.append({
                "strict": seqeval_scores(sents)["f1_micro"],
                "conlleval": loose["micro avg"]["f1-score"],
                "lenient": micro_f1(lenient_counts(gold, pred)),
                "token_accuracy": accuracy_score([t for s in gold for t in s], [t for s in pred for t in s]),
                "invalid": sum(1 for p in pred for _, a, _ in get_entities(list(p)) if p[a].startswith("I-"))})
        for key in per_run[0]:
            assert data[name][key] == pytest.approx(np.mean([r[key] for r in per_run]), abs=1e-12), (name, key)
        assert table[name][1] == f"{data[name]['strict']:.4f}" and table[name][5] == f"{data[name]['invalid']:.0f}"
        differ += data[name]["conlleval"] != data[name]["strict"]
    assert differ > 0


def doc_counts_of(sdir, row):
    from bertlab.report.counts import document_counts

    return document_counts(sdir / row["predictions"])


@pytest.mark.parametrize("seed", range(6))
def test_document_counts_of_a_whole_file_equal_the_sentence_by_sentence_reading(tmp_path, seed):
    """``document_counts`` reads plain IOB2 files with arrays over all words; on generated files
    (stray and mixed-type I- tags, hyphenated types, empty sentences, documents revisited) its
    counts equal ``document_counts_by_sentence``, which reads each sentence with the seqeval-checked
    ``metrics`` readers; tags outside plain IOB2 take the sentence-by-sentence path."""
    from bertlab.report.counts import _document_counts_iob2, _read_predictions, document_counts, document_counts_by_sentence

    rng = np.random.default_rng(seed)
    tags = ["O", "B-a", "I-a", "B-b-c", "I-b-c", "B-D", "I-D"]
    odd = ["B--x", "I-x-", "B-_", "I-_", "B-a-"]  # types the two conventions read differently, or "_"

    def sentence(n, vocabulary):
        p = np.array([6.0] + [1.0] * (len(vocabulary) - 1))
        return [vocabulary[i] for i in rng.choice(len(vocabulary), size=n, p=p / p.sum())]

    for variant in ("iob2", "odd"):
        lines = []
        for _ in range(int(rng.integers(1, 60))):
            n = int(rng.integers(0, 12))
            gold = sentence(n, tags)
            pred = sentence(n, tags)
            if rng.random() < 0.3:  # a prediction that copies gold but for one word: mostly equal entities
                pred = list(gold)
                if n:
                    pred[int(rng.integers(n))] = tags[int(rng.integers(len(tags)))]
            lines.append(json.dumps({"doc_id": f"d{int(rng.integers(5))}", "tags": gold, "pred": pred}))
        if variant == "odd":  # one tag the arrays leave to the sentence-by-sentence reading
            odd_tag = odd[seed % len(odd)]
            lines.append(json.dumps({"doc_id": "d0", "tags": ["B-a", "O", "B-a"], "pred": ["B-a", odd_tag, "I-a"]}))
        path = tmp_path / f"predictions_{variant}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        fast, reference = document_counts(path), document_counts_by_sentence(path)
        takes_arrays = _document_counts_iob2(*_read_predictions(path)) is not None
        assert takes_arrays == (variant == "iob2")
        assert fast["docs"] == reference["docs"]
        for key in ("entities", "tokens", "conventions"):
            assert list(fast[key]) == list(reference[key]), key
            for name, counts in fast[key].items():
                assert counts.dtype == np.int64 and np.array_equal(counts, reference[key][name]), (key, name)


def test_per_class_table_against_seqeval_with_intervals_and_the_supported_macro(study):
    """Per class: precision, recall and F1 are seqeval's (strict) seed means, support the gold test
    mentions, the F1 interval the seed × document t of the class's leave-one-document-out seqeval F1
    (a document without the class keeps the full-test-set F1); classes under min_support (5) are
    flagged, and the supported macro F1 averages the others."""
    sdir, md, rows = study
    data = json.loads((sdir / "report.json").read_text())
    name = "sampler=atl, loss=focal, decode=knn"
    per_seed = [read_docs(sdir, r) for r in by_variant(rows)[name]]
    D = len(per_seed[0])
    table = data["variants"][name]["per_class"]

    def scores(sents):
        rep = classification_report([s["tags"] for s in sents], [s["pred"] for s in sents], mode="strict",
                                    scheme=IOB2, output_dict=True, zero_division=0)
        return {t: v for t, v in rep.items() if " avg" not in t and v["support"] > 0}

    full = [scores([s for d in docs for s in d]) for docs in per_seed]
    types = sorted(full[0])
    assert sorted(table["classes"]) == types
    pseudo = {t: [] for t in types}
    for docs, f in zip(per_seed, full):
        loo = [scores([s for k, d in enumerate(docs) if k != j for s in d]) for j in range(D)]
        for t in types:
            pseudo[t].append([D * f[t]["f1-score"] - (D - 1) * l.get(t, f[t])["f1-score"] for l in loo])
    for t in types:
        row = table["classes"][t]
        for key, ref in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert row[key] == pytest.approx(np.mean([f[t][ref] for f in full]), abs=1e-12), (t, key)
        assert row["support"] == full[0][t]["support"] and row["few"] == (row["support"] < 5)
        lo, hi, _ = crossed_interval(np.array(pseudo[t]), row["f1"])
        assert row["ci"] == pytest.approx([lo, hi], abs=1e-9), t
    # a threshold between the classes' supports, so that the flag and the restriction both bite
    from bertlab.report.counts import per_class_table

    k = sorted(full[0][t]["support"] for t in types)[1]
    kept = [t for t in types if full[0][t]["support"] >= k]
    assert 0 < len(kept) < len(types)
    x, layout = stack_counts([doc_counts_of(sdir, r) for r in by_variant(rows)[name]])
    restricted = per_class_table(x, layout, k)
    assert [t for t, r in restricted["classes"].items() if r["few"]] == sorted(set(types) - set(kept))
    macro = restricted["macro_supported"]
    assert macro["classes"] == len(kept)
    assert macro["f1"] == pytest.approx(np.mean([[f[t]["f1-score"] for t in kept] for f in full]), abs=1e-12)
    lo, hi, _ = crossed_interval(np.mean([pseudo[t] for t in kept], axis=0), macro["f1"])
    assert macro["ci"] == pytest.approx([lo, hi], abs=1e-9)
    assert table["macro_supported"]["classes"] == sum(full[0][t]["support"] >= 5 for t in types)
    assert "## Per-class scores with intervals" in md


def test_calibration_section_means_each_variants_ece_over_seeds(tmp_path):
    """Runs that recorded the softmax's calibration: the section's ECE is the seed mean ± std of the
    recorded values, one row per variant; runs without it (older code) leave the section out."""
    sdir = make_study(tmp_path, NOISE, report={"figures": True})
    assert "## Calibration of the softmax" not in build_report(sdir).read_text()
    rng = np.random.default_rng(5)
    recorded = {}
    for metrics_file in sorted(sdir.glob("*/metrics.json")):
        m = json.loads(metrics_file.read_text())
        ece = float(rng.uniform(0.01, 0.2))
        bins = [{"count": 10, "confidence": (b + 0.5) / 15, "accuracy": (b + 0.5) / 15 - ece} for b in range(15)]
        for decode in m["test"]:
            m["test"][decode]["calibration"] = {"ece": ece, "words": 150, "bins": bins}
            recorded.setdefault(metrics_file.parent.name.rsplit("__seed=", 1)[0], []).append(ece)
        metrics_file.write_text(json.dumps(m))
    write_results(sdir)
    md = build_report(sdir).read_text()
    table = {r[0]: r for r in table_rows(md, "## Calibration of the softmax")}
    assert len(table) == 8  # 4 trained variants x 2 decodes
    for name, row in table.items():
        s, l = (part.split("=")[1] for part in name.split(", ")[:2])
        values = recorded[f"sampler={s}__loss={l}"][::2]  # each run recorded once per decode
        assert row[1] == f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"
    assert (sdir / "figures" / "reliability.png").exists() and "figures/reliability.png" in md


# ---- cross-validated studies -----------------------------------------------------------------------

def make_cv_study(tmp_path, folds=3, seeds=(0, 1), n_docs=12, report=None):
    """A cross-validated study folder as bertlab.study leaves it: samplers atl / btl, seed s's
    partition puts document i in fold (i + s) % folds; each run predicts its test fold only."""
    sdir = tmp_path / "cv"
    sdir.mkdir()
    docs = make_documents(n_docs, seed=5)
    axes = {"sampler.name": ["atl", "btl"], "data.fold": list(range(folds)), "train.seed": list(seeds)}
    runs = [f"sampler={s}__fold={k}__seed={r}" for s in ("atl", "btl") for k in range(folds) for r in seeds]
    write_json(sdir / "study.json", {
        "name": "fake_cv", "scale": "smoke", "source": "experiments/fake_cv.toml", "description": "synthetic",
        "axes": axes, "short_names": {"sampler.name": "sampler", "data.fold": "fold", "train.seed": "seed"},
        "baseline": {"sampler.name": "atl", "decode": "argmax"}, "decodes": ["argmax"],
        "report": {"figures": False, "metrics": ALL_METRICS, **(report or {})}, "gradflow": False, "runs": runs,
        "folds": {"k": folds, "fold_seed": 0, "axis": "data.fold"}})
    env = environment()
    for run_id in runs:
        s, k, r = (part.split("=")[1] for part in run_id.split("__"))
        k, r = int(k), int(r)
        rdir = sdir / run_id
        rdir.mkdir()
        write_json(rdir / "run.json", {"study": "fake_cv", "scale": "smoke", "run_id": run_id, "env": env,
                                        "axes": {"sampler.name": s, "data.fold": k, "train.seed": r}})
        rng = np.random.default_rng(zlib.crc32(run_id.encode()))
        test = [(d, sents) for i, (d, sents) in enumerate(docs) if (i + r) % folds == k]
        gold, pred, lines = [], [], []
        for doc_id, sents in test:
            for i, tags in enumerate(sents):
                p = noisy(tags, rng, 0.08 if s == "atl" else 0.15)
                gold.append(tags)
                pred.append(p)
                lines.append(json.dumps({"doc_id": doc_id, "sentence": i, "tokens": ["w"] * len(tags),
                                         "tags": tags, "pred": p}))
        (rdir / "predictions_test_argmax.jsonl").write_text("\n".join(lines) + "\n")
        n_test = len(test)
        write_json(rdir / "metrics.json", {
            "test": {"argmax": {"entity_report": dict(entity_report(gold, pred, zero_division=0)),
                                "unweighted_accuracy": unweighted_accuracy(gold, pred), "tokens_per_second": 1000.0}},
            "history": [{"epoch": e, "dev": {"argmax": {"f1_micro": 0.3 + 0.1 * e, "f1_macro": 0.2 + 0.1 * e}}}
                        for e in range(2)],
            "train_seconds": 10.0, "epochs": 2, "params": 1_000_000, "train_mentions": {"Sign": 100, "Dose": 20, "Age": 3},
            "fold": {"folds": folds, "fold": k, "fold_seed": r, "documents": {
                "train": n_docs - n_test - 1, "dev": 1, "test": n_test}}})
        write_json(rdir / "timing.json", {"wall_seconds": 12.0, "sessions": 1, "resumed": False})
    write_results(sdir)
    return sdir, docs


def test_cross_validated_report_pools_folds_and_uses_the_corrected_t(tmp_path):
    """Pooled point estimates by seqeval over all documents, and the corrected resampled t over the
    per-(seed, fold) scores written out by hand (Nadeau & Bengio's formula), for every metric."""
    folds, seeds = 3, (0, 1)
    sdir, docs = make_cv_study(tmp_path, folds, seeds, report={"primary": "f1_macro"})
    md = build_report(sdir).read_text()
    data = json.loads((sdir / "report.json").read_text())
    rows = read_results(sdir / "results.jsonl")

    def sentences(sampler, seed, fold=None):
        out = []
        for r in rows:
            if r["axes"]["sampler.name"] == sampler and r["seed"] == seed and fold in (None, r["axes"]["data.fold"]):
                out += [json.loads(l) for l in (sdir / r["predictions"]).read_text().splitlines()]
        return out

    assert "## Cross-validation" in md and "p (CV t)" in md and "macro F1 (primary)" in md
    for metric in ALL_METRICS:
        pooled = {s: [seqeval_scores(sentences(s, r)) for r in seeds] for s in ("atl", "btl")}
        for s in ("atl", "btl"):
            assert data["variants"][f"sampler={s}, decode=argmax"][metric]["mean"] == pytest.approx(
                np.mean([p[metric] for p in pooled[s]]), abs=1e-12)
        # per (seed, fold): the fold's documents, classes without gold there taking the pooled score
        d = np.array([[seqeval_scores(sentences("btl", r, k), full=pooled["btl"][i])[metric]
                       - seqeval_scores(sentences("atl", r, k), full=pooled["atl"][i])[metric]
                       for k in range(folds)] for i, r in enumerate(seeds)]).ravel()
        ratio = 4 / 7  # n_test / n_train of every fold: 4 test, 7 training documents
        diff = np.mean([p[metric] for p in pooled["btl"]]) - np.mean([p[metric] for p in pooled["atl"]])
        se = math.sqrt((1 / len(d) + ratio) * d.var(ddof=1))
        q = sps.t.ppf(0.975, len(d) - 1)
        c = next(c for c in data["comparisons"] if c["metric"] == metric)
        assert c["diff"] == pytest.approx(diff, abs=1e-12)
        assert c["ci"] == pytest.approx([diff - q * se, diff + q * se], abs=1e-10)
        assert c["p_sd"] == pytest.approx(2 * sps.t.sf(abs(diff / se), len(d) - 1), rel=1e-8)
        assert c["holm_source"] == "cv" and c["cv"]["folds"] == folds
        assert c["cv"]["signs"] == [int((d > 0).sum()), int((d < 0).sum()), len(d)]
        row = next(r for r in table_rows(md, "### Family") if r[2].startswith(METRICS[metric]))
        assert row[7] == f"{(d > 0).sum()} / {(d < 0).sum()} of {len(d)}"
    # the primary metric is tested first and named so
    assert [c["metric"] for c in data["comparisons"]] == ["f1_macro", "f1_micro", "unweighted_accuracy"]
    assert "macro F1 (primary): " in md and "micro F1 (secondary): " in md
    assert "| variant | seeds | micro F1 (secondary) | 95% CI | macro F1 (primary) | 95% CI |" in md
    # the learning curves: a cross-validated variant's runs are (seed, fold) pairs, each on its fold's dev set
    assert "(mean over the runs, one per seed and fold, each on its fold's dev documents)" in md
    curves = table_rows(md, "## Learning curves")
    assert len(curves) == 2 and all(len(r[2].split(", ")) == folds * len(seeds) for r in curves)
    assert "| variant | select | best epoch (per run) | epoch 0 | epoch 1 |" in md


def test_a_cross_validated_study_with_no_pooled_seed_says_so_and_draws_no_empty_tables(tmp_path):
    """While the first seed's folds are still running, nothing can be pooled: the report names the
    finished runs it leaves out, has no empty test tables or figures, and draws the finished runs'
    dev learning curves (which need no pooling)."""
    pytest.importorskip("matplotlib")
    sdir, _ = make_cv_study(tmp_path, folds=3, seeds=(0,), report={"figures": True, "target_difference": 0.04})
    for run in sdir.glob("*__fold=[12]__*"):
        shutil.rmtree(run)
    write_results(sdir)
    md = build_report(sdir).read_text()
    assert "2 of 6 runs finished" in md
    assert ("The study's target difference is 0.04 in micro F1; none of its comparisons has been tested yet, so "
            "the smallest difference this design detects is not known.") in md.split("## ")[0]
    assert "Not pooled yet (2 run(s)" in md and "`sampler=atl__fold=0__seed=0`" in md
    assert "No variant is pooled: a variant's test tables, tests and figures need every fold of one of its " \
           "seeds, and none has all 3 here." in md
    assert "## Main results" not in md and "## Significance" not in md and "## Compute cost" not in md
    assert "The curves include the 2 finished run(s) not pooled yet" in md
    curves = {r[0]: r for r in table_rows(md, "## Learning curves")}
    assert set(curves) == {"sampler=atl, decode=argmax", "sampler=btl, decode=argmax"}
    assert all(r[3:] == ["0.3000", "0.4000"] for r in curves.values())  # dev micro F1 of the one run each
    assert sorted(p.name for p in (sdir / "figures").iterdir()) == ["learning_curves.png"]
    assert "figures/learning_curves.png" in md and "figures/f1_vs_frequency.png" not in md
    assert json.loads((sdir / "report.json").read_text())["variants"] == {}


def test_a_study_whose_design_cannot_detect_its_target_says_so_on_top(tmp_path):
    sdir, _ = make_cv_study(tmp_path, report={"primary": "f1_micro", "target_difference": 0.001})
    md = build_report(sdir).read_text()
    top = md.split("## ")[0]
    assert "**Warning: this design cannot detect the effect it is about.**" in top
    mdd = json.loads((sdir / "report.json").read_text())["target"]["mdd"]
    assert mdd > 0.001 and f"{mdd:.4f}" in top


def test_a_declared_primary_metric_draws_the_learning_curves_and_the_plateau_rule(tmp_path):
    """With [report] primary = "f1_macro" the curves and the plateau rule read dev macro F1: here micro
    F1 is flat from epoch 0 (plateau 0) while macro F1 rises until epoch 3 (plateau 3)."""
    micro = [0.60, 0.601, 0.602, 0.601, 0.602, 0.601, 0.602]
    macro = [0.30, 0.40, 0.45, 0.50, 0.501, 0.502, 0.501]
    rows = [synthetic_row({"setting": "a", "train.seed": s}, "argmax", 0.5, select="f1_macro",
                          curve={"epoch": list(range(7)), "dev_f1_micro": micro, "dev_f1_macro": macro})
            for s in (0, 1)]
    axes = {"setting": ["a"], "train.seed": [0, 1]}
    spec = {"figures": False, "plateau": {"delta": 0.005, "window": 3}}
    write_rows(tmp_path / "micro", rows, spec, axes)
    write_rows(tmp_path / "macro", rows, {**spec, "primary": "f1_macro", "metrics": ["f1_macro", "f1_micro"]}, axes)
    budget = {}
    for name in ("micro", "macro"):
        md = build_report(tmp_path / name).read_text()
        budget[name] = json.loads((tmp_path / name / "report.json").read_text())["budget"]["arms"][0]["budget_epochs"]
        curve = table_rows(md, "## Learning curves")[0]
        assert curve[3] == f"{(micro if name == 'micro' else macro)[0]:.4f}"
    assert budget == {"micro": 1, "macro": 4}
    assert "Dev macro F1 (primary) after each epoch" in md and "seed-mean dev macro F1 curve" in md


# ---- what a report tells its reader to type (issue #41, item 11) ----------------------------------

def test_report_of_a_study_outside_runs_names_its_runs_folder(tmp_path):
    """A study written with `--runs DIR` rebuilds with `bertlab report NAME --runs DIR`; the report
    used to say `bertlab report NAME`, which looks under runs/ and fails."""
    from bertlab.report.cli import main as report_main
    (tmp_path / "mine").mkdir()
    sdir = make_study(tmp_path / "mine", {("atl", "ce", "argmax"): 0.1, ("btl", "ce", "argmax"): 0.2},
                      seeds=(0, 1), decodes=("argmax",), name="my_study")
    md = build_report(sdir).read_text()
    command = f"bertlab report my_study --runs {tmp_path / 'mine'}"
    assert f"rebuild with `{command}`" in md
    assert report_main(command.split()[2:]) == 0


def test_smoke_report_says_its_time_axis_is_load_noise(tmp_path):
    sdir = make_study(tmp_path, {("atl", "ce", "argmax"): 0.1, ("btl", "ce", "argmax"): 0.2},
                      seeds=(0, 1), decodes=("argmax",), report={"figures": True})
    md = build_report(sdir).read_text()
    assert "![accuracy vs training time]" in md  # matplotlib comes with make setup (the plot extra)
    assert "at `smoke` scale a run takes seconds" in md and "noise" in md


def test_report_of_a_missing_default_scale_points_to_the_smoke_folder(tmp_path, capsys):
    """`make report NAME=btl_focal` after `make experiment NAME=btl_focal SCALE=smoke`: the error
    used to point to docs/results/btl_focal (committed), not to the runs/btl_focal-smoke just made."""
    from bertlab.report.cli import main as report_main
    sdir = make_study(tmp_path, {("atl", "ce", "argmax"): 0.1, ("btl", "ce", "argmax"): 0.2},
                      seeds=(0,), decodes=("argmax",), name="btl_focal-smoke")
    study = json.loads((sdir / "study.json").read_text())
    (sdir / "study.json").write_text(json.dumps({**study, "name": "btl_focal"}))
    assert report_main(["btl_focal", "--runs", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "`bertlab report btl_focal-smoke`" in err and "make report NAME=btl_focal-smoke" in err
    assert "docs/results" not in err


# ---- the tail F1 ---------------------------------------------------------------------------------

def tail_scores(sents, tail, full=None):
    """The tail F1 of some sentences by seqeval: the mean strict F1 of the ``tail`` types with a gold
    mention in the full test set; a type without gold in ``sents`` takes its ``full`` F1."""
    rep = classification_report([s["tags"] for s in sents], [s["pred"] for s in sents], mode="strict",
                                scheme=IOB2, output_dict=True, zero_division=0)
    f1 = {t: v["f1-score"] for t, v in rep.items() if " avg" not in t and v["support"] > 0}
    classes = [t for t in tail if t in (full or f1)]
    return float(np.mean([f1[t] if t in f1 else full[t] for t in classes])), f1


def test_tail_f1_is_macro_f1_over_the_declared_tail_against_seqeval(tmp_path):
    """``[report] tail_types`` + ``f1_tail`` in metrics: the main table's tail F1 is the seed mean ±
    std of seqeval's mean F1 over the tail types (Age, Dose: the two rarer of the three), its
    interval the seed × document t of the leave-one-document-out pseudo-values; each comparison's
    Δ, seed-paired t (scipy) and seed × document interval are the same numbers's. Without
    tail_types the column is absent (every earlier report unchanged)."""
    tail = ["Age", "Dose"]
    sdir = make_study(tmp_path, NOISE, report={"compare": {"loss": FAMILIES["loss"]},
                                               "metrics": ["f1_macro", "f1_tail"], "tail_types": tail})
    md = build_report(sdir).read_text()
    rows = read_results(sdir / "results.jsonl")
    data = json.loads((sdir / "report.json").read_text())
    header = next(l for l in md.splitlines() if l.startswith("| variant | seeds"))
    assert "tail F1" in header and "Age, Dose" in md
    table = {row[0]: row for row in table_rows(md, "## Main results")}
    groups = by_variant(rows)
    pseudo = {}
    for name, group in groups.items():
        per_seed = [read_docs(sdir, r) for r in group]
        D = len(per_seed[0])
        full = [tail_scores([s for d in docs for s in d], tail) for docs in per_seed]
        v = np.array([f[0] for f in full])
        assert table[name][8] == f"{v.mean():.4f} ± {v.std(ddof=1):.4f}", name
        pseudo[name] = np.array([[D * f[0] - (D - 1) * tail_scores([s for k, d in enumerate(docs) if k != j
                                                                     for s in d], tail, f[1])[0]
                                  for j in range(D)] for docs, f in zip(per_seed, full)])
        lo, hi, _ = crossed_interval(pseudo[name], v.mean())
        assert table[name][9] == f"[{lo:.4f}, {hi:.4f}]", name
    tested = [c for c in data["comparisons"] if c["metric"] == "f1_tail"]
    assert len(tested) == 4
    for c in tested:
        va = np.array([tail_scores([s for d in read_docs(sdir, r) for s in d], tail)[0] for r in groups[c["variant"]]])
        vb = np.array([tail_scores([s for d in read_docs(sdir, r) for s in d], tail)[0]
                       for r in groups[c["baseline"]]])
        assert c["diff"] == pytest.approx(va.mean() - vb.mean(), abs=1e-12)
        assert c["p_t"] == pytest.approx(sps.ttest_rel(va, vb).pvalue, rel=1e-9)
        lo, hi, p = crossed_interval(pseudo[c["variant"]] - pseudo[c["baseline"]], va.mean() - vb.mean())
        assert c["ci"] == pytest.approx([lo, hi], abs=1e-9) and c["p_sd"] == pytest.approx(p, rel=1e-6)
    # the tail differs from the macro average over all three types, so the column is not macro F1 again
    assert any(table[n][8] != table[n][4] for n in table)
    plain = make_study(tmp_path, NOISE, name="plain", report={"metrics": ["f1_macro"]})
    plain_md = build_report(plain).read_text()
    assert "tail F1" not in next(l for l in plain_md.splitlines() if l.startswith("| variant | seeds"))


@pytest.mark.parametrize("report, message", [
    ({"metrics": ["f1_macro", "f1_tail"]}, "'f1_tail' needs [report] tail_types"),
    ({"metrics": ["f1_macro", "f1_rare"]}, "'f1_rare' is not a metric"),
    ({"metrics": "f1_macro"}, "expected a list of metrics"),
    ({"tail_types": "Age"}, "tail_types: expected a list of entity types"),
    ({"tail_types": []}, "tail_types: expected a list of entity types"),
    ({"metrics": ["f1_macro", "f1_tail"], "tail_types": ["Age"], "co_primary": ["f1_tail"]},
     "co_primary: needs [report] primary"),
    ({"primary": "f1_macro", "metrics": ["f1_macro"], "co_primary": ["f1_micro"]},
     "co_primary: 'f1_micro' must be a metric of [report] metrics"),
    ({"primary": "f1_macro", "metrics": ["f1_macro", "f1_micro"], "co_primary": ["f1_macro"]},
     "co_primary: 'f1_macro' must be a metric of [report] metrics = ['f1_macro', 'f1_micro'], other than primary"),
    ({"primary": "f1_macro", "metrics": ["f1_macro", "f1_micro"], "co_primary": "f1_micro"},
     "co_primary: expected a list of metric names"),
])
def test_report_metrics_and_tail_types_are_checked_when_the_study_is_read(tmp_path, report, message):
    from bertlab.study.spec import StudyError, load_study

    lines = ["[study]", 'name = "t"', "[base.model]", 'preset = "tiny"', "[sweep]", '"train.seed" = [0]',
             "[report]"] + [f"{k} = {json.dumps(v)}" for k, v in report.items()]
    path = tmp_path / "t.toml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(StudyError, match=re.escape(message)):
        load_study(path)


def test_a_co_primary_metric_is_tested_and_named_as_primary_after_the_primary(tmp_path):
    """``co_primary = ["f1_tail"]`` beside ``primary = "f1_macro"`` (imbalance_cv's two claims):
    tail F1 is "primary" wherever the report names it, tested right after macro F1 and before the
    secondary micro F1, with the same numbers as without the declaration; α is the study's own
    (0.025 here: Bonferroni over the two primaries)."""
    tail = ["Age", "Dose"]
    common = {"compare": {"loss": FAMILIES["loss"]}, "tail_types": tail, "primary": "f1_macro",
              "metrics": ["f1_micro", "f1_tail", "f1_macro"]}
    plain = make_study(tmp_path, NOISE, name="plain", report=common)
    co = make_study(tmp_path, NOISE, name="co", report={**common, "co_primary": ["f1_tail"], "alpha": 0.025})
    md_plain, md = build_report(plain).read_text(), build_report(co).read_text()
    assert "tail F1 (secondary)" in md_plain and "tail F1 (primary)" not in md_plain
    assert "tail F1 (primary)" in md and "tail F1 (secondary)" not in md and "micro F1 (secondary)" in md
    tests = md[md.index("Holm correction within this family"):]  # the main table keeps its fixed columns
    assert tests.index("macro F1 (primary)") < tests.index("tail F1 (primary)") < tests.index("micro F1 (secondary)")
    assert "α = 0.025" in md and "α = 0.025" not in md_plain
    mine = json.loads((co / "report.json").read_text())["comparisons"]
    theirs = {(c["variant"], c["metric"]): c for c in json.loads((plain / "report.json").read_text())["comparisons"]}
    assert [c["metric"] for c in mine][::4] == ["f1_macro", "f1_tail", "f1_micro"]
    for c in mine:
        twin = theirs[(c["variant"], c["metric"])]
        assert (c["diff"], c["p_holm"], *c["ci"]) == pytest.approx((twin["diff"], twin["p_holm"], *twin["ci"]))


def test_the_study_reader_knows_every_metric_the_report_computes():
    from bertlab.report.rows import METRICS
    from bertlab.study.spec import TESTED_METRICS

    assert set(TESTED_METRICS) == set(METRICS)


def test_a_family_within_a_level_compares_only_there_and_holm_counts_only_those(tmp_path):
    """``within = { decode = "argmax" }``: the loss family compares focal with CE under argmax only
    (one comparison per sampler, not one per sampler and decoder), and its Holm correction runs over
    those; the numbers equal the same comparisons of the unrestricted family except for Holm."""
    free = make_study(tmp_path, NOISE, name="free", report={"compare": {"loss": FAMILIES["loss"]}})
    build_report(free)
    kept = make_study(tmp_path, NOISE, name="kept", report={
        "compare": {"loss": {**FAMILIES["loss"], "within": {"decode": "argmax"}}}})
    md = build_report(kept).read_text()
    everything = json.loads((free / "report.json").read_text())["comparisons"]
    mine = json.loads((kept / "report.json").read_text())["comparisons"]
    assert len(everything) == 2 * len(mine) == 8
    assert all(c["variant"].endswith("decode=argmax") for c in mine)
    same = {(c["variant"], c["metric"]): c for c in everything}
    for c in mine:
        twin = same[(c["variant"], c["metric"])]
        assert (c["diff"], c["ci"], c["p_sd"]) == (twin["diff"], twin["ci"], twin["p_sd"])
        assert c["family_size"] == 2 and twin["family_size"] == 4
    assert "with `decode` = `argmax`" in md


@pytest.mark.parametrize("within, message", [
    ({"decode": "viterbi"}, "'viterbi' is not a level of decode"),
    ({"loss.name": "ce"}, "'loss.name' is not an axis of the study other than vary"),
    ({"optim.lr": 1e-4}, "'optim.lr' is not an axis of the study"),
    ({}, "within must be a non-empty table"),
])
def test_a_family_within_names_levels_of_other_axes(within, message):
    from bertlab.families import comparison_families

    study = {"axes": {"loss.name": ["ce", "focal"], "sampler.name": ["atl", "btl"]}, "decodes": ["argmax", "knn"]}
    with pytest.raises(ValueError, match=re.escape(message)):
        comparison_families(study, {"compare": {"loss": {"vary": "loss.name", "baseline": "ce", "within": within}}})


# ---- verdicts: a claim's category by the rules fixed before the cross-validated tests ------------------

def comparison(diff, p_holm, ci=None, metric="f1_macro"):
    """A report.json comparison with only what a verdict reads."""
    half = 0.01
    return {"diff": diff, "p_holm": p_holm, "ci": ci or [diff - half, diff + half], "metric": metric}


GAIN, LOSS, NOTHING, UNTESTED = (0.05, 0.001), (-0.05, 0.001), (0.01, 0.4), (0.0, math.nan)


@pytest.mark.parametrize("record, others, target, expected", [
    (GAIN, [], 0.04, "supported"),
    (GAIN, [GAIN, NOTHING, UNTESTED], 0.04, "supported"),
    (GAIN, [LOSS], 0.04, "mixed"),                    # a reading (decoder, secondary metric) establishes a loss
    (LOSS, [], 0.04, "not supported"),
    (LOSS, [NOTHING, LOSS], None, "not supported"),
    (LOSS, [GAIN], 0.04, "mixed"),
    (NOTHING, [], 0.04, "not supported"),            # interval [0, 0.02] ends below the target: ruled out
    (NOTHING, [LOSS], 0.04, "not supported"),
    (NOTHING, [GAIN], 0.04, "inconclusive"),          # ruled out on the record, yet a reading finds a gain
    (NOTHING, [], 0.015, "inconclusive"),             # the interval reaches the target
    (NOTHING, [], None, "inconclusive"),              # no target: nothing is ruled out
    (NOTHING, [GAIN, LOSS], 0.015, "mixed"),
    ((0.05, 0.05), [], None, "inconclusive"),          # Holm p equal to alpha is not below it
    ((0.05, 0.0499), [], None, "supported"),
    (UNTESTED, [GAIN], 0.04, "not tested"),
])
def test_categories_follow_the_rules_docs_experiments_fixed(record, others, target, expected):
    from bertlab.report.verdicts import categorize

    assert categorize(comparison(*record), [comparison(*o) for o in others], 0.05, target) == expected
    assert categorize(None, [], 0.05, target) == "not tested"


def test_categories_on_generated_readings_swap_when_the_claim_is_turned_around():
    """On random readings: exactly the definitions' consequences. Turning the claim around (every
    difference and interval negated) swaps an established gain for a loss: supported becomes not
    supported, mixed stays mixed; readings that establish nothing never change the verdict."""
    from bertlab.report.verdicts import CATEGORIES, categorize, established

    rng = np.random.default_rng(0)

    def draw():
        diff = float(rng.normal(0, 0.05))
        p = float(rng.choice([0.001, 0.03, 0.2, 0.8, math.nan]))
        half = float(rng.uniform(0.005, 0.08))
        return {"diff": diff, "p_holm": p, "ci": [diff - half, diff + half], "metric": "f1_macro"}

    def turned(c):
        return {**c, "diff": -c["diff"], "ci": [-c["ci"][1], -c["ci"][0]]}

    seen = set()
    for _ in range(3000):
        record, others = draw(), [draw() for _ in range(int(rng.integers(0, 5)))]
        alpha, target = float(rng.choice([0.05, 0.025])), float(rng.choice([0.02, 0.04]))
        got = categorize(record, others, alpha, target)
        seen.add(got)
        assert got in CATEGORIES
        signs = {established(c, alpha) for c in [record, *others]}
        if got == "supported":
            assert established(record, alpha) == 1 and -1 not in signs
            assert categorize(turned(record), [turned(c) for c in others], alpha, target) == "not supported"
        if got == "mixed":
            assert signs >= {1, -1}
            assert categorize(turned(record), [turned(c) for c in others], alpha, target) == "mixed"
        if got == "not supported":
            assert 1 not in signs and (established(record, alpha) == -1 or record["ci"][1] < target)
        neutral = {**draw(), "p_holm": 0.9}
        assert categorize(record, [*others, neutral], alpha, target) == got
    assert seen == set(CATEGORIES)


def test_a_verdict_reads_its_record_and_the_other_readings_of_the_same_models(study, tmp_path):
    """On a built report: the comparison of record is report.json's own; the other readings are the
    comparisons of the same two levels in the same cell (every field but the decode), on every
    tested metric; the category follows from them; a record that two cells match is an error."""
    from bertlab.report.verdicts import Claim, categorize, verdict

    sdir = study[0]
    comps = json.loads((sdir / "report.json").read_text())["comparisons"]
    v = verdict(sdir, Claim("loss", "focal", "ce", {"decode": "knn"}, {"sampler": "btl"}, metric="f1_macro"))
    assert v.record == next(c for c in comps if c["family"] == "loss" and c["metric"] == "f1_macro"
                            and c["variant"] == "sampler=btl, loss=focal, decode=knn")
    same_models = [c for c in comps if c["family"] == "loss" and c["variant"].startswith("sampler=btl, loss=focal")
                   and c is not None]
    assert len(same_models) == 6  # 2 decodes x 3 metrics
    others = [c for c in same_models if (c["variant"], c["metric"]) != (v.record["variant"], "f1_macro")]
    assert v.others == others
    assert v.category == categorize(v.record, others, 0.05, None) == "supported"
    assert v.alpha == 0.05 and v.target is None
    assert len(v.gains) == sum(c["p_holm"] < 0.05 and c["diff"] > 0 for c in same_models) and not v.losses
    assert v.sentence().startswith("focal over ce (loss, sampler=btl, decode=knn), f1_macro: supported: diff +")
    # the cell named in the record instead of within: the same readings, none from sampler=atl's models
    w = verdict(sdir, Claim("loss", "focal", "ce", {"decode": "knn", "sampler": "btl"}, metric="f1_macro"))
    assert (w.record, w.others, w.gains, w.category) == (v.record, v.others, v.gains, v.category)
    assert verdict(sdir, Claim("sampler", "btl", "atl", {"decode": "knn"}, {"loss": "ce"})).record["metric"] == \
        "f1_micro"  # no primary declared: the first metric the study tests
    assert verdict(sdir, Claim("sampler", "btl", "atl", {"decode": "knn"}, {"loss": "ce"}, "f1_macro")).category == \
        "not supported"
    with pytest.raises(ValueError, match=re.escape("matches 2 comparisons (sampler=atl, loss=focal, decode=knn; "
                                                   "sampler=btl, loss=focal, decode=knn)")):
        verdict(sdir, Claim("loss", "focal", "ce", record={"decode": "knn"}))
    for claim, says in [(Claim("loss", "focal", "ce", {"decoder": "knn"}, {"sampler": "btl"}),
                         "no field 'decoder' in its comparisons; they have ['decode', 'loss', 'sampler']"),
                        (Claim("loss", "focal", "ce", {"decode": "kNN"}, {"sampler": "btl"}),
                         "decode=kNN is in none of its comparisons; decode is one of ['argmax', 'knn']"),
                        (Claim("loss", "focall", "ce", {"decode": "knn"}, {"sampler": "btl"}),
                         "no comparison has the level 'focall'")]:
        with pytest.raises(ValueError, match=re.escape(says)):
            verdict(sdir, claim)
    with pytest.raises(ValueError, match=re.escape("no comparison family 'method'; the study's are "
                                                   "['sampler', 'loss', 'decode']")):
        verdict(sdir, Claim("method", "focal", "ce"))
    with pytest.raises(FileNotFoundError, match="report.json: not found; build the report first"):
        verdict(tmp_path, Claim("loss", "focal", "ce"))


def test_a_verdict_says_at_this_budget_when_an_arms_mean_dev_curve_has_not_plateaued(tmp_path):
    """The plateau rule on the mean dev curve of the primary metric over an arm's runs (folds and
    seeds), checked against the rule written out by hand on the runs' metrics.json histories."""
    from bertlab.report.verdicts import Claim, verdict

    sdir, _ = make_cv_study(tmp_path, report={"primary": "f1_macro", "target_difference": 0.04})
    curves = {}
    for metrics in sdir.glob("*/metrics.json"):
        run = metrics.parent.name
        s, k = run.split("__")[0].split("=")[1], int(run.split("__")[1].split("=")[1])
        if s == "atl":  # each fold levels off at its own height from epoch 5 on
            values = [min(0.2 + 0.05 * e, 0.45) + 0.002 * k for e in range(10)]
        else:  # fold 0 is flat, folds 1 and 2 rise by 0.012 an epoch: the mean never levels off
            values = [0.2 + (0.0 if k == 0 else 0.012) * e for e in range(10)]
        curves.setdefault(s, []).append(values)
        m = json.loads(metrics.read_text())
        m["history"] = [{"epoch": e, "dev": {"argmax": {"f1_micro": v, "f1_macro": v}}} for e, v in enumerate(values)]
        metrics.write_text(json.dumps(m))
    write_results(sdir)
    build_report(sdir)

    def plateaued(values, delta=0.005, window=3):
        return any(all(abs(values[e + j] - values[e]) < delta for j in range(1, window + 1))
                   for e in range(len(values) - window))

    expected = {f"sampler={s}, decode=argmax": plateaued(np.mean(c, axis=0)) for s, c in curves.items()}
    assert expected == {"sampler=atl, decode=argmax": True, "sampler=btl, decode=argmax": False}
    assert any(plateaued(c) for c in curves["btl"])  # one run alone would pass: the rule reads the mean
    v = verdict(sdir, Claim("baseline", "btl", "atl", record={"decode": "argmax"}))
    assert v.plateaued == expected and v.at_this_budget
    assert " at this budget: " in v.sentence() and "no dev plateau by the last epoch: sampler=btl" in v.sentence()


def test_a_verdict_of_a_study_still_running_is_not_tested(tmp_path):
    """No variant pooled yet, so no comparison: the verdict is "not tested" (the names cannot be
    checked against comparisons that do not exist yet), not an error and not "inconclusive"."""
    from bertlab.report.verdicts import Claim, verdict

    sdir, _ = make_cv_study(tmp_path, folds=3, seeds=(0,), report={"primary": "f1_macro", "target_difference": 0.04})
    for run in sdir.glob("*__fold=[12]__*"):
        shutil.rmtree(run)
    write_results(sdir)
    build_report(sdir)
    v = verdict(sdir, Claim("baseline", "btl", "atl", record={"decode": "argmax"}))
    assert (v.category, v.record, v.others) == ("not tested", None, [])
    assert v.sentence() == "btl over atl (baseline, decode=argmax): not tested (the study has no such comparison yet)"
