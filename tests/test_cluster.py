"""The documented Slurm recipe on a real Slurm cluster (issue #43): docs/slurm/study_array.sbatch,
the file docs/experiments.md points to, submitted as it is to a one-node cluster on this machine.

The tests marked `cluster` start munged, slurmctld and slurmd (Debian's slurm-wlm and munge) with a
one-node slurm.conf written for this machine, every file of theirs in a temporary folder and on
free ports, and stop them at the end, failed test or not. `make test-cluster` runs them, installing
the two packages with apt-get where they are missing (as root); where Slurm is missing or cannot
start they are skipped with one line saying why. `make test` runs the others only: the docs point
to the script instead of copying it, and the script runs a shard outside Slurm (a stand-in srun).

What the cluster runs: experiments/ce_vs_focal.toml at smoke scale (4 runs of a 1-layer BERT and
DistilBERT), at 10 epochs of 4 steps so that a run trains long enough to be cancelled between two
epochs, as a 4-task array of 1 CPU each (2 at a time on 2 cores)."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from test_scaleout import comparable

from bertlab.results import read_results

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "docs" / "slurm" / "study_array.sbatch"
STUDY, SCALE, SHARDS = "ce_vs_focal", "smoke", 4
FOLDER = f"{STUDY}-{SCALE}"  # the study folder under RUNS
ARGS = "--set train.epochs=10 --set train.max_steps=40"
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo", "srun")
cluster = pytest.mark.cluster


def python_env(**extra) -> dict:
    """This checkout's bertlab, whatever the interpreter has installed; 1 OpenMP thread."""
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    return env | dict(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)


# ---- without Slurm (make test) ----------------------------------------------------------------

def test_the_documented_slurm_script_is_the_tested_one():
    """docs/experiments.md links the script and carries no copy of it (no #SBATCH line of its own)."""
    doc = (REPO / "docs" / "experiments.md").read_text(encoding="utf-8")
    assert "(slurm/study_array.sbatch)" in doc
    assert not re.search(r"^\s*#SBATCH", doc, re.M)
    assert os.access(SCRIPT, os.X_OK)
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_the_script_runs_its_shard_outside_slurm(tmp_path):
    """The script's parameters, checked with a stand-in srun (it runs its command): SHARDS defaults
    to the tasks in the submission, STUDY is required."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "srun").write_text('#!/bin/sh\nexec "$@"\n')
    (bin_ / "srun").chmod(0o755)
    env = python_env(PATH=f"{bin_}:{os.environ['PATH']}", STUDY=STUDY, SCALE=SCALE, ARGS="--list",
                     BERTLAB_DIR=str(REPO), BERTLAB_PYTHON=sys.executable, SLURM_SUBMIT_DIR=str(tmp_path),
                     SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT=str(SHARDS), SLURM_CPUS_PER_TASK="1")
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    direct = subprocess.run([sys.executable, "-m", "bertlab", "experiment", STUDY, "--scale", SCALE, "--list",
                             "--shard", f"1/{SHARDS}"], env=python_env(), cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert done.stdout == direct.stdout and len(done.stdout.split()) == 1

    del env["STUDY"]
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "STUDY: set STUDY to a study name" in done.stderr


# ---- a one-node Slurm cluster (make test-cluster) ---------------------------------------------

def _installed() -> str | None:
    """None once every program is there, installing slurm-wlm and munge when asked (make
    test-cluster sets BERTLAB_INSTALL_SLURM=1) and allowed; else why not, in one line."""
    missing = [p for p in PROGRAMS if not shutil.which(p)]
    if not missing:
        return None
    why = f"Slurm is not installed (no {', '.join(missing)})"
    if os.environ.get("BERTLAB_INSTALL_SLURM") != "1":
        return f"{why}; `make test-cluster` installs slurm-wlm and munge"
    if os.geteuid() != 0:
        return f"{why}, and installing slurm-wlm and munge with apt-get needs root"
    if not shutil.which("apt-get"):
        return f"{why}, and there is no apt-get to install slurm-wlm and munge with"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"]
    for step in ([install], [["apt-get", "update", "-q"], install]):  # the package lists may be missing
        for command in step:
            try:
                done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
            except subprocess.TimeoutExpired:
                done = subprocess.CompletedProcess(command, 1, "", "timed out after 600 s")
            if done.returncode != 0:
                break
        if done.returncode == 0:
            break
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        return f"{why}, and `{' '.join(done.args)}` failed: {last}"
    missing = [p for p in PROGRAMS if not shutil.which(p)]
    return f"slurm-wlm and munge installed, but {', '.join(missing)} still missing" if missing else None


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.exists() else []
    errors = [line for line in lines if "error" in line.lower() or "fatal" in line.lower()]
    return (errors or lines or [f"{path.name} is empty"])[-1].strip()


class Cluster:
    """munged, slurmctld and slurmd in the foreground (children of this process), every file in
    ``root``; ``env`` points the Slurm commands at them."""

    def __init__(self, root: Path):
        self.root, self.daemons, self.socket_dir = root, {}, None
        self.log = root / "log"
        self.jobcomp = self.log / "jobcomp.txt"
        self.env = dict(os.environ, SLURM_CONF=str(root / "slurm.conf"))

    def start(self) -> str | None:
        """Start the daemons and wait for the node to be idle; None, or why Slurm did not start."""
        for d in ("log", "state", "spool", "munge"):
            (self.root / d).mkdir()
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        # munged wants every folder above its socket open to all (pytest's are not): a folder of its own
        self.socket_dir = Path(tempfile.mkdtemp(prefix="bertlab-munge-"))
        self.socket_dir.chmod(0o755)
        sock = self.socket_dir / "socket"
        node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30)
        if node.returncode != 0 or not node.stdout.startswith("NodeName="):
            return f"`slurmd -C` failed: {(node.stderr.strip() or 'no output').splitlines()[-1]}"
        node_line = node.stdout.splitlines()[0]  # NodeName=<host> CPUs=... RealMemory=<from /proc/meminfo>
        host = node_line.split()[0].split("=", 1)[1]
        ctld_port, slurmd_port = _free_ports(2)
        r = self.root
        (r / "slurm.conf").write_text(f"""\
ClusterName=bertlab-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
JobCompType=jobcomp/filetxt
JobCompLoc={self.jobcomp}
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
KillWait=5
MinJobAge=3600
{node_line} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        m = r / "munge"
        self._daemon("munged", ["munged", "-F", f"--key-file={key}", f"--socket={sock}",
                                f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log",
                                f"--seed-file={m}/munged.seed"])
        deadline = time.time() + 15
        while not sock.exists():
            if self.daemons["munged"].poll() is not None or time.time() > deadline:
                return f"munged did not start: {_last_line(self.log / 'munged.out')}"
            time.sleep(0.1)
        self._daemon("slurmctld", ["slurmctld", "-D"])
        self._daemon("slurmd", ["slurmd", "-D"])
        deadline = time.time() + 60
        while True:
            for name, p in self.daemons.items():
                if p.poll() is not None:
                    return f"{name} exited with status {p.returncode}: {_last_line(self.log / f'{name}.out')}"
            state = self.slurm("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
            if state == "idle":
                return None
            if time.time() > deadline:
                why = _last_line(self.log / "slurmd.log")
                return f"the node is {state or 'unknown to slurmctld'} after 60 s: {why}"
            time.sleep(0.5)

    def _daemon(self, name, command):
        with open(self.log / f"{name}.out", "w") as out:
            self.daemons[name] = subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL)

    def stop(self):
        """Cancel every job, wait for the queue to empty, stop the daemons (those still running
        after 20 s are killed), and say what was left behind."""
        left = []
        if "slurmctld" in self.daemons and self.daemons["slurmctld"].poll() is None:
            jobs = self.slurm("squeue", "-h", "-o", "%A", check=False).stdout.split()
            if jobs:
                self.slurm("scancel", *sorted(set(jobs)), check=False)
                deadline = time.time() + 60
                while self.slurm("squeue", "-h", check=False).stdout.strip() and time.time() < deadline:
                    time.sleep(0.5)
                left = self.slurm("squeue", "-h", check=False).stdout.split("\n")
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.daemons.get(name)
            if p is None:
                continue
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
        return [line for line in left if line.strip()]

    def slurm(self, *command, check=True, **kw) -> subprocess.CompletedProcess:
        done = subprocess.run(command, env=kw.pop("env", self.env), capture_output=True, text=True,
                              timeout=kw.pop("timeout", 30), **kw)
        if check:
            assert done.returncode == 0, f"{' '.join(command)}: {done.stderr}"
        return done

    def submit(self, runs: Path, *sbatch_options, **params) -> str:
        """sbatch the documented script as a user would (from a folder holding logs/), the study
        and sizes as parameters; returns the job id."""
        submit_dir = runs.parent / "submit"
        (submit_dir / "logs").mkdir(parents=True, exist_ok=True)
        env = python_env(**dict(SLURM_CONF=self.env["SLURM_CONF"], STUDY=STUDY, SCALE=SCALE, RUNS=str(runs),
                                ARGS=ARGS, BERTLAB_DIR=str(REPO)) | params)
        if Path(sys.executable) != REPO / ".venv" / "bin" / "python":  # the script's default
            env["BERTLAB_PYTHON"] = sys.executable
        done = self.slurm("sbatch", "--parsable", "--cpus-per-task=1", "--job-name=bertlab-test", *sbatch_options,
                          str(SCRIPT), env=env, cwd=submit_dir)
        return done.stdout.strip().split(";")[0]

    def log_of(self, runs: Path, job: str, task: int) -> str:
        path = runs.parent / "submit" / "logs" / f"bertlab-test-{job}_{task}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait(self, job: str, timeout: float = 240) -> dict:
        """Wait with squeue until the job has left the queue; every task's JobState, ExitCode and
        Reason (scontrol show job), by array index."""
        deadline = time.time() + timeout
        while self.slurm("squeue", "-h", "-j", job).stdout.strip():
            if time.time() > deadline:
                pytest.fail(f"job {job} still queued after {timeout:.0f} s:\n"
                            + self.slurm("squeue", "-j", job, check=False).stdout)
            time.sleep(0.5)
        return self.tasks(job)

    def tasks(self, job: str) -> dict:
        tasks = {}
        for line in self.slurm("scontrol", "-o", "show", "job", job).stdout.splitlines():
            f = dict(re.findall(r"(\w+)=(\S*)", line))
            tasks[int(f["ArrayTaskId"])] = {k: f[k] for k in ("JobId", "JobState", "ExitCode", "Reason")}
        return tasks

    def jobcomp_records(self, job: str) -> dict:
        """The jobcomp/filetxt records of the job's tasks, by array index."""
        records = {}
        text = self.jobcomp.read_text() if self.jobcomp.exists() else ""
        for line in text.splitlines():
            f = dict(re.findall(r"(\w+)=(\S*)", line))
            if f.get("ArrayJobId") == job:
                records[int(f["ArrayTaskId"])] = f
        return records


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = _installed()
    if why:
        pytest.skip(why)
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        why = c.start()
        if why:
            pytest.skip(f"Slurm did not start: {why} (logs in {c.log})")
        yield c
    finally:
        left = c.stop()
    assert not left, f"jobs still queued after scancel and 60 s: {left}"


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, slurm):
    """The same study trained by one process (1 thread, as each 1-CPU array task has): the reference."""
    runs = tmp_path_factory.mktemp("one") / "runs"
    done = subprocess.run([sys.executable, "-m", "bertlab", "experiment", STUDY, "--scale", SCALE, "--runs", str(runs),
                           "--threads", "1", "--no-report", *ARGS.split()],
                          env=python_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = read_results(runs / FOLDER / "results.jsonl")
    assert len(rows) == SHARDS
    return rows


def same_rows(sdir: Path, ref: list[dict]):
    rows = read_results(sdir / "results.jsonl")
    ids = [(r["run_id"], r["decode"]) for r in rows]
    assert len(ids) == len(set(ids)) == len(ref), ids  # every run once: nothing duplicated or lost
    assert sorted(ids) == sorted((r["run_id"], r["decode"]) for r in ref)
    assert comparable(rows) == comparable(ref)  # the same numbers, timing and environment aside


@cluster
def test_the_job_array_equals_one_process(slurm, one_process, tmp_path):
    """sbatch --array=0-3 (SHARDS left to the script: the tasks in the submission): every task
    completes, Slurm says so, and results.jsonl holds one process's rows; the last task wrote the report."""
    runs = tmp_path / "runs"
    job = slurm.submit(runs, f"--array=0-{SHARDS - 1}")
    tasks = slurm.wait(job)
    assert sorted(tasks) == list(range(SHARDS))
    for i, t in tasks.items():
        assert (t["JobState"], t["ExitCode"]) == ("COMPLETED", "0:0"), (i, t, slurm.log_of(runs, job, i)[-2000:])
        assert f"shard {i}/{SHARDS}: 1 of the {SHARDS} runs" in slurm.log_of(runs, job, i)
    assert {i: r["JobState"] for i, r in slurm.jobcomp_records(job).items()} == {i: "COMPLETED" for i in tasks}
    sdir = runs / FOLDER
    same_rows(sdir, one_process)
    assert (sdir / "report.md").exists()
    assert not list(sdir.rglob("claim-*.json")) and not list(sdir.glob("lock-*.json"))


@cluster
def test_a_task_cancelled_mid_run_then_resubmitted_completes_the_study(slurm, one_process, tmp_path):
    """scancel of task 1 after its run's first epoch (checkpoint written, 9 epochs to go): Slurm
    records it CANCELLED, the run is left unfinished and unclaimed (SIGTERM released the claim), the
    other tasks complete. Resubmitting index 1 alone (SHARDS=4) resumes the run from its checkpoint:
    the study then holds every run once, with one process's numbers."""
    runs, k = tmp_path / "runs", 1
    sdir = runs / FOLDER
    job = slurm.submit(runs, f"--array=0-{SHARDS - 1}")
    deadline, run = time.time() + 180, None
    while True:
        assert time.time() < deadline, f"task {k} never got past its first epoch:\n" + slurm.log_of(runs, job, k)
        if run is None:
            m = re.search(r"^\[\d+/\d+\] (\S+): training$", slurm.log_of(runs, job, k), re.M)
            run = m and m.group(1)
        if run and (sdir / run / "checkpoint.pt").exists():
            break
        time.sleep(0.05)
    slurm.slurm("scancel", f"{job}_{k}")
    tasks = slurm.wait(job)
    assert tasks[k]["JobState"] == "CANCELLED", (tasks[k], slurm.log_of(runs, job, k)[-2000:])
    assert all(t["JobState"] == "COMPLETED" for i, t in tasks.items() if i != k), tasks
    assert slurm.jobcomp_records(job)[k]["JobState"] == "CANCELLED"
    assert not (sdir / run / "metrics.json").exists(), "the run finished before scancel reached it"
    assert (sdir / run / "checkpoint.pt").exists() and not list(sdir.rglob("claim-*.json"))
    assert len(read_results(sdir / "results.jsonl")) == SHARDS - 1

    again = slurm.submit(runs, f"--array={k}", SHARDS=str(SHARDS))
    tasks = slurm.wait(again)
    assert tasks == {k: tasks[k]} and (tasks[k]["JobState"], tasks[k]["ExitCode"]) == ("COMPLETED", "0:0"), tasks
    assert f"{run}: resuming" in slurm.log_of(runs, again, k)
    timing = json.loads((sdir / run / "timing.json").read_text())
    assert timing["sessions"] == 2 and timing["resumed"]
    same_rows(sdir, one_process)
    assert not list(sdir.rglob("claim-*.json"))


@cluster
def test_a_failing_task_is_recorded_failed_by_slurm(slurm, tmp_path):
    """--array=3-4 with SHARDS=4 (and --list, which trains nothing): task 3 completes, task 4 asks
    for --shard 4/4, which bertlab refuses with status 2, and Slurm records that task FAILED with
    exit code 2, in `scontrol show job` and in the jobcomp file."""
    runs = tmp_path / "runs"
    job = slurm.submit(runs, "--array=3-4", SHARDS=str(SHARDS), ARGS="--list")
    tasks = slurm.wait(job)
    assert (tasks[3]["JobState"], tasks[3]["ExitCode"]) == ("COMPLETED", "0:0"), tasks
    assert tasks[4] | {"JobId": None} == {"JobId": None, "JobState": "FAILED", "ExitCode": "2:0",
                                          "Reason": "NonZeroExitCode"}, tasks
    record = slurm.jobcomp_records(job)[4]
    assert (record["JobState"], record["ExitCode"]) == ("FAILED", "2:0")
    assert "bertlab experiment: --shard '4/4': expected I/N" in slurm.log_of(runs, job, 4)
    assert not runs.exists()
