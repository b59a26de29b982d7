"""``run_experiment``: run (or resume) a study, from its file to its report.

It reads and checks the study (bertlab.study.spec), writes ``study.json``, trains its runs here
(bertlab.study.work), in ``--workers`` processes (bertlab.study.workers) or, under torchrun, with
every process training each run together, and ends with ``finish_study``: results.jsonl and,
from whichever process finishes last, the report.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import time
from pathlib import Path

from bertlab.results import write_results
from bertlab.study.claims import STALE_AFTER, busy_runs, check_stale_after, study_lock
from bertlab.study.folder import check_snapshot, finished, study_command, study_dir_for, write_study_json
from bertlab.study.schedule import run_cost, shard_runs
from bertlab.study.spec import (DIRECT_BASELINES, StudyError, build_train_config, check_folds, check_models,
                                expand, load_study, select)
from bertlab.study.work import Job, work, work_together
from bertlab.study.workers import run_workers


def run_experiment(name: str | os.PathLike, scale: str = "default", out: str | os.PathLike = "runs",
                   only: list[str] = (), overrides: list[str] = (), callbacks=(),
                   experiments_dir: str | os.PathLike = "experiments", report: bool = True,
                   progress=print, shard: tuple[int, int] | None = None, workers: int = 1,
                   threads: int = 0, stale_after: float = STALE_AFTER, reuse=()) -> Path:
    """Run (or resume) a study; returns its folder (its layout: bertlab.study's docstring).

    ``callbacks`` are passed to every ``train`` call (in addition to the study's own, e.g. the
    gradient-flow recorder); with ``workers > 1`` they must be picklable. ``report=False`` skips
    building report.md at the end.

    Scale-out: ``shard=(i, n)`` trains only part i of n of the runs (``shard_runs``); ``workers``
    processes share the runs on this machine (``run_workers``; ``threads`` torch threads each,
    0 = their share of the cores). Any number of such processes, on any hosts, may work in one
    study folder at once: each run is trained by the process that claims it (``take_claim``), a
    claim whose heartbeat is older than ``stale_after`` seconds may be taken over, and whichever
    process finishes last writes the report (``finish_study``).

    ``reuse``: other study folders; a run whose exact config (every key that changes a result) was
    trained and finished there is copied instead of trained again (``reuse_finished``)."""
    check_stale_after(stale_after)
    study = load_study(name, scale, overrides, experiments_dir)
    runs = select(expand(study), list(only), study)
    if not runs:
        raise StudyError(f"{study.path}: no run matches --only {' '.join(only)}")
    check_models(study, runs)
    for r in runs:  # every config is valid before anything trains
        if r.config.get("model", {}).get("arch") not in DIRECT_BASELINES:
            build_train_config(r.config, f"{study.path} (run {r.run_id})")
    check_folds(study, runs)
    sdir = study_dir_for(study.name, scale, out)
    for r in runs:
        check_snapshot(sdir / r.run_id, r, study)
    position = {r.run_id: i for i, r in enumerate(runs, 1)}
    if shard is not None:
        runs = shard_runs(runs, *shard)
        progress(f"shard {shard[0]}/{shard[1]}: {len(runs)} of the {len(position)} runs")
    for folder in reuse:
        if not Path(folder).is_dir():
            raise StudyError(f"--reuse {folder}: no such study folder")
    job = Job(study=study, sdir=sdir, position=position, callbacks=list(callbacks), reuse=tuple(map(str, reuse)),
              stale_after=stale_after, invocation=f"{socket.gethostname()}:{os.getpid()}:{time.time():.6f}",
              # the longest first, so that workers end together; equal costs keep study order
              runs=sorted(runs, key=lambda r: (-run_cost(r), position[r.run_id])))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun: one run across processes
        if workers > 1:
            raise StudyError(f"--workers {workers} under torchrun: each torchrun process already trains "
                             f"every run together with the others; use one or the other")
        _run_together(job, name, scale, overrides, only, experiments_dir, report, progress)
        return sdir
    sdir.mkdir(parents=True, exist_ok=True)
    unfinished = sum(not finished(sdir / r.run_id, r) for r in runs)
    with study_lock(sdir, stale_after, job.invocation):
        write_study_json(sdir, study, study_command(name, scale, overrides, only, experiments_dir), unfinished > 0)
    if workers > 1 and unfinished > 1:
        run_workers(dataclasses.replace(job, quiet=True), min(workers, unfinished), threads, progress)
    else:
        work(job, progress)
    finish_study(job, report, progress)
    return sdir


def _run_together(job: Job, name, scale, overrides, only, experiments_dir, report, progress) -> None:
    """``run_experiment``'s tail under torchrun: rank 0 keeps the study folder, every rank trains."""
    import torch
    import torch.distributed as dist
    here = not dist.is_initialized()
    if here:  # bertlab.train joins this group instead of making its own for every run
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    main = dist.get_rank() == 0
    try:
        if main:
            job.sdir.mkdir(parents=True, exist_ok=True)
            with study_lock(job.sdir, job.stale_after, job.invocation):
                trains = any(not finished(job.sdir / r.run_id, r) for r in job.runs)
                write_study_json(job.sdir, job.study, study_command(name, scale, overrides, only, experiments_dir),
                                 trains)
        work_together(job, progress if main else (lambda line: None))
        if main:
            finish_study(job, report, progress)
        dist.barrier()
    finally:
        if here:
            dist.destroy_process_group()


def finish_study(job: Job, report: bool = True, progress=print) -> None:
    """Rewrite ``results.jsonl`` from the finished run folders and, unless a live process is still
    training a run of this study (it will do this in turn), the report: so whichever process
    finishes last writes it. ``bertlab report`` rebuilds it at any time."""
    with study_lock(job.sdir, job.stale_after, job.invocation):
        write_results(job.sdir)
        if not report:
            return
        busy = busy_runs(job.sdir, job.stale_after)
        if busy:
            run_id, holder = next(iter(busy.items()))
            progress(f"report: left to the last process to finish ({len(busy)} run(s) still training, "
                     f"e.g. {run_id} on {holder.get('host')} pid {holder.get('pid')}); "
                     f"`bertlab report {job.sdir}` builds it now")
            return
        from bertlab.report import build_report
        progress(f"report: {build_report(job.sdir)}")
