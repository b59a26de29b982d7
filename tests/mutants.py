"""Mutation testing: plant one plausible bug at a time and check that the tests notice it.

    python tests/mutants.py                     # every mutant: 41, about 21 minutes on 2 busy cores
    python tests/mutants.py --area stats knn    # only some areas
    python tests/mutants.py --list              # the mutants, nothing run
    python tests/mutants.py --check             # does every snippet still apply? (no tests run)

A test that passes on the real code proves little until it also fails on a plausible wrong one.
Each mutant below is such a wrong version: one exact snippet of one file replaced by another. The
script copies the repository into a temporary folder (the real files are never edited), runs the
named tests there once unmutated (the baseline: they must pass), then once per mutant, each in a
fresh ``pytest -x`` process with ``PYTHONPATH`` on the copy. A mutant is

    killed     the tests fail on it (pytest exit code 1)
    survived   they all pass: a bug of this kind would go unnoticed
    timeout    they ran past --timeout (counted as not killed, so the score is a lower bound)
    stale      its snippet is not exactly once in the file: the code moved, update the mutant
    error      pytest could not run them (exit code 2-5, e.g. a test id that no longer exists)

The table gives, per area, the mutants that could be judged, those killed and the score
(killed / judged). An *equivalent* mutant changes no result (only speed, say), so no test of the
results can kill it; it is run and listed, but left out of the score. Exit status 1 when a mutant
is stale or in error, or a baseline fails: the table would then not mean what it says.

Not part of ``make test`` (the name has no ``test_`` prefix, so pytest does not collect it): it
runs the named test files once per mutant. Items "#44.n" are the survivors listed in issue #44;
the others are further bugs of the same kinds, kept so the score of each area means something.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# not copied: version control, environments, caches and run outputs (.gitignore's entries)
SKIP = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", "*.egg-info", "build", "dist",
                              "runs", "*.pyc", ".whl", ".gl")
LINKED = ("docs/results",)  # 350 MB of committed study folders the tests only read: linked, not copied


@dataclass(frozen=True)
class Mutant:
    name: str
    area: str
    file: str                # relative to the repository root
    original: str            # must occur exactly once in the file
    replacement: str
    tests: tuple[str, ...]   # pytest arguments: files, node ids, "-k" expressions
    bug: str                 # the mistake it stands for
    equivalent: str = ""     # why no test of the results can kill it (then it is not scored)


LOSSES = ("tests/test_losses.py",)
SAMPLING = ("tests/test_sampling.py",)
METRICS = ("tests/test_metrics.py",)
STATS = ("tests/test_stats.py", "tests/test_stats_simulation.py")
STATS_AND_REPORT = ("tests/test_stats.py", "tests/test_report.py")  # bertlab/report/ calls these
REPORT = ("tests/test_report.py",)
KNN = ("tests/test_knn.py",)
CALIBRATION = ("tests/test_calibration.py",)
CONSTRAINED = ("tests/test_constrained.py",)
# test_gradflow.py without its figure and training-run tests, which these mutants do not reach
GRADFLOW = ("tests/test_gradflow.py", "-k", "not (figure or train or cli)")
RESUME = ("tests/test_train.py", "-k", "resume or interrupted or sigkill or batch_order")

MUTANTS = [
    # -- losses ----------------------------------------------------------------------------------
    Mutant("#44.6", "losses", "bertlab/losses/functional.py",
           "w = w / w[seen].mean()", "w = w / w.mean()", LOSSES,
           'normalize="mean" also averages over classes with no training token'),
    Mutant("focal-factor", "losses", "bertlab/losses/functional.py",
           "losses = -torch.exp(gamma * log_q_t) * log_p_t", "losses = -torch.exp(gamma * log_p_t) * log_p_t",
           LOSSES, "focal factor p_t^γ instead of (1 - p_t)^γ"),
    Mutant("mean-counts-ignored", "losses", "bertlab/losses/functional.py",
           "denominator = valid.sum(dim=-1).to(losses.dtype)",
           "denominator = torch.full_like(total, valid.shape[-1])", LOSSES,
           '"mean" divides by every token, ignored ones included'),
    Mutant("inverse-without-C", "losses", "bertlab/losses/functional.py",
           "w = total / (num_classes * safe_n)", "w = total / safe_n", LOSSES,
           '"inverse" weights N / N_c, without the 1/C that balances them'),
    # -- sampling (BTL) --------------------------------------------------------------------------
    Mutant("#44.5", "sampling", "bertlab/losses/btl.py",
           "copy_weight = torch.where(keeps_own, token_weight[0], token_weight[1])",
           "copy_weight = torch.where(keeps_own, token_weight[0], token_weight[0])", SAMPLING,
           "other_to_o: a token scored as O keeps its own label's α in the weighted mean"),
    Mutant("copies-summed", "sampling", "bertlab/losses/btl.py",
           '    if combine == "mean":\n        return copy_losses.mean(), copy_losses',
           '    if combine == "mean":\n        return copy_losses.sum(), copy_losses', SAMPLING,
           'combine="mean" sums the copy losses'),
    Mutant("binary-pad-zero", "sampling", "bertlab/losses/btl.py",
           'copy_logits.masked_fill(is_pad[:, None, :], float("-inf"))',
           "copy_logits.masked_fill(is_pad[:, None, :], 0.0)", SAMPLING,
           "binary mode: a type with only B- gets a phantom third column of logit 0"),
    Mutant("ignore-drops-o", "sampling", "bertlab/losses/btl.py",
           "other = valid & (label_type >= 0) & (label_type != c)", "other = valid & (label_type != c)",
           SAMPLING, 'BTL targets: O tokens count as "other types" (ignored in "ignore" mode)'),
    # -- metrics ---------------------------------------------------------------------------------
    Mutant("strict-type-switch", "metrics", "bertlab/metrics.py",
           'inside=[("B", "I", "same"), ("I", "I", "same")],',
           'inside=[("B", "I", "any"), ("I", "I", "any")],', METRICS,
           "strict IOB2: B-X I-Y continues one entity"),
    Mutant("micro-f1-jaccard", "metrics", "bertlab/metrics.py",
           "float(2 * tp / (2 * tp + fp + fn))", "float(tp / (tp + fp + fn))", METRICS,
           "micro F1 computed as tp / (tp + fp + fn)"),
    Mutant("fp-fn-swapped", "metrics", "bertlab/metrics.py",
           "((0, gold & pred), (1, pred - gold), (2, gold - pred))",
           "((0, gold & pred), (1, gold - pred), (2, pred - gold))", METRICS,
           "entity_counts: false positives and false negatives swapped"),
    Mutant("conlleval-b-after-i", "metrics", "bertlab/metrics.py",
           'if prev_tag in ("B", "I") and tag in ("B", "S", "O"):',
           'if prev_tag in ("B", "I") and tag in ("S", "O"):', METRICS,
           "conlleval: B-X after I-X does not close the entity"),
    # -- stats -----------------------------------------------------------------------------------
    Mutant("#44.2", "stats", "bertlab/stats/significance.py",
           "adjust = 0 if exact else 1", "adjust = 0", STATS_AND_REPORT,
           "random permutations without the +1 correction (p can be 0)"),
    Mutant("#44.3", "stats", "bertlab/stats/bootstrap.py",
           "share = ((theta_b < theta_hat).sum() + (theta_b <= theta_hat).sum()) / (2 * B)",
           "share = (theta_b < theta_hat).sum() / B", STATS_AND_REPORT,
           "BCa z0 does not count ties half"),
    Mutant("#44.11", "stats", "bertlab/stats/significance.py",
           "lower = pmf[: int(np.ceil(r_plus)) + 1].sum()\n        upper = pmf[int(np.floor(r_plus)):].sum()",
           "lower = pmf[: int(np.floor(r_plus)) + 1].sum()\n        upper = pmf[int(np.ceil(r_plus)):].sum()",
           STATS, 'wilcoxon(method="exact") on tied data rounds W+ the anti-conservative way'),
    Mutant("#37.3", "stats", "bertlab/stats/significance.py",
           "    if exact:\n        observed = null[0]", "    if exact:\n        observed = observed", STATS,
           "an exact permutation test compares the observed value computed alone (p can be 0)"),
    Mutant("#37.1", "stats", "bertlab/stats/bootstrap.py",
           "runs_b = runs_a if paired_runs else draw(len(b))", "runs_b = draw(len(b))", STATS,
           "the hierarchical bootstrap draws each arm's seeds independently (pairs lost)"),
    Mutant("crossed-resid-twice", "stats", "bertlab/stats/crossed.py",
           'coef["resid"] = 1.0 - coef["seed"] - coef["doc"]', 'coef["resid"] = 1.0', STATS,
           "the seed × document variance counts the interaction again in each main effect"),
    Mutant("crossed-normal", "stats", "bertlab/stats/crossed.py",
           "    q = float(t_dist.ppf(0.5 + confidence_level / 2, df))\n    return TestResult(t, _t_pvalue(t, df, alternative), df=df, se=se,\n                      ci=ConfidenceInterval(est - q * se, est + q * se), estimate=est, ms=ms)",
           "    q = float(norm.ppf(0.5 + confidence_level / 2))\n    return TestResult(t, _t_pvalue(t, df, alternative), df=df, se=se,\n                      ci=ConfidenceInterval(est - q * se, est + q * se), estimate=est, ms=ms)",
           STATS, "the crossed interval uses the normal quantile, not t with Satterthwaite's df"),
    Mutant("ttest-ddof0", "stats", "bertlab/stats/significance.py",
           "t = _ratio(d.mean(), np.sqrt(d.var(ddof=1) / n))", "t = _ratio(d.mean(), np.sqrt(d.var(ddof=0) / n))",
           STATS, "paired t with the n (not n - 1) variance"),
    Mutant("holm-not-monotone", "stats", "bertlab/stats/significance.py",
           "np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p))))",
           "p[order] * (len(p) - np.arange(len(p)))", STATS,
           "Holm's adjusted p-values not made non-decreasing"),
    # -- report ----------------------------------------------------------------------------------
    Mutant("#44.1", "report", "bertlab/report/comparisons.py",
           'return [(i, where[r["seed"]]) for i, r in enumerate(a.rows) if r["seed"] in where]',
           "return [(i, i) for i in range(min(len(a.rows), len(b.rows)))]", REPORT,
           "runs paired by position, not by seed (every test of a comparison uses these pairs)"),
    Mutant("one-run-with-every-seed", "report", "bertlab/report/comparisons.py",
           "if a.single and b.single:\n        return [(0, 0)]\n    if a.single:",
           "if a.single and b.single:\n        return [(0, 0)]\n    if len(a.rows) == 1:", REPORT,
           "a single non-deterministic run paired with every seed of the other side"),
    Mutant("#44.4", "report", "bertlab/report/counts.py",
           "return np.where(e[..., 2] > 0, 2 * e[..., 0] / (e[..., 1] + e[..., 2]), np.nan)",
           "return np.where(e[..., 1] + e[..., 2] > 0, 2 * e[..., 0] / (e[..., 1] + e[..., 2]), np.nan)",
           REPORT, "per-class F1 0 (not NaN) in a resample with predictions but no gold"),
    Mutant("macro-drops-absent", "report", "bertlab/report/counts.py",
           "per_class = np.where(np.isnan(per_class), per_class_scores(full, layout, metric), per_class)",
           "per_class = np.where(np.isnan(per_class), np.nanmean(per_class, -1, keepdims=True), per_class)",
           REPORT, "resampled macro F1 drops the classes a resample left out (biased upward)"),
    # -- knn -------------------------------------------------------------------------------------
    Mutant("#44.12", "knn", "bertlab/knn.py",
           "kk = min(k, block_min.shape[1]) - 1", "kk = min(k, block_min.shape[1]) - 2", KNN,
           "the block bound's index one too small",
           equivalent="τ is then always the exact k-th value: a valid bound, so only speed changes"),
    Mutant("ties-by-index", "knn", "bertlab/knn.py",
           "order = np.lexsort((cols, exact, rows))", "order = np.lexsort((exact, cols, rows))", KNN,
           "candidates ordered by training index before distance"),
    Mutant("no-rounding-margin", "knn", "bertlab/knn.py",
           "limit = (tau + 2 * err).astype(np.float32)", "limit = tau.astype(np.float32)", KNN,
           "the float32 bound without its rounding margin (a true neighbour can be missed)"),
    Mutant("vote-tie-higher", "knn", "bertlab/knn.py",
           "return self.classes_[np.argmax(proba, axis=1)]",
           "return self.classes_[proba.shape[1] - 1 - np.argmax(proba[:, ::-1], axis=1)]", KNN,
           "a tied vote goes to the higher class"),
    # -- calibration -----------------------------------------------------------------------------
    Mutant("#44.9", "calibration", "bertlab/calibration.py",
           "& (own_arg < other_arg))", "& (own_arg > other_arg))", CALIBRATION,
           "an exact tie between columns goes to the higher column (argmax takes the lower)"),
    Mutant("#44.10", "calibration", "bertlab/calibration.py",
           "key=lambda i: (abs(self.grid[i] - bias[t]), self.grid[i]))",
           "key=lambda i: (self.grid[i], abs(self.grid[i] - bias[t])))", CALIBRATION,
           "an F1 plateau goes to the smallest offset, not the one closest to the current"),
    Mutant("entities-cross-sentences", "calibration", "bertlab/calibration.py",
           "& (typ[1:] == typ[:-1]) & ~sentence_start[1:]", "& (typ[1:] == typ[:-1])", CALIBRATION,
           "an I- at a sentence start continues the previous sentence's entity"),
    Mutant("crossfit-own-half", "calibration", "bertlab/calibration.py",
           "other = [self.fits[1].column_bias(), self.fits[0].column_bias()]",
           "other = [self.fits[0].column_bias(), self.fits[1].column_bias()]", CALIBRATION,
           "cross-fitting decodes each half with the offsets fitted on its own tags (in sample)"),
    Mutant("halves-by-sentence", "calibration", "bertlab/calibration.py",
           "return np.array([first_seen[d] % 2 for d in doc_ids], dtype=np.int64)",
           "return np.arange(len(doc_ids), dtype=np.int64) % 2", CALIBRATION,
           "the dev halves alternate sentences, splitting documents between fit and score"),
    Mutant("crossfit-selects-in-sample", "calibration", "bertlab/selection.py",
           'fitted.get("logit_adjusted") if decode == "logit_adjusted" else dev_calibrator)',
           'fitted.get("logit_adjusted") if decode == "logit_adjusted" else fitted.get("calibrated"))',
           ("tests/test_selection.py", "-k", "cross_fitted"),
           'calibration_fit = "crossfit" still selects the epoch by the in-sample dev score'),
    # -- BIO-constrained decoding ------------------------------------------------------------------
    Mutant("bio-opens-with-inside", "constrained", "bertlab/constrained.py",
           "return ~inside, allowed", "return np.ones(len(labels), dtype=bool), allowed", CONSTRAINED,
           "a sentence may open with I-X"),
    Mutant("bio-any-type-continues", "constrained", "bertlab/constrained.py",
           "allowed = ~inside[None, :] | same_type", 'allowed = ~inside[None, :] | (types[:, None] != "")',
           CONSTRAINED, "I-Y may follow B-X (any entity continues any other)"),
    Mutant("bio-ties-higher", "constrained", "bertlab/constrained.py",
           "path[t] = np.argmax(trans[path[t - 1]] + (scores[t] + after[t]))",
           "path[t] = C - 1 - np.argmax((trans[path[t - 1]] + (scores[t] + after[t]))[::-1])", CONSTRAINED,
           "after the first word, a tie goes to the higher label id"),
    Mutant("knn-bio-unsmoothed", "constrained", "bertlab/inference.py",
           "return [np.log(knn.k * p + 1.0) for p in probabilities]",
           "return [np.log(knn.k * p) for p in probabilities]", CONSTRAINED,
           "knn+bio on raw log votes: -inf for every label no neighbour voted for"),
    # -- gradflow --------------------------------------------------------------------------------
    Mutant("#44.8", "gradflow", "bertlab/gradflow/instruments.py",
           'if r["step"] < step]', 'if r["step"] <= step]', GRADFLOW,
           "resume keeps the CSV rows of the step it re-runs"),
    Mutant("resume-epoch-losses", "gradflow", "bertlab/gradflow/instruments.py",
           'if state.get("step") == step - 1:', 'if state.get("step") == step:', GRADFLOW,
           "resume never takes back the epoch's running losses"),
    Mutant("sample-variance", "gradflow", "bertlab/gradflow/instruments.py",
           "return sum((x - mean) ** 2 for x in xs) / len(xs)",
           "return sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)", GRADFLOW,
           "running loss variance with n - 1 (documented: population)"),
    # -- resume ----------------------------------------------------------------------------------
    Mutant("#44.7", "resume", "bertlab/batching.py",
           "seed=epoch_seed(seed, epoch))", "seed=epoch_seed(seed, 0))", RESUME,
           "the same batch order in every epoch"),
    Mutant("resume-restarts-epoch", "resume", "bertlab/train/loop.py",
           "for k in range(progress.micro_batch // accum, len(steps)):", "for k in range(len(steps)):", RESUME,
           "a resumed run redoes the interrupted epoch's finished steps"),
    Mutant("resume-torch-rng", "resume", "bertlab/train/state.py",
           '    torch.set_rng_state(state["torch"])\n', "", RESUME,
           "resume does not restore torch's RNG (dropout masks differ)"),
]
AREAS = list(dict.fromkeys(m.area for m in MUTANTS))


def copy_repository(dest: Path) -> None:
    """The repository's files into ``dest``; LINKED folders as symlinks to the originals."""
    def ignore(folder, names):
        skipped = set(SKIP(folder, names))
        rel = Path(folder).relative_to(REPO)
        return skipped | {n for n in names if (rel / n).as_posix() in LINKED}
    shutil.copytree(REPO, dest, ignore=ignore, dirs_exist_ok=True)
    for rel in LINKED:
        if (REPO / rel).exists():
            (dest / rel).symlink_to(REPO / rel, target_is_directory=True)


def run_pytest(root: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, float]:
    """``pytest -x`` on ``tests`` in ``root``, importing bertlab from there: (outcome, seconds)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
           "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.perf_counter()
    try:
        rc = subprocess.run(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - start
    outcome = {0: "survived", 1: "killed"}.get(rc, f"error (pytest exit code {rc})")
    return outcome, time.perf_counter() - start


def check_imports_from(root: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(root)}
    where = subprocess.run([sys.executable, "-c", "import bertlab; print(bertlab.__file__)"], cwd=root, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not Path(where).resolve().is_relative_to(root.resolve()):
        sys.exit(f"mutants.py: the copy imports bertlab from {where}, not from {root}; is bertlab installed "
                 f"non-editable in this environment?")


def mutate(root: Path, m: Mutant) -> str | None:
    """Plant ``m`` in the copy; returns the file's original text, or None if the snippet is stale."""
    path = root / m.file
    text = path.read_text(encoding="utf-8")
    if text.count(m.original) != 1:
        return None
    path.write_text(text.replace(m.original, m.replacement), encoding="utf-8")
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--area", nargs="+", choices=AREAS, help="only these areas (default: all)")
    parser.add_argument("--name", nargs="+", help="only the mutants of these names (e.g. '#44.5')")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per pytest run (default 600)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated runs")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--check", action="store_true", help="only check that every snippet applies (exit 1 if not)")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if (not args.area or m.area in args.area) and (not args.name or m.name in args.name)]
    if args.list or args.check:
        stale = [m for m in mutants if (REPO / m.file).read_text(encoding="utf-8").count(m.original) != 1]
        for m in mutants:
            print(f"{m.area:12} {m.name:26} {m.file}: {m.bug}" + (" [equivalent]" if m.equivalent else "")
                  + (" [STALE: snippet not exactly once in the file]" if m in stale else ""))
        return 1 if args.check and stale else 0

    results: dict[str, str] = {}
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bertlab-mutants-") as tmp:
        root = Path(tmp) / "repo"
        copy_repository(root)
        check_imports_from(root)
        failing_baselines = set()
        if not args.no_baseline:
            for tests in dict.fromkeys(m.tests for m in mutants):
                outcome, seconds = run_pytest(root, tests, args.timeout)
                print(f"baseline  {' '.join(tests)}: {'passes' if outcome == 'survived' else outcome} "
                      f"({seconds:.0f} s)", flush=True)
                if outcome != "survived":
                    failing_baselines.add(tests)
                    problems.append(f"the unmutated tests {' '.join(tests)} do not pass ({outcome})")
        for m in mutants:
            seconds = None
            original = mutate(root, m)
            if original is None:
                results[m.name] = "stale"
                problems.append(f"{m.name}: its snippet is not exactly once in {m.file}; update the mutant")
            elif m.tests in failing_baselines:
                results[m.name] = "not run (baseline fails)"
                (root / m.file).write_text(original, encoding="utf-8")
            else:
                try:
                    results[m.name], seconds = run_pytest(root, m.tests, args.timeout)
                finally:
                    (root / m.file).write_text(original, encoding="utf-8")
                if results[m.name].startswith("error"):
                    problems.append(f"{m.name}: pytest could not run {' '.join(m.tests)} ({results[m.name]})")
            print(f"{m.area:12} {m.name:26} {results[m.name]}" + (f" ({seconds:.0f} s)" if seconds else ""),
                  flush=True)

    print_table(mutants, results)
    for p in problems:
        print(f"PROBLEM: {p}")
    return 1 if problems else 0


def print_table(mutants: list[Mutant], results: dict[str, str]) -> None:
    """Markdown: per area the judged mutants, those killed, the score and the ones not killed."""
    print("\n| area | mutants | killed | score | not killed |\n|---|---:|---:|---:|---|")
    total_judged = total_killed = 0
    for area in dict.fromkeys(m.area for m in mutants):
        judged = [m for m in mutants if m.area == area and not m.equivalent
                  and results[m.name] in ("killed", "survived", "timeout")]
        killed = [m for m in judged if results[m.name] == "killed"]
        notes = [f"{m.name} ({results[m.name]})" for m in judged if results[m.name] != "killed"]
        notes += [f"{m.name} (equivalent, {results[m.name]})" for m in mutants if m.area == area and m.equivalent]
        notes += [f"{m.name} ({results[m.name]})" for m in mutants if m.area == area and not m.equivalent
                  and results[m.name] not in ("killed", "survived", "timeout")]
        score = f"{len(killed) / len(judged):.0%}" if judged else "-"
        print(f"| {area} | {len(judged)} | {len(killed)} | {score} | {', '.join(notes)} |")
        total_judged, total_killed = total_judged + len(judged), total_killed + len(killed)
    score = f"{total_killed / total_judged:.0%}" if total_judged else "-"
    print(f"| **all** | {total_judged} | {total_killed} | {score} | |")
    survivors = [m for m in mutants if results[m.name] not in ("killed",)]
    if survivors:
        print("\nNot killed:")
        for m in survivors:
            why = f"; equivalent: {m.equivalent}" if m.equivalent else ""
            print(f"- {m.name} ({m.area}, {m.file}): {m.bug} [{results[m.name]}{why}]")


if __name__ == "__main__":
    sys.exit(main())
