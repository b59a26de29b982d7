"""Scale-out of studies (bertlab.study, issue #18): --shard, --workers, claims on run folders.

The promise checked here: who trains a run (one process, 2 workers, 3 shards, a worker killed and
the study re-run) changes nothing in its results, and no run is trained twice or lost."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import TINY_STUDY, write_study

from bertlab.results import read_results
from bertlab.study import expand, load_study, run_experiment
from bertlab.study.claims import STALE_AFTER, read_claim, take_claim
from bertlab.study.folder import study_dir_for
from bertlab.study.schedule import shard_runs, worker_places
from bertlab.study.work import RunError

QUIET = dict(progress=lambda s: None, report=False)
TIMING = {"wall_seconds", "train_seconds", "seconds_per_epoch", "inference_tokens_per_s", "resumed", "env", "time_split",
          "cpu_share"}


def comparable(rows) -> dict:
    """results rows keyed by (run, decode), timing fields and the environment aside."""
    return {(r["run_id"], r["decode"]): {k: v for k, v in r.items() if k not in TIMING} for r in rows}


@contextmanager
def torch_threads(n):
    """CPU results are bit-identical only at equal thread counts (a BLAS reduction is split by
    thread; 1 vs 2 threads moves the weights by ~1e-11), so every process here uses one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny study (4 runs), and its results trained by one process: the reference."""
    root = tmp_path_factory.mktemp("scaleout")
    d = write_study(root)
    with torch_threads(1):
        sdir = run_experiment("tiny", out=root / "ref", experiments_dir=d, **QUIET)
    return d, comparable(read_results(sdir / "results.jsonl"))


# ---- the partition -----------------------------------------------------------------------------

def test_shards_partition_the_runs_by_cost(tmp_path):
    d = write_study(tmp_path, TINY_STUDY.replace('"train.seed" = [0, 1]', '"train.seed" = [0, 1, 2]'))
    study = load_study("tiny", experiments_dir=d)
    runs = expand(study)
    parts = [shard_runs(runs, i, 4) for i in range(4)]
    ids = [r.run_id for part in parts for r in part]
    assert sorted(ids) == sorted(r.run_id for r in runs)  # every run in exactly one part
    assert [len(p) for p in parts] == [2, 2, 1, 1]  # equal costs: dealt round-robin in study order
    assert [r.run_id for r in parts[0]] == ["loss=ce__seed=0", "loss=focal__seed=1"]
    assert parts == [shard_runs(expand(load_study("tiny", experiments_dir=d)), i, 4) for i in range(4)]

    # unequal costs (epochs 4, 2, 1 over 2 parts): longest first, each to the lighter part
    # (round-robin would give 4 + 1 against 2)
    text = TINY_STUDY.replace('"loss.name" = ["ce", "focal"]', '"train.epochs" = [4, 2, 1]')
    text = text.replace('"train.seed" = [0, 1]', '"train.seed" = [0]')
    text = text.replace('baseline = { "loss.name" = "ce", decode = "argmax" }', "")
    runs = expand(load_study("tiny", experiments_dir=write_study(tmp_path, text)))
    parts = [shard_runs(runs, i, 2) for i in range(2)]
    assert [[r.run_id for r in p] for p in parts] == [["epochs=4__seed=0"],
                                                      ["epochs=2__seed=0", "epochs=1__seed=0"]]


# ---- claims -------------------------------------------------------------------------------------

def test_claim_is_exclusive_and_stale_claims_are_taken_over(tmp_path):
    a = take_claim(tmp_path)
    assert a is not None and take_claim(tmp_path) is None  # held by a live process (this one)
    assert read_claim(tmp_path)[1]["pid"] == os.getpid()
    a.release()
    b = take_claim(tmp_path)
    assert b is not None and b.generation == 0
    b.release()

    # another host's claim: live while its heartbeat is fresh, taken over once it is stale
    other = {"host": "node-17", "pid": 1, "invocation": "x", "since": time.time(), "heartbeat": time.time()}
    (tmp_path / "claim-0.json").write_text(json.dumps(other))
    assert take_claim(tmp_path, stale_after=60) is None
    other["heartbeat"] -= 61
    (tmp_path / "claim-0.json").write_text(json.dumps(other))
    c = take_claim(tmp_path, stale_after=60)
    assert c.generation == 1 and c.took_over["host"] == "node-17"
    assert [p.name for p in tmp_path.glob("claim-*.json")] == ["claim-1.json"]

    # the old holder learns at its next heartbeat that it lost the run
    (tmp_path / "claim-2.json").write_text(json.dumps(other | {"heartbeat": time.time()}))
    assert c.beat() is False and c.lost
    c.release()
    (tmp_path / "claim-2.json").unlink()

    # this host's claim whose process is gone is taken over at once, heartbeat or not
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket
    (tmp_path / "claim-0.json").write_text(json.dumps(
        {"host": socket.gethostname(), "pid": dead.pid, "heartbeat": time.time()}))
    assert take_claim(tmp_path, stale_after=STALE_AFTER) is not None


def test_of_many_racing_claimants_exactly_one_wins(tmp_path):
    stale = {"host": "node-17", "pid": 1, "heartbeat": 0.0}
    for case in ("fresh", "takeover"):
        folder = tmp_path / case
        folder.mkdir()
        if case == "takeover":
            (folder / "claim-0.json").write_text(json.dumps(stale))
        go, won = threading.Barrier(16), []

        def claim():
            go.wait()
            c = take_claim(folder, stale_after=60)
            if c is not None:
                won.append(c)

        threads = [threading.Thread(target=claim) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, case


# ---- the same results however the study is split ----------------------------------------------

def test_three_shards_give_the_same_results(tiny, tmp_path):
    d, ref = tiny
    out = tmp_path / "runs"
    log = []
    with torch_threads(1):
        for i in range(3):
            run_experiment("tiny", out=out, experiments_dir=d, shard=(i, 3), progress=log.append, report=False)
    assert "shard 0/3: 2 of the 4 runs" in log and "shard 2/3: 1 of the 4 runs" in log
    sdir = study_dir_for("tiny", "default", out)
    assert comparable(read_results(sdir / "results.jsonl")) == ref
    assert not list(sdir.rglob("claim-*.json")) and not list(sdir.glob("lock-*.json"))


def test_two_workers_give_the_same_results(tiny, tmp_path):
    d, ref = tiny
    log = []
    sdir = run_experiment("tiny", out=tmp_path, experiments_dir=d, workers=2, threads=1, progress=log.append)
    assert comparable(read_results(sdir / "results.jsonl")) == ref
    assert (sdir / "report.md").exists()
    # both workers trained, and the log shows both
    assert {line[:4] for line in log if line.endswith(": training")} == {"[w0]", "[w1]"}
    envs = [json.loads((p / "run.json").read_text())["env"] for p in sdir.glob("loss=*")]
    assert {e["torch_threads"] for e in envs} == {1}


def test_workers_split_the_cores():
    cores = sorted(os.sched_getaffinity(0))
    places = worker_places(2)
    assert [p["cores"] for p in places] == [cores[:len(cores) // 2], cores[len(cores) // 2:]] or len(cores) == 1
    assert all(p["threads"] == max(1, len(cores) // 2) and p["gpu"] is None for p in places)
    assert [p["threads"] for p in worker_places(3, threads=4)] == [4, 4, 4]
    assert all(len(p["cores"]) == 1 for p in worker_places(len(cores) + 1))  # more workers than cores


class KillOnce:
    """A training callback that SIGKILLs its worker at step 2 of a run, in the first worker only
    (a marker file decides), after the step-1 checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def on_batch(self, step, model, batch, logits, loss):
        if step == 2:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return
            os.kill(os.getpid(), signal.SIGKILL)


def test_killed_worker_is_resumed_with_nothing_duplicated_or_lost(tiny, tmp_path):
    """2 workers on the seed-0 runs; one is SIGKILLed mid-run (its claim, checkpoint and timing
    stay behind), the other finishes its run. Re-running takes the dead worker's run over at once
    (same host, process gone) and resumes it: the results equal the one-process study's."""
    d, ref = tiny
    ref = {k: v for k, v in ref.items() if k[0].endswith("seed=0")}
    out = tmp_path / "runs"
    with pytest.raises(RunError, match=r"\[w[01]\] pid \d+ was killed by SIGKILL while training loss="):
        run_experiment("tiny", out=out, experiments_dir=d, only=["seed=0"], workers=2, threads=1,
                       callbacks=[KillOnce(tmp_path / "killed")], **QUIET)
    sdir = study_dir_for("tiny", "default", out)
    killed = [p for p in sdir.glob("loss=*") if not (p / "metrics.json").exists()]
    assert len(killed) == 1 and (killed[0] / "checkpoint.pt").exists() and list(killed[0].glob("claim-*.json"))
    assert json.loads((killed[0] / "timing.json").read_text())["sessions"] == 1  # written before the kill
    done_before = {p: p.stat().st_mtime_ns for p in sdir.glob("loss=*/metrics.json")}
    assert len(done_before) == 1

    log = []
    with torch_threads(1):
        run_experiment("tiny", out=out, experiments_dir=d, only=["seed=0"], workers=2, progress=log.append,
                       report=False)
    position = 1 if killed[0].name.startswith("loss=ce") else 2
    assert any(line.startswith(f"[{position}/2] {killed[0].name}: resuming (taken over from") for line in log)
    assert {p: p.stat().st_mtime_ns for p in done_before} == done_before  # the finished run is not re-run
    lines = (sdir / "results.jsonl").read_text().splitlines()
    assert len(lines) == len(ref) == 2  # nothing duplicated, nothing lost
    assert comparable(read_results(sdir / "results.jsonl")) == ref
    timing = json.loads((killed[0] / "timing.json").read_text())
    assert timing["sessions"] == 2 and timing["resumed"]  # the killed session counts
    assert not list(sdir.rglob("claim-*.json"))


def test_a_run_folder_another_training_writes_is_skipped_then_resumed(tiny, tmp_path):
    """A `bertlab train --out` into a study's run folder holds its lock (bertlab.files.folder_lock):
    the study skips that run, saying who holds it, trains the others, and trains it on a re-run."""
    from bertlab.files import folder_lock
    d, ref = tiny
    ref = {k: v for k, v in ref.items() if k[0].endswith("seed=0")}
    out, log = tmp_path / "runs", []
    held = study_dir_for("tiny", "default", out) / "loss=focal__seed=0"
    with torch_threads(1), folder_lock(held):
        sdir = run_experiment("tiny", out=out, experiments_dir=d, only=["seed=0"], progress=log.append, report=False)
    assert any(line.startswith(f"[2/2] loss=focal__seed=0: {held}: pid {os.getpid()} on ") and
               line.endswith("is writing this folder; wait for it to end, or use another folder; skipped")
               for line in log), log
    assert [r["run_id"] for r in read_results(sdir / "results.jsonl")] == ["loss=ce__seed=0"]
    with torch_threads(1):
        run_experiment("tiny", out=out, experiments_dir=d, only=["seed=0"], **QUIET)
    assert comparable(read_results(sdir / "results.jsonl")) == ref


STUDY_PARENT = """
import sys
sys.path.insert(0, {tests!r})
from _train_script import Sleep
from bertlab.study import run_experiment
if __name__ == "__main__":
    run_experiment("tiny", out={out!r}, experiments_dir={d!r}, only=["seed=0"], workers=2, threads=1,
                   callbacks=[Sleep(60.0)], report=False, progress=lambda line: print(line, flush=True))
"""


def test_workers_die_with_a_killed_study_and_a_rerun_finishes_it(tiny, tmp_path):
    """SIGKILL of the study process (`--workers 2`) used to leave its workers training on as
    orphans: a re-run found their runs held and left the report "to the last process", and each
    orphan then died at its next message to the dead parent, its run's row missing from
    results.jsonl. Now the workers stop with their parent, mid-run, releasing their claims, and a
    re-run trains both runs: the results equal the one-process study's and the report is written."""
    from bertlab.study.claims import _pid_alive
    d, ref = tiny
    ref = {k: v for k, v in ref.items() if k[0].endswith("seed=0")}
    out = tmp_path / "runs"
    script = tmp_path / "study.py"
    script.write_text(STUDY_PARENT.format(tests=str(Path(__file__).parent), out=str(out), d=str(d)))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(parent.stdout), daemon=True)
    reader.start()
    deadline = time.time() + 240
    while sum(line.endswith(": training\n") for line in lines) < 2 and parent.poll() is None:
        assert time.time() < deadline, lines
        time.sleep(0.2)
    assert parent.poll() is None, lines  # both workers are mid-run (3 steps of 60 s each)
    # "[w0] pid 123: ..." when a worker starts (other lines may name a pid too: a lost claim race
    # prints "[w1] [1/2] RUN: being trained by HOST pid 123, skipped")
    workers = [int(m.group(1)) for m in (re.match(r"\[w\d+\] pid (\d+):", line) for line in lines) if m]
    assert len(workers) == 2
    parent.kill()
    parent.wait()
    # each step sleeps 60 s: an orphan would live at least to the end of its first step, ~60 s from
    # now; a worker that dies with its parent is gone in seconds, but up to ~20 s on 2 cores loaded
    # by a training study and a parallel test suite (a 15 s bound beside a 20 s step failed there)
    deadline = time.time() + 45
    while any(_pid_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_pid_alive(pid) for pid in workers), "the workers outlived the study process"
    sdir = study_dir_for("tiny", "default", out)
    assert not list(sdir.glob("*/metrics.json"))  # stopped mid-run, as their parent was
    assert not list(sdir.rglob("claim-*.json"))  # and released their claims on the way out

    log = []
    with torch_threads(1):
        run_experiment("tiny", out=out, experiments_dir=d, only=["seed=0"], progress=log.append)
    assert sum(line.endswith((": training", ": resuming")) for line in log) == 2, log  # none "skipped"
    assert not any("left to the last" in line for line in log)
    assert comparable(read_results(sdir / "results.jsonl")) == ref
    assert (sdir / "report.md").exists()

@pytest.mark.parametrize("first", ["in_main", "at_exit"])
def test_a_sigterm_while_the_interpreter_exits_prints_no_traceback(tmp_path, first):
    """CI caught a worker whose parent-death SIGTERM landed while its interpreter ran torch's exit
    handlers: SystemExit raised inside one, printed as "Exception ignored ... Traceback". A worker
    leaving (``leave_quietly``), or one already stopping on a first SIGTERM, ignores the next. Here
    the SIGTERM is sent from an atexit handler, after the main code left (at_exit) or after a first
    SIGTERM stopped it (in_main); without the fix both print the traceback."""
    script = f"""
import atexit, os, signal, sys, time
from bertlab.study.workers import exit_on_sigterm, leave_quietly
def late():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)  # the handler runs here, if any is installed
    print("atexit finished")
atexit.register(late)
signal.signal(signal.SIGTERM, exit_on_sigterm)
try:
    if {first == "in_main"!r}:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
finally:
    leave_quietly() if {first == "at_exit"!r} else None
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert "Traceback" not in done.stderr and "atexit finished" in done.stdout, done.stderr
    assert done.returncode == (143 if first == "in_main" else 0)


def test_a_killed_study_leaves_no_traceback_and_no_leaked_semaphores(tiny, tmp_path):
    """Issue #41: SIGKILL the study process while its 2 workers train. Each worker used to print a
    BrokenPipeError traceback at its next message to the dead parent, and the resource tracker
    "5 leaked semaphore objects" (the stop Event's). Now the workers stop quietly at that message,
    releasing their claims, and there is nothing to leak."""
    d, _ = tiny
    out, err = open(tmp_path / "out.txt", "w"), open(tmp_path / "err.txt", "w")
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "bertlab", "experiment", "tiny", "--experiments", str(d),
                             "--runs", str(tmp_path / "runs"), "--workers", "2", "--threads", "1", "--no-report"],
                            stdout=out, stderr=err, cwd=repo, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(repo)})
    deadline = time.time() + 240
    while ": training" not in (tmp_path / "out.txt").read_text() and time.time() < deadline:
        time.sleep(0.2)
    workers = [int(m.group(1)) for m in (re.match(r"\[w\d+\] pid (\d+):", w)
                                         for w in (tmp_path / "out.txt").read_text().splitlines()) if m]
    assert len(workers) == 2, (tmp_path / "out.txt").read_text()
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL

    def alive(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    while any(alive(pid) for pid in workers) and time.time() < deadline:  # orphans: end of their current run
        time.sleep(0.2)
    assert not any(alive(pid) for pid in workers)
    time.sleep(1)  # the resource tracker speaks once its last client is gone
    text = (tmp_path / "err.txt").read_text()
    assert "Traceback" not in text and "BrokenPipeError" not in text and "leaked" not in text, text
    assert not list((tmp_path / "runs").rglob("claim-*.json"))


def test_command_line_shard_list_and_errors(tiny, capsys):
    from bertlab.study.cli import main
    d, _ = tiny
    assert main(["tiny", "--experiments", str(d), "--list", "--shard", "0/3"]) == 0
    assert capsys.readouterr().out.split() == ["loss=ce__seed=0", "loss=focal__seed=1"]
    for bad in (["--shard", "3/3"], ["--shard", "1of3"], ["--workers", "0"]):
        assert main(["tiny", "--experiments", str(d), *bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("bertlab experiment: --") and err.count("\n") == 1, err



@pytest.mark.parametrize("seconds", ["-1", "0", "nan", "inf", "0.5"])
def test_stale_after_must_be_a_sensible_number_of_seconds(tiny, tmp_path, capsys, seconds):
    """--stale-after -1, 0 or nan used to be taken: every claim then looked stale, so processes
    took each other's runs over, and the heartbeat (every stale_after / 4 s) spun. Refused now as
    --workers 0 is, before anything is read or written; run_experiment refuses it too."""
    from bertlab.study.cli import main
    from bertlab.study.spec import StudyError
    d, _ = tiny
    out = tmp_path / "runs"
    assert main(["tiny", "--experiments", str(d), "--out", str(out), "--only", "seed=0", "--stale-after", seconds]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bertlab experiment: --stale-after {float(seconds):g}: expected a number of seconds >= 1 ")
    assert err.count("\n") == 1 and not out.exists()
    with pytest.raises(StudyError, match="--stale-after"):
        run_experiment("tiny", out=out, experiments_dir=d, stale_after=float(seconds), **QUIET)


# ---- one run across processes: the study under torchrun ---------------------------------------

NO_DROPOUT = TINY_STUDY.replace("intermediate_size = 32 }", "intermediate_size = 32, hidden_dropout_prob = 0.0, "
                                                            "attention_probs_dropout_prob = 0.0 }")


def test_study_under_torchrun_equals_one_process(tmp_path):
    """`torchrun --nproc_per_node 2 -m bertlab experiment`: both processes train each run together
    (data parallel), rank 0 keeps the folder. Without dropout (each rank has its own dropout stream)
    the scores equal one process's; the losses agree to float rounding (all_reduce sums in another
    order)."""
    d = write_study(tmp_path, NO_DROPOUT)
    args = ["tiny", "--experiments", str(d), "--only", "seed=0", "--no-report"]
    with torch_threads(1):
        ref = run_experiment("tiny", out=tmp_path / "one", experiments_dir=d, only=["seed=0"], **QUIET)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                           "-m", "bertlab", "experiment", *args, "--out", str(tmp_path / "ddp")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("training with 2 processes") == 2  # rank 0 speaks for both
    sdir = study_dir_for("tiny", "default", tmp_path / "ddp")
    rows, one = read_results(sdir / "results.jsonl"), read_results(ref / "results.jsonl")
    assert len(rows) == len(one) == 2 and not list(sdir.rglob("claim-*.json"))
    for a, b in zip(sorted(rows, key=lambda r: r["run_id"]), sorted(one, key=lambda r: r["run_id"])):
        for key in ("run_id", "f1_micro", "f1_macro", "precision_micro", "recall_micro", "per_type"):
            assert a[key] == b[key], key
        assert a["env"]["world_size"] == 2
    metrics = json.loads((sdir / "loss=ce__seed=0" / "metrics.json").read_text())
    assert metrics["world_size"] == 2


CV_STUDY = TINY_STUDY.replace('baseline = { "loss.name" = "ce", decode = "argmax" }',
                              'baseline = { "loss.name" = "ce", decode = "argmax" }\nfolds = 3').replace(
    "max_documents = 2", "max_documents = 6").replace('"train.seed" = [0, 1]', '"train.seed" = [0]')


def test_folds_are_an_axis_like_any_other_shards_equal_one_process(tmp_path):
    """[study] folds = 3: the runs are (loss × fold × seed), `--shard` deals the folds like any axis,
    and three shards leave the same results rows and the same pooled report as one process."""
    d = write_study(tmp_path, CV_STUDY)
    runs = expand(load_study("tiny", experiments_dir=d))
    assert [r.run_id for r in runs] == [f"loss={l}__fold={k}__seed=0" for l in ("ce", "focal") for k in range(3)]
    assert {r.config["data"]["fold"] for r in runs} == {0, 1, 2}
    assert {(r.config["data"]["folds"], r.config["data"]["fold_seed"]) for r in runs} == {(3, 0)}
    reports = []
    with torch_threads(1):
        one = run_experiment("tiny", out=tmp_path / "one", experiments_dir=d, progress=lambda s: None)
        for i in range(3):
            run_experiment("tiny", out=tmp_path / "shards", experiments_dir=d, shard=(i, 3), progress=lambda s: None)
    shards = study_dir_for("tiny", "default", tmp_path / "shards")
    assert comparable(read_results(shards / "results.jsonl")) == comparable(read_results(one / "results.jsonl"))
    for sdir in (one, shards):
        data = json.loads((sdir / "report.json").read_text())
        reports.append(({k: {m: v[m] for m in ("f1_micro", "f1_macro")} for k, v in data["variants"].items()},
                        [{k: c[k] for k in ("variant", "metric", "diff", "ci", "p_sd", "cv")} for c in data["comparisons"]]))
    assert reports[0] == reports[1]
    rows = read_results(one / "results.jsonl")
    tested = sorted(d for r in rows if r["decode"] == "argmax" and r["axes"]["loss.name"] == "ce"
                    for d in {json.loads(line)["doc_id"] for line in (one / r["predictions"]).read_text().splitlines()})
    assert len(tested) == 6 == len(set(tested))  # every document tested once over the folds
    assert all(r["fold"]["documents"] == {"train": 3, "dev": 1, "test": 2} for r in rows)
