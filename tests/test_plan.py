"""bertlab plan: the MDD a design has, from a pilot's pooled variance, equals the one the pilot's own
report prints for its own design; other designs follow the stated formulas."""
import json
import math

from conftest import write_study
from test_report import make_cv_study

from bertlab import stats
from bertlab.study import load_study
from bertlab.plan import design_mdd, fold_sizes, main, read_pilot
from bertlab.report import build_report

CV_STUDY = """
[study]
name = "tiny_cv"
baseline = { "sampler.name" = "atl", decode = "argmax" }
folds = 3

[base.data]
name = "maccrobat"
max_documents = 12

[base.model]
preset = "minilm"

[sweep]
"sampler.name" = ["atl", "btl"]
"train.seed" = [0, 1]

[report]
primary = "f1_micro"
target_difference = 0.001
"""


def test_plan_reproduces_the_pilots_own_mdd_and_says_when_a_design_cannot_detect_its_target(tmp_path, capsys):
    sdir, _ = make_cv_study(tmp_path, folds=3, seeds=(0, 1), report={"primary": "f1_micro"})
    build_report(sdir)
    mdd = next(c["mdd"] for c in json.loads((sdir / "report.json").read_text())["comparisons"]
               if c["metric"] == "f1_micro")
    assert fold_sizes(12, 3) == (4, 7)  # 4 test, 1 dev, 7 train: the synthetic study's folds
    pilot = read_pilot(sdir, "f1_micro")
    assert design_mdd(pilot, 2, 3, 12, 0) == mdd
    # more folds: the per-fold variance scales with 1 / n_test, n_test / n_train and J follow the design
    se, df = stats.corrected_resampled_se(pilot.fold_variance * 4 / 2.4, 5, 5, 2.4 / (12 - 2.4 - 1))
    assert design_mdd(pilot, 5, 5, 12, 0) == stats.detectable_difference_se(se, df)
    d = write_study(tmp_path, CV_STUDY, name="tiny_cv")
    assert main(["tiny_cv", "--experiments", str(d), "--pilot", str(sdir)]) == 0
    out = capsys.readouterr().out
    assert f"MDD of this design (80% power, alpha 0.05): {mdd:.4f}  -- above the target 0.001" in out
    assert "no design in the table does" in out
    assert main(["tiny_cv", "--experiments", str(d), "--pilot", str(sdir), "--target", "0.9"]) == 0
    assert "the cheapest: 1 seed(s) x 3 folds" in capsys.readouterr().out
    # a study that declares its alpha (e.g. two primaries sharing 0.05) is planned at it, unless --alpha says
    (tmp_path / "strict").mkdir()
    strict = write_study(tmp_path / "strict", CV_STUDY.replace("[report]", "[report]\nalpha = 0.025"), name="tiny_cv")
    assert main(["tiny_cv", "--experiments", str(strict), "--pilot", str(sdir)]) == 0
    assert f"(80% power, alpha 0.025): {design_mdd(pilot, 2, 3, 12, 0, 0.025):.4f}" in capsys.readouterr().out
    assert main(["tiny_cv", "--experiments", str(strict), "--pilot", str(sdir), "--alpha", "0.05"]) == 0
    assert f"(80% power, alpha 0.05): {mdd:.4f}" in capsys.readouterr().out


def test_plan_of_a_fixed_split_equals_the_committed_reports_mdd(capsys):
    """btl_focal's committed report pools its macro-F1 comparisons (3 seeds x 20 documents); plan
    rebuilds the same variance of the mean from the components, so the same MDD."""
    from conftest import REPO
    folder = REPO / "docs" / "results" / "btl_focal"
    data = json.loads((folder / "report.json").read_text())
    mdds = {c["mdd"] for c in data["comparisons"] if c["metric"] == "f1_macro" and not c["excluded"]
            and c.get("ms") and c.get("seeds_crossed") == 3 and not c.get("same_as")}
    pilot = read_pilot(folder, "f1_macro")
    assert len(mdds) == 1 and math.isclose(design_mdd(pilot, 3, 0, 200, 20), mdds.pop(), rel_tol=1e-9)
    study = load_study("btl_focal", experiments_dir=REPO / "experiments")
    assert study.folds == 0


def test_plan_without_a_pilot_is_one_line(tmp_path, capsys):
    d = write_study(tmp_path, CV_STUDY, name="tiny_cv")
    assert main(["tiny_cv", "--experiments", str(d), "--pilot", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bertlab plan: ") and "cannot read the pilot's report" in err and err.count("\n") == 1
