"""bertlab.report against references: every number printed in report.md is recomputed here from
results.jsonl and the prediction files with numpy, scipy.stats and seqeval directly.

The study folders are synthetic (no training): runs whose predictions are gold tags with seeded
noise, so the variants really differ and the numbers are not trivial."""
import json
import math
import re
import zlib

import numpy as np
import pytest
import scipy.stats
from seqeval.metrics import classification_report

from bertlab.experiment import environment, read_results, write_results, _write_json
from bertlab.metrics import entity_report, unweighted_accuracy
from bertlab.report import build_report, min_wilcoxon_p

TYPES = ["Age", "Dose", "Sign"]  # Sign common, Dose middle, Age rare


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
    labels = ["O"] + [f"{b}-{t}" for t in TYPES for b in "BI"]
    return [labels[rng.integers(len(labels))] if rng.random() < p else t for t in tags]


def make_study(tmp_path, noise, seeds=(0, 1, 2), decodes=("argmax", "knn"), baseline=None, report=None):
    """A study folder as bertlab.experiment leaves it; ``noise[(sampler, loss, decode)]`` is the
    corruption rate of that variant's predictions."""
    sdir = tmp_path / "study"
    sdir.mkdir()
    docs = make_documents()
    samplers = sorted({k[0] for k in noise})
    losses = sorted({k[1] for k in noise})
    axes = {"sampler.name": samplers, "loss.name": losses, "train.seed": list(seeds)}
    runs = [f"sampler={s}__loss={l}__seed={k}" for s in samplers for l in losses for k in seeds]
    _write_json(sdir / "study.json", {
        "name": "fake", "scale": "smoke", "source": "experiments/fake.toml", "description": "synthetic",
        "axes": axes, "short_names": {"sampler.name": "sampler", "loss.name": "loss", "train.seed": "seed"},
        "baseline": baseline if baseline is not None else {"sampler.name": "atl", "loss.name": "ce",
                                                           "decode": "argmax"},
        "decodes": list(decodes), "report": {"bootstrap_resamples": 300, "bands": {"head": 40, "tail": 10},
                                             **(report or {})},
        "gradflow": False, "runs": runs})
    env = environment()
    mentions = {"Sign": 120, "Dose": 30, "Age": 4}
    for s in samplers:
        for l in losses:
            for k in seeds:
                run_id = f"sampler={s}__loss={l}__seed={k}"
                rdir = sdir / run_id
                rdir.mkdir()
                _write_json(rdir / "run.json", {"study": "fake", "scale": "smoke", "run_id": run_id,
                                                "axes": {"sampler.name": s, "loss.name": l, "train.seed": k},
                                                "env": env})
                test = {}
                for decode in decodes:
                    rng = np.random.default_rng(zlib.crc32(f"{s}{l}{k}{decode}".encode()))
                    gold, pred, lines = [], [], []
                    for doc_id, sents in docs:
                        for i, tags in enumerate(sents):
                            p = noisy(tags, rng, noise[(s, l, decode)])
                            gold.append(tags)
                            pred.append(p)
                            lines.append(json.dumps({"doc_id": doc_id, "sentence": i, "tokens": ["w"] * len(tags),
                                                     "tags": tags, "pred": p}))
                    (rdir / f"predictions_test_{decode}.jsonl").write_text("\n".join(lines) + "\n")
                    test[decode] = {"entity_report": dict(entity_report(gold, pred, zero_division=0)),
                                    "unweighted_accuracy": unweighted_accuracy(gold, pred),
                                    "tokens_per_second": 1000.0 + k}
                _write_json(rdir / "metrics.json", {"test": test, "train_seconds": 10.0 + k, "epochs": 2,
                                                    "params": 1_000_000, "train_mentions": mentions})
                _write_json(rdir / "timing.json", {"wall_seconds": 12.0 + k, "sessions": 1, "resumed": False})
    write_results(sdir)
    return sdir


NOISE = {("atl", "ce", "argmax"): 0.10, ("atl", "ce", "knn"): 0.12,
         ("atl", "focal", "argmax"): 0.04, ("atl", "focal", "knn"): 0.11,
         ("btl", "ce", "argmax"): 0.10, ("btl", "ce", "knn"): 0.30,
         ("btl", "focal", "argmax"): 0.09, ("btl", "focal", "knn"): 0.10}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    sdir = make_study(tmp_path_factory.mktemp("report"), NOISE)
    path = build_report(sdir)
    return sdir, path.read_text(), read_results(sdir / "results.jsonl")


def table_rows(md, section):
    """The rows (lists of cells) of the first markdown table after the heading ``## section``."""
    lines = md.splitlines()
    head = next(i for i, l in enumerate(lines) if l.startswith(f"## {section}"))
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


def test_results_rows_match_seqeval(study):
    sdir, _, rows = study
    assert len(rows) == 2 * 2 * 3 * 2  # runs x decodes, no duplicates
    assert len({(r["run_id"], r["decode"]) for r in rows}) == len(rows)
    for r in rows:
        lines = [json.loads(l) for l in (sdir / r["predictions"]).read_text().splitlines()]
        ref = classification_report([l["tags"] for l in lines], [l["pred"] for l in lines],
                                    mode="strict", scheme=__import__("seqeval.scheme").scheme.IOB2,
                                    output_dict=True, zero_division=0)
        assert r["f1_micro"] == pytest.approx(ref["micro avg"]["f1-score"], abs=1e-12)
        assert r["f1_macro"] == pytest.approx(ref["macro avg"]["f1-score"], abs=1e-12)
        assert r["seconds_per_epoch"] == pytest.approx(r["train_seconds"] / 2)


def test_main_table_mean_std(study):
    _, md, rows = study
    table = {row[0]: row for row in table_rows(md, "Main results")}
    groups = by_variant(rows)
    assert set(table) == set(groups)
    for name, group in groups.items():
        for col, metric in ((2, "f1_micro"), (4, "f1_macro"), (6, "unweighted_accuracy")):
            v = np.array([r[metric] for r in group])
            assert table[name][col] == f"{v.mean():.4f} ± {v.std(ddof=1):.4f}"


def test_bootstrap_ci_recomputed_with_seqeval_and_scipy(study):
    """The CI: BCa bootstrap over documents with the documented shared resamples, recomputed by
    ``scipy.stats.bootstrap(method="BCa")`` whose statistic re-scores the resampled documents'
    sentences with seqeval and averages over seeds (scipy draws the same resamples from the same
    seed, and jackknifes documents for the acceleration)."""
    import scipy.stats as sps
    from seqeval.scheme import IOB2

    sdir, md, rows = study
    table = {row[0]: row for row in table_rows(md, "Main results")}
    for name in ("sampler=btl, loss=focal, decode=knn", "sampler=atl, loss=ce, decode=argmax"):
        group = by_variant(rows)[name]
        per_seed = []
        for r in group:
            docs = {}
            for l in (sdir / r["predictions"]).read_text().splitlines():
                l = json.loads(l)
                docs.setdefault(l["doc_id"], []).append(l)
            per_seed.append(list(docs.values()))
        D = len(per_seed[0])

        def seed_mean(index, key):
            scores = []
            for docs in per_seed:
                sents = [s for d in np.atleast_1d(index).astype(int) for s in docs[d]]
                rep = classification_report([s["tags"] for s in sents], [s["pred"] for s in sents], mode="strict",
                                            scheme=IOB2, output_dict=True, zero_division=0)
                scores.append(rep[key]["f1-score"])
            return float(np.mean(scores))

        for col, key in ((3, "micro avg"), (5, "macro avg")):
            ref = sps.bootstrap((np.arange(D),), lambda i: seed_mean(i, key), vectorized=False, n_resamples=300,
                                method="BCa", rng=np.random.default_rng(0))
            lo, hi = ref.confidence_interval
            assert table[name][col] == f"[{lo:.4f}, {hi:.4f}]", (name, key)
        # the micro-F1 interval brackets the seed mean of the full test set
        mean = np.mean([r["f1_micro"] for r in group])
        lo, hi = (float(x) for x in table[name][3].strip("[]").split(", "))
        assert lo <= mean <= hi


def test_significance_recomputed_with_scipy(study):
    _, md, rows = study
    groups = by_variant(rows)
    base = groups["sampler=atl, loss=ce, decode=argmax"]
    printed = {(r[0], r[2]): r for r in table_rows(md, "Significance")}
    for metric, label in (("f1_micro", "micro F1"), ("f1_macro", "macro F1")):
        names = [n for n in groups if n != "sampler=atl, loss=ce, decode=argmax"]
        ps, refs = [], {}
        for n in names:
            a = np.array([r[metric] for r in groups[n]])
            b = np.array([r[metric] for r in base])
            t = scipy.stats.ttest_rel(a, b)
            w = scipy.stats.wilcoxon(a, b)
            d = (a - b).mean() / (a - b).std(ddof=1)
            refs[n] = (t, w, d, (a - b).mean())
            ps.append(t.pvalue)
        # Holm by hand: sorted p * (m - rank), running max, capped at 1
        order = np.argsort(ps)
        adj = np.empty(len(ps))
        running = 0.0
        for rank, i in enumerate(order):
            running = max(running, min(1.0, ps[i] * (len(ps) - rank)))
            adj[i] = running
        for n, p_holm in zip(names, adj):
            t, w, d, diff = refs[n]
            row = printed[(n, label)]
            assert row[3] == "3"
            assert row[4] == f"{diff:+.4f}"
            assert row[5] == f"{t.statistic:.3f}"
            assert row[6] == f"{t.pvalue:.4f}"
            assert row[7] == f"{p_holm:.4f}"
            assert row[8] == f"{w.pvalue:.4f}"
            assert row[9] == f"{d:.2f}"


def test_sentences_are_honest_about_three_seeds(study):
    _, md, _ = study
    assert "With 3 seeds the exact Wilcoxon test cannot reach p < 0.05" in md
    assert min_wilcoxon_p(3) == 0.25
    sentences = [l for l in md.splitlines() if l.startswith("- sampler=")]
    assert len(sentences) == 2 * 7
    for s in sentences:  # a claim of significance must come with an adjusted p below alpha
        if "significant after Holm" in s:
            adj = float(re.search(r"adjusted ([0-9.e-]+)", s).group(1))
            assert adj < 0.05


def test_bands_and_compute(study):
    _, md, rows = study
    groups = by_variant(rows)
    bands = {r[0]: r for r in table_rows(md, "Per-class F1 by frequency band")}
    compute = {r[0]: r for r in table_rows(md, "Compute cost")}
    for name, group in groups.items():
        # Sign: 120 mentions -> head (>= 40); Dose 30 -> middle; Age 4 -> tail (< 10)
        for col, typ in ((1, "Sign"), (2, "Dose"), (3, "Age")):
            f1 = np.mean([r["per_type"][typ]["f1"] for r in group])
            assert bands[name][col] == f"{f1:.4f} (1)"
        assert compute[name][2] == f"{np.mean([r['seconds_per_epoch'] for r in group]):.1f}"
        assert compute[name][4] == f"{np.mean([r['inference_tokens_per_s'] for r in group]):.0f}"
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


def test_report_rebuild_is_deterministic(study):
    sdir, md, _ = study
    assert build_report(sdir).read_text() == md


def test_one_seed_is_not_tested(tmp_path):
    sdir = make_study(tmp_path, NOISE, seeds=(0,), decodes=("argmax",))
    md = build_report(sdir).read_text()
    assert "only 1 paired seed(s), so no test is possible" in md
    assert not re.search(r"significant after Holm", md)


def test_anova_matches_statsmodels(tmp_path):
    """The two-way ANOVA table printed for an lr x batch-size study equals statsmodels' anova_lm."""
    import pandas as pd
    import statsmodels.api as sm
    from statsmodels.formula.api import ols
    sdir = tmp_path / "anova"
    sdir.mkdir()
    rng = np.random.default_rng(1)
    axes = {"optim.lr": [1e-4, 5e-5], "sampler.batch_size": [8, 16, 32], "train.seed": [0, 1, 2]}
    _write_json(sdir / "study.json", {
        "name": "anova", "scale": "smoke", "axes": axes, "baseline": {}, "decodes": ["argmax"],
        "short_names": {"optim.lr": "lr", "sampler.batch_size": "bs", "train.seed": "seed"},
        "report": {"figures": False, "anova": {"a": "optim.lr", "b": "sampler.batch_size"}}, "runs": []})
    rows = []
    for lr in axes["optim.lr"]:
        for bs in axes["sampler.batch_size"]:
            for seed in axes["train.seed"]:
                f1 = 0.5 + (lr > 6e-5) * 0.05 + bs * 0.001 + rng.normal(0, 0.01)
                rows.append({"run_id": f"lr={lr}__bs={bs}__seed={seed}", "decode": "argmax", "seed": seed,
                             "axes": {"optim.lr": lr, "sampler.batch_size": bs, "train.seed": seed},
                             "f1_micro": f1, "f1_macro": f1, "unweighted_accuracy": f1, "dev_f1_micro": f1,
                             "per_type": {"X": {"precision": f1, "recall": f1, "f1": f1, "support": 5}},
                             "train_mentions": {"X": 10}, "train_seconds": 1.0, "seconds_per_epoch": 1.0,
                             "epochs": 1, "params": 10, "inference_tokens_per_s": 5.0, "wall_seconds": 1.0,
                             "predictions": None, "env": {}})
    (sdir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    md = build_report(sdir).read_text()
    df = pd.DataFrame({"y": [r["dev_f1_micro"] for r in rows], "a": [str(r["axes"]["optim.lr"]) for r in rows],
                       "b": [str(r["axes"]["sampler.batch_size"]) for r in rows]})
    ref = sm.stats.anova_lm(ols("y ~ C(a) * C(b)", data=df).fit(), typ=2)
    printed = {r[0]: r for r in table_rows(md, "Two-way ANOVA")}
    for name, ref_name in (("lr", "C(a)"), ("bs", "C(b)"), ("lr × bs", "C(a):C(b)"), ("residual (seeds)", "Residual")):
        assert printed[name][1] == f"{ref.loc[ref_name, 'sum_sq']:.6f}"
        assert printed[name][2] == f"{ref.loc[ref_name, 'df']:.0f}"
        if ref_name != "Residual":
            assert printed[name][4] == f"{ref.loc[ref_name, 'F']:.3f}"
            assert printed[name][5] == f"{ref.loc[ref_name, 'PR(>F)']:.4f}"


def test_per_class_table_takes_each_class_count_from_its_own_corpus():
    """Variants on two corpora (a study swept over datasets): each class's training mentions and
    band come from the variant that has that class, not from the first variant."""
    from bertlab.report import _band_section
    rows = {("data", "a"): [{"train_mentions": {"Disease": 900}, "per_type": {"Disease": {"f1": 0.8, "support": 5}}}],
            ("data", "b"): [{"train_mentions": {"Age": 30, "Dose": 120},
                             "per_type": {"Age": {"f1": 0.9, "support": 3}, "Dose": {"f1": 0.5, "support": 2}}}]}
    labels = {k: f"data={k[1]}" for k in rows}
    data = {"variants": {v: {} for v in labels.values()}}
    md = _band_section(rows, labels, {"bands": {"head": 500, "tail": 50}}, data)
    table = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:3] for line in md if line.startswith("| ")}
    assert table["Disease"] == ["900", "head"]
    assert table["Dose"] == ["120", "middle"]
    assert table["Age"] == ["30", "tail"]
    assert data["variants"]["data=b"]["bands"]["tail"] == {"f1": 0.9, "classes": 1}
