"""What a failed start, a diverging run or changed inputs must not destroy: each test provokes the
fault first (bad data under --no-resume, a NaN injected into the weights, a data file edited
between kill and resume) and checks the one-line error and what is left on disk."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bertlab.callbacks import Callback
from bertlab.config import ConfigError, load_config
from bertlab.train import NonFiniteLossError, train
from bertlab.train.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from _train_script import tiny_config  # noqa: E402


def quiet(line: str) -> None:
    pass


class Stop(Exception):
    pass


class StopAfter(Callback):
    """Interrupts training after ``step`` optimisation steps (a kill, without the subprocess)."""

    def __init__(self, step):
        self.step = step

    def after_optimizer_step(self, step, model, optimizer):
        if step == self.step:
            raise Stop


def finished_run(tmp_path, **sections):
    cfg = tiny_config(tmp_path / "data", **sections)
    out = tmp_path / "run"
    train(load_config(cfg), out, resume=False, log=quiet)
    return cfg, out


def test_no_resume_with_bad_data_leaves_the_finished_run_whole(tmp_path, capsys):
    cfg, out = finished_run(tmp_path, eval={"decode": ["argmax", "knn"], "knn_k": 3})
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    bad = tmp_path / "bad.tsv"
    bad.write_text("fever\tO\nchest\tI-Sign\n\n")  # an orphan I- tag: the reader refuses it
    config = tmp_path / "bad.toml"
    config.write_text(f'[data]\ntrain_file = "{bad}"\n[model]\npreset = "minilm"\n'
                      f'[model.overrides]\nhidden_size = 16\nnum_hidden_layers = 1\nnum_attention_heads = 2\n'
                      f'intermediate_size = 32\n[train]\nprogress = "off"\n')
    assert main(["--config", str(config), "--out", str(out), "--no-resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.tsv" in err[0]
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert after == before  # nothing deleted, nothing rewritten


def test_starting_over_leaves_no_file_of_the_old_run(tmp_path):
    cfg, out = finished_run(tmp_path, eval={"decode": ["argmax", "knn"], "knn_k": 3})
    assert (out / "predictions_test_knn.jsonl").exists() and (out / "best-knn").exists()
    cfg["eval"] = {"decode": ["argmax"]}
    train(load_config(cfg), out, resume=False, log=quiet)
    assert not (out / "predictions_test_knn.jsonl").exists() and not (out / "best-knn").exists()
    events = [json.loads(l)["event"] for l in (out / "log.jsonl").read_text().splitlines()]
    assert events.count("start") == 1  # the old run's log lines are gone too


def test_starting_over_with_best_a_symlink_removes_the_link_not_its_target(tmp_path, capsys):
    """Issue #41: `best` a symlink to a model kept elsewhere; `--no-resume` died with "Cannot call
    rmtree on a symbolic link" (no file named) after deleting half the old run. The link goes, the
    model it pointed at stays, the new run trains."""
    cfg, out = finished_run(tmp_path)
    kept = tmp_path / "kept_model"
    (out / "best").rename(kept)
    (out / "best").symlink_to(kept, target_is_directory=True)
    before = {p.name: p.read_bytes() for p in kept.iterdir()}
    assert main(["--config", str(write_toml(cfg, tmp_path / "tiny.toml")), "--out", str(out), "--no-resume"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == before
    assert (out / "best").is_dir() and not (out / "best").is_symlink() and (out / "metrics.json").exists()


class PoisonAtEpochEnd(Callback):
    """NaN in one weight after the last step of epoch 1 (the epoch's losses are already read)."""

    def __init__(self, steps_per_epoch):
        self.last_step = 2 * steps_per_epoch
        self.saved = None

    def after_optimizer_step(self, step, model, optimizer):
        if step == self.last_step:
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("nan")

    def on_epoch_end(self, epoch, record):
        pass


def test_a_nan_model_never_becomes_best(tmp_path):
    cfg = tiny_config(tmp_path / "data", train={"epochs": 3, "checkpoint_every": 0})
    cfg["data"]["dev_file"] = ""  # without a dev set every epoch "improves": the old failure
    cfg["data"]["test_file"] = ""
    out = tmp_path / "run"
    steps = 4  # tiny config: 4 optimisation steps an epoch (grad_accum 2)
    with pytest.raises(NonFiniteLossError, match=r"non-finite at the end of epoch 1 \(step 8\)"):
        train(load_config(cfg), out, callbacks=[PoisonAtEpochEnd(steps)], resume=False, log=quiet)
    from safetensors.torch import load_file
    best = load_file(str(out / "best" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in best.values())
    meta = json.loads((out / "best" / "bertlab_train.json").read_text())
    assert meta["epoch"] == 0


@pytest.mark.parametrize("change, what", [
    (lambda text: text + "aspirin\tB-Drug\n\n", "training data"),
    (lambda text: text + "rash\tB-Rash\n\n", "label list"),
])
def test_resume_refuses_changed_inputs(tmp_path, change, what):
    cfg = tiny_config(tmp_path / "data", train={"checkpoint_every": 1})
    out = tmp_path / "run"
    with pytest.raises(Stop):
        train(load_config(cfg), out, callbacks=[StopAfter(2)], resume=False, log=quiet)
    assert (out / "checkpoint.pt").exists()
    train_file = Path(cfg["data"]["train_file"])
    train_file.write_text(change(train_file.read_text()))
    with pytest.raises(ConfigError, match=f"the (.*, )?{what}(, .*)? changed since this run was checkpointed"):
        train(load_config(cfg), out, resume=True, log=quiet)


def test_config_problems_are_found_before_anything_is_written(tmp_path, capsys):
    cfg = tiny_config(tmp_path / "data")
    for key, value, message in [
        ("optim", {"lr": float("nan")}, "[optim] lr: expected a finite number"),
        ("model", {"preset": "minlm"}, "[model] preset: expected one of"),
        ("model", {"overrides": {"hidden_sise": 8}}, "[model] overrides: 'hidden_sise' is not a BertConfig field"),
        ("data", {"dev_file": str(tmp_path / "missing.tsv")}, "[data] dev_file: "),
        # issue #41: each of these was a traceback from numpy, torch or the corpus loader
        ("data", {"name": "nope", "train_file": "", "dev_file": "", "test_file": ""},
         "[data] name: expected a bundled corpus (maccrobat, "),
        ("model", {"overrides": {"hidden_size": 16, "num_attention_heads": 3}},
         "[model] overrides: num_attention_heads = 3 does not divide hidden_size = 16"),
        ("model", {"overrides": {"hidden_size": -16}}, "[model] overrides: hidden_size = -16: expected a positive integer"),
        ("train", {"seed": 10**20}, "[train] seed: expected a value from 0 to 4294967295, got 100000000000000000000"),
        ("train", {"seed": -5}, "[train] seed: expected a value from 0 to 4294967295, got -5"),
        ("optim", {"betas": [0.9]}, "[optim] betas: expected two numbers in [0, 1)"),
    ]:
        bad = json.loads(json.dumps(cfg))
        bad[key].update(value)
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                           .replace(")", r"\)")):
            load_config(bad)
    with pytest.raises(ConfigError, match=r"^--set optim.betas=\[2.0,-1\]: \[optim\] betas: expected two numbers in "):
        load_config(cfg, ["optim.betas=[2.0,-1]"])


def test_a_config_that_is_not_text_is_one_line_naming_it(tmp_path, capsys):
    """`bertlab train --config model.safetensors` (a binary file): one line naming the file, not
    a UnicodeDecodeError about "position 40"."""
    binary = tmp_path / "weights.toml"
    binary.write_bytes(b"\x80\x04\x95" + bytes(range(256)))
    assert main(["--config", str(binary), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"bertlab train: {binary}: not a text file (byte 0x80 at offset 0 is not UTF-8); "
                   f"expected a TOML config"]
    assert not (tmp_path / "run").exists()


def test_paths_in_a_config_file_are_relative_to_it(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path / "data")
    folder = tmp_path / "configs"
    folder.mkdir()
    text = "[data]\n" + "".join(f'{k} = "../data/{Path(cfg["data"][k]).name}"\n'
                                for k in ("train_file", "dev_file", "test_file"))
    (folder / "run.toml").write_text(text)
    monkeypatch.chdir(tmp_path / "data")  # anywhere but the config's folder
    loaded = load_config(folder / "run.toml")
    assert Path(loaded.data.train_file) == (tmp_path / "data" / "train.tsv").resolve()


def test_a_full_disk_is_one_line_naming_the_file_and_the_old_checkpoint_survives(tmp_path, capsys, monkeypatch):
    """ENOSPC while writing checkpoint.pt (torch reports it as a RuntimeError raised while handling
    the OSError): one line with the file and "No space left on device", status 2, and the previous
    checkpoint byte for byte."""
    import errno

    import bertlab.train.state
    cfg = tiny_config(tmp_path / "data", train={"checkpoint_every": 1, "max_steps": 3, "epochs": 1})
    out = tmp_path / "run"
    with pytest.raises(Stop):
        train(load_config(cfg), out, callbacks=[StopAfter(2)], resume=False, log=quiet)
    before = (out / "checkpoint.pt").read_bytes()
    real = bertlab.train.state.write_with

    def full_disk(path, write):
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
    monkeypatch.setattr(bertlab.train.state, "write_with", full_disk)
    text = "\n".join(f"[{s}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in vals.items() if not isinstance(v, dict))
                     for s, vals in cfg.items()) + "\n[model.overrides]\n" + "\n".join(
        f"{k} = {v}" for k, v in cfg["model"]["overrides"].items()) + "\n"
    config = tmp_path / "tiny.toml"
    config.write_text(text)
    assert main(["--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"bertlab train: {out / 'checkpoint.pt'}: No space left on device"
    assert not any("Traceback" in line or "enforce fail" in line for line in err)
    monkeypatch.setattr(bertlab.train.state, "write_with", real)
    assert (out / "checkpoint.pt").read_bytes() == before


# ---- one run folder, one writer (issue #41) ---------------------------------------------------

def config_file(tmp_path, cfg) -> Path:
    from bertlab.results import toml_dumps
    path = tmp_path / "own.toml"
    path.write_text(toml_dumps(cfg))
    return path


class SecondTraining(Callback):
    """At step 1, runs a second `bertlab train` (a process of its own) and keeps what it did."""

    def __init__(self, argv):
        self.argv, self.done = argv, None

    def after_optimizer_step(self, step, model, optimizer):
        if step == 1 and self.done is None:
            env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
            self.done = subprocess.run([sys.executable, "-m", "bertlab", "train", *self.argv], env=env,
                                       capture_output=True, text=True, timeout=300)


def test_a_second_training_into_a_busy_folder_is_refused_naming_the_holder(tmp_path):
    """Two trainings into one --out used to swap results (the second printed the first's scores as
    its own, log.jsonl interleaved both): the second now stops before touching anything, in one
    line naming the first (pid, host), status 2; the first finishes as if alone."""
    cfg = tiny_config(tmp_path / "data")
    config, out = config_file(tmp_path, cfg), tmp_path / "same"
    second = SecondTraining(["--config", str(config), "--set", "optim.lr=5e-4", "--out", str(out)])
    metrics = train(load_config(cfg), out, callbacks=[second], resume=False, log=quiet)
    err = second.done.stderr.strip().splitlines()
    assert second.done.returncode == 2, second.done.stdout + second.done.stderr
    assert len(err) == 1 and err[0].startswith(f"bertlab train: {out}: pid {os.getpid()} on {socket.gethostname()}, since ")
    assert "is writing this folder" in err[0] and "wrote" not in second.done.stdout
    events = [json.loads(l)["event"] for l in (out / "log.jsonl").read_text().splitlines()]
    assert events.count("start") == 1 and events.count("end") == 1  # one run's log, not two
    assert json.loads((out / "metrics.json").read_text())["config"]["optim"]["lr"] == cfg["optim"]["lr"]
    assert metrics["config"]["optim"]["lr"] == cfg["optim"]["lr"]
    assert not (out / ".lock").exists()  # released; and a resume of the finished run takes it again
    assert train(load_config(cfg), out, log=quiet)["test"] == metrics["test"]


def test_a_killed_holder_leaves_no_lock_behind(tmp_path):
    """The kernel drops the lock with its process: after a SIGKILL the next process takes it at
    once, although the killed holder's .lock file is still there."""
    from bertlab.files import FolderBusy, folder_lock
    code = ("import sys, time; from bertlab.files import folder_lock\n"
            "with folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env={"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PATH": "/usr/bin:/bin"})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusy, match=rf"{tmp_path}: pid {holder.pid} on .* is writing this folder"):
            with folder_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / ".lock").exists()
    with folder_lock(tmp_path):
        assert str(os.getpid()) in (tmp_path / ".lock").read_text()
    assert not (tmp_path / ".lock").exists()


def test_set_overrides_get_their_own_default_folder(tmp_path, monkeypatch):
    """Without --out, `--set` variants of one config used to share runs/train/<config>; each now
    gets <config>-<hash of the overrides>, the same for the same overrides in any order or spelling,
    and the folder without overrides is unchanged."""
    import bertlab.train.cli
    config = config_file(tmp_path, tiny_config(tmp_path / "data"))
    folders = []
    monkeypatch.setattr(bertlab.train.cli, "train", lambda cfg, out, **kw: folders.append(Path(out)) or {})
    monkeypatch.chdir(tmp_path)
    for sets in ([], ["train.epochs=6"], ["optim.lr=5e-4"], ["optim.lr = 0.0005"],
                 ["optim.lr=5e-4", "train.epochs=6"], ["train.epochs=6", "optim.lr=5e-4"]):
        assert main(["--config", str(config), *[a for s in sets for a in ("--set", s)]]) == 0
    plain, epochs, lr, lr_again, both, both_again = folders
    assert plain == Path("runs/train/own")
    assert len({plain, epochs, lr, both}) == 4 and lr == lr_again and both == both_again
    assert all(f.parent == plain.parent and f.name.startswith("own-") for f in (epochs, lr, both))


def test_a_linked_best_folder_is_replaced_not_its_target(tmp_path):
    """`best/` replaced by a link to another folder (a thesis, say): training on used to save the
    model into that folder and delete what it held. Now the link itself is replaced, on resume and
    when starting over; the folder it pointed to is untouched."""
    cfg = tiny_config(tmp_path / "data", train={"checkpoint_every": 1})
    cfg["data"]["dev_file"] = cfg["data"]["test_file"] = ""  # without a dev set every epoch saves best/
    out = tmp_path / "run"
    with pytest.raises(Stop):
        train(load_config(cfg), out, callbacks=[StopAfter(6)], resume=False, log=quiet)  # in epoch 1
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.tex").write_text("\\chapter{Results}\n")
    for resume in (True, False):
        if (out / "best").is_symlink():
            (out / "best").unlink()
        shutil.rmtree(out / "best", ignore_errors=True)
        (out / "best").symlink_to(victim, target_is_directory=True)
        train(load_config(cfg), out, resume=resume, log=quiet)
        assert sorted(p.name for p in victim.iterdir()) == ["thesis.tex"], resume
        assert (victim / "thesis.tex").read_text() == "\\chapter{Results}\n"
        assert not (out / "best").is_symlink() and (out / "best" / "model.safetensors").exists()

def write_toml(cfg: dict, path: Path) -> Path:
    """A config dict as a TOML file (sections of plain values, ``[model.overrides]`` a sub-table)."""
    lines = []
    for section, values in cfg.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items() if not isinstance(v, dict)]
        for k, v in values.items():
            if isinstance(v, dict):
                lines += [f"[{section}.{k}]"] + [f"{a} = {json.dumps(b)}" for a, b in v.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_damaged_checkpoint_or_vocabulary_is_one_line_naming_the_file(tmp_path, capsys, minilm_path):
    """A truncated model.safetensors in [model] path, and a vocab.txt without [CLS] in [model]
    tokenizer: one line naming the file (was: a ValueError traceback, and a KeyError '[CLS]')."""
    from bertlab.checkpoint import build_model, save_pretrained
    from bertlab.tokenization import Tokenizer
    cfg = tiny_config(tmp_path / "data")
    folder = tmp_path / "model"
    save_pretrained(build_model("minilm", ["O", "B-Sign", "I-Sign", "B-Drug"], **{
        k: v for k, v in cfg["model"]["overrides"].items()}), Tokenizer.from_pretrained(minilm_path), folder)
    config = write_toml(cfg, tmp_path / "tiny.toml")
    out = tmp_path / "run"
    pretrained = ["--set", 'model.preset=""', "--set", "model.overrides={}"]
    for name in ("tokenizer.json", "vocab.txt"):  # a folder without tokenizer files: as before, one line
        (folder / name).rename(tmp_path / name)
    assert main(["--config", str(config), "--out", str(out), "--set", f"model.path={json.dumps(str(folder))}",
                 *pretrained]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"bertlab train: [model] {folder}: the checkpoint has no tokenizer files; set [model] tokenizer to a "
        f"folder with vocab.txt or tokenizer.json")
    for name in ("tokenizer.json", "vocab.txt"):
        (tmp_path / name).rename(folder / name)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["--config", str(config), "--out", str(out), "--set", f"model.path={json.dumps(str(folder))}",
                 *pretrained]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"bertlab train: [model] {weights}: cannot read safetensors file")
    vocab = tmp_path / "vocab"
    vocab.mkdir()
    (vocab / "vocab.txt").write_text("".join(line + "\n" for line in (minilm_path / "vocab.txt").read_text().split("\n")[:-1]
                                             if line != "[CLS]"))
    assert main(["--config", str(config), "--out", str(out), "--set", f"model.tokenizer={json.dumps(str(vocab))}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"bertlab train: [model] {vocab / 'vocab.txt'}: the classification token '[CLS]' is not in "
                   f"the vocabulary"]
    assert not out.exists()


def test_a_gradflow_folder_outside_the_run_folder_is_refused(tmp_path, capsys):
    """`[gradflow] out = "../../gf"` wrote the gradient-flow files two folders above --out; now one
    line naming the config, status 2, nothing written."""
    cfg = tiny_config(tmp_path / "data")
    config = write_toml(cfg, tmp_path / "tiny.toml")
    config.write_text(config.read_text() + '[gradflow]\nout = "../../gf"\n')
    out = tmp_path / "a" / "run"
    assert main(["--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"bertlab train: {config}: [gradflow] out = '../../gf': expected a folder name inside the run "
                   f"folder (no '/', '\\' or '..'), e.g. \"gradflow\""]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "tiny.toml"]


class CtrlCAt(Callback):
    """Ctrl-C after optimisation step ``step`` (SIGINT arrives as a KeyboardInterrupt)."""

    def __init__(self, step):
        self.step = step

    def after_optimizer_step(self, step, model, optimizer):
        if step == self.step:
            raise KeyboardInterrupt


def test_ctrl_c_says_where_training_stopped_and_how_to_go_on(tmp_path, capsys, monkeypatch):
    """Issue #41: Ctrl-C was a 20-line KeyboardInterrupt traceback. Now one line: the step reached,
    the step of the checkpoint a re-run resumes from, and that re-running resumes; status 130.
    The library raises TrainingInterrupted, still a KeyboardInterrupt."""
    from bertlab.callbacks import CallbackList
    from bertlab.train import TrainingInterrupted
    cfg = tiny_config(tmp_path / "data", train={"checkpoint_every": 2})
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt) as e:  # during step 2: one step done, no checkpoint yet
        train(load_config(cfg), out, callbacks=[CtrlCAt(2)], resume=False, log=quiet)
    assert isinstance(e.value, TrainingInterrupted) and (e.value.step, e.value.checkpoint_step) == (1, None)
    assert str(e.value) == f"interrupted after step 1 of 8 in {out}; no checkpoint was written yet, so " \
                           f"re-running the same command starts over"
    config = write_toml(cfg, tmp_path / "tiny.toml")
    real = CallbackList.after_optimizer_step
    monkeypatch.setattr(CallbackList, "after_optimizer_step", lambda self, step, model, optimizer: (
        CtrlCAt(6).after_optimizer_step(step, model, optimizer), real(self, step, model, optimizer)))
    assert main(["--config", str(config), "--out", str(out), "--no-resume"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"bertlab train: interrupted after step 5 of 8; checkpoint at step 4 "
                       f"({out / 'checkpoint.pt'}); re-run the same command to resume")
    assert not any("Traceback" in line or "KeyboardInterrupt" in line for line in err)
    monkeypatch.setattr(CallbackList, "after_optimizer_step", real)
    assert main(["--config", str(config), "--out", str(out)]) == 0  # and it does resume
    assert "resuming" in capsys.readouterr().err and (out / "metrics.json").exists()
