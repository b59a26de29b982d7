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
from bertlab.train import ConfigError, NonFiniteLossError, load_config, main, train

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
    ]:
        bad = json.loads(json.dumps(cfg))
        bad[key].update(value)
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_config(bad)


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

    import bertlab.resume
    cfg = tiny_config(tmp_path / "data", train={"checkpoint_every": 1, "max_steps": 3, "epochs": 1})
    out = tmp_path / "run"
    with pytest.raises(Stop):
        train(load_config(cfg), out, callbacks=[StopAfter(2)], resume=False, log=quiet)
    before = (out / "checkpoint.pt").read_bytes()
    real = bertlab.resume.write_with

    def full_disk(path, write):
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
    monkeypatch.setattr(bertlab.resume, "write_with", full_disk)
    text = "\n".join(f"[{s}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in vals.items() if not isinstance(v, dict))
                     for s, vals in cfg.items()) + "\n[model.overrides]\n" + "\n".join(
        f"{k} = {v}" for k, v in cfg["model"]["overrides"].items()) + "\n"
    config = tmp_path / "tiny.toml"
    config.write_text(text)
    assert main(["--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"bertlab train: {out / 'checkpoint.pt'}: No space left on device"
    assert not any("Traceback" in line or "enforce fail" in line for line in err)
    monkeypatch.setattr(bertlab.resume, "write_with", real)
    assert (out / "checkpoint.pt").read_bytes() == before


# ---- one run folder, one writer (issue #41) ---------------------------------------------------

def config_file(tmp_path, cfg) -> Path:
    from bertlab.experiment import toml_dumps
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
    import bertlab.train
    config = config_file(tmp_path, tiny_config(tmp_path / "data"))
    folders = []
    monkeypatch.setattr(bertlab.train, "train", lambda cfg, out, **kw: folders.append(Path(out)) or {})
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
