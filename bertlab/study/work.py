"""Training a study's runs: the loop each study process (and each of its workers) runs.

``work`` goes through the job's runs in order, skips finished ones and those a live process holds
(bertlab.study.claims), copies a run whose exact config finished in another study folder
(``reuse_finished``, --reuse), and trains the others (``train_run``: ``bertlab.train``, or a direct
baseline's fit, bertlab.baselines.direct). ``work_together`` is the same loop under torchrun, every
process training each run together. Who trains a run does not change its numbers: its seed and
config are the study's, not the process's.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from bertlab.environment import environment
from bertlab.errors import BertlabError, one_line
from bertlab.files import FolderBusy, remove_path, write_bytes, write_text
from bertlab.results import read_json, toml_dumps, write_results
from bertlab.study.claims import (Claim, ClaimLost, heartbeat, heartbeat_period, read_claim, study_lock,
                                  take_claim)
from bertlab.study.folder import check_snapshot, finished, flatten, snapshot_diff, write_json
from bertlab.study.spec import (DIRECT_BASELINES, NON_RESULT_KEYS, Run, Study, StudyError,
                                build_train_config)


@dataclass
class Job:
    """What a study process (or each of its workers) needs to train its share of the runs."""
    study: Study
    runs: list                  # Run, in the order to try them
    sdir: Path
    position: dict              # run_id -> its number among the selected runs, for "[3/18]"
    callbacks: list
    stale_after: float
    invocation: str             # host:pid:time of the command; its workers share it
    quiet: bool = False         # no tqdm bars (several workers share one terminal)
    reuse: tuple = ()           # study folders whose finished runs of the same config are copied (--reuse)


class RunError(BertlabError, RuntimeError):
    """Training one run of a study failed; the message names the run folder and the cause."""


@contextlib.contextmanager
def run_session(rdir: Path, claim: Claim, stale_after: float):
    """This process's turn at a run: beats its claim's heartbeat and keeps ``timing.json`` current
    (``wall_seconds`` summed over sessions, ``sessions``, ``resumed``) from the start and at every
    beat, so a session that is killed still counts, up to its last beat."""
    before = read_json(rdir / "timing.json", {"wall_seconds": 0.0, "sessions": 0})
    resumed = any(rdir.glob("checkpoint*")) or before.get("resumed", False)
    t0 = time.perf_counter()

    def write_timing():
        write_json(rdir / "timing.json", {"wall_seconds": before["wall_seconds"] + time.perf_counter() - t0,
                                          "sessions": before["sessions"] + 1, "resumed": resumed})

    def beat():
        if claim.beat():
            write_timing()

    write_timing()
    try:
        with heartbeat(heartbeat_period(stale_after), beat):
            yield
    finally:
        if not claim.lost:
            write_timing()


class StopIfClaimLost:
    """A training callback: stop when another process has taken this run over, so that two
    processes never keep training one run."""

    def __init__(self, claim: Claim):
        self.claim = claim

    def after_optimizer_step(self, step, model, optimizer):
        """Raise ``ClaimLost`` once the claim is lost (seen at the last heartbeat)."""
        if self.claim.lost:
            raise ClaimLost(f"another process took this run over at step {step} (its claim "
                            f"{self.claim.path.name} looked stale); stopped here")


def work(job: Job, progress=print, stop=lambda: False, event=None) -> None:
    """Train the job's runs in order, skipping finished ones and those a live process holds: the
    loop of the study command and of each of its workers. ``event(kind, ...)`` hears
    ``("start", run_id)`` and ``("done", run_id, seconds)``."""
    env = environment()
    spent: list[float] = []  # wall seconds of the runs trained here, for the ETA
    for run in job.runs:
        if stop():
            return
        rdir = job.sdir / run.run_id
        tag = f"[{job.position[run.run_id]}/{len(job.position)}] {run.run_id}"
        if finished(rdir, run):
            progress(f"{tag}: finished, skipped")
            continue
        claim = take_claim(rdir, job.stale_after, job.invocation)
        if claim is None:
            holder = (read_claim(rdir) or (0, {}))[1]
            if holder.get("invocation") != job.invocation:  # a sibling worker's run is no news
                progress(f"{tag}: being trained by {holder.get('host')} pid {holder.get('pid')}, skipped")
            continue
        try:
            if finished(rdir, run):  # finished between the check and the claim
                progress(f"{tag}: finished, skipped")
                continue
            if spent and event is None:
                left = sum(1 for r in job.runs if not finished(job.sdir / r.run_id, r))
                progress(f"    {len(spent)} run(s) took {sum(spent) / 60:.1f} min; about "
                         f"{sum(spent) / len(spent) * left / 60:.0f} min left for {left} run(s)")
            resumed = any(rdir.glob("checkpoint*"))
            source = None if resumed else reuse_finished(job, run, rdir)
            if source is not None:
                progress(f"{tag}: the same config finished in {source}: copied, not trained")
                with study_lock(job.sdir, job.stale_after, job.invocation):
                    write_results(job.sdir)
                continue
            was = claim.took_over
            progress(f"{tag}: {'resuming' if resumed else 'training'}"
                     + (f" (taken over from {was.get('host')} pid {was.get('pid')})" if was else ""))
            if event:
                event("start", run.run_id)
            t0 = time.perf_counter()
            try:
                train_run(job, run, claim, env)
            except (ClaimLost, FolderBusy) as e:  # FolderBusy: e.g. a `bertlab train --out` into the run
                progress(f"{tag}: {e}; skipped")
                continue
            spent.append(time.perf_counter() - t0)
            if event:
                event("done", run.run_id, spent[-1])
        finally:
            claim.release()
        with study_lock(job.sdir, job.stale_after, job.invocation):
            write_results(job.sdir)


def _result_config(config: dict, source: str) -> dict:
    """A run's config as the flat dict of everything that can change its result: the full
    TrainConfig (defaults filled in, so a key left out equals its default written out), or the raw
    config of a direct baseline; without the keys that only change logging and checkpointing."""
    if config.get("model", {}).get("arch") in DIRECT_BASELINES:
        flat = flatten(config)
    else:
        flat = flatten(dataclasses.asdict(build_train_config(config, source)))
    return {k: v for k, v in flat.items() if k not in NON_RESULT_KEYS}


def reuse_finished(job: Job, run: Run, rdir: Path) -> Path | None:
    """If a finished run folder in one of ``job.reuse`` was trained with this run's config (equal
    on every key that changes a result, ``_result_config``), copy it into ``rdir`` and return it;
    else None. The copy is what training this run again would give: training is deterministic on
    one machine for a config and seed (tests/test_experiment.py). Not for a study that records the
    gradient flow (its runs carry instruments a plain run lacks). The run folder keeps this study's
    identity (run.json, config.toml) and says where it came from (``reused_from``: the source study
    folder's name and run id, e.g. ``btl_focal/sampler=atl__seed=0``, never a machine's path); model folders
    are hard links where the file system allows, the resume checkpoint and claims are left out.
    metrics.json is written last, so an interrupted copy is an unfinished run, copied again."""
    import shutil
    if not job.reuse or job.study.gradflow is not None:
        return None
    mine = _result_config(run.config, f"{job.study.path} (run {run.run_id})")
    for folder in job.reuse:
        for src in sorted(Path(folder).iterdir()):
            if src.resolve() == rdir.resolve() or not (src / "metrics.json").exists() \
                    or not (src / "config.toml").exists():
                continue
            try:
                theirs = _result_config(tomllib.loads((src / "config.toml").read_text(encoding="utf-8")), str(src))
            except (StudyError, ValueError, TypeError, tomllib.TOMLDecodeError):
                continue
            if theirs != mine:
                continue

            def link_or_copy(a, b):
                try:
                    os.link(a, b)
                except OSError:
                    shutil.copy2(a, b)

            rdir.mkdir(parents=True, exist_ok=True)
            for path in sorted(src.iterdir()):  # metrics.json, the mark of a finished run, comes last
                if path.name.startswith(("claim-", "checkpoint", ".", "run.json", "config.toml", "metrics.json")):
                    continue
                if path.is_dir():
                    remove_path(rdir / path.name)
                    shutil.copytree(path, rdir / path.name, copy_function=link_or_copy)
                else:
                    write_bytes(rdir / path.name, path.read_bytes())
            write_text(rdir / "config.toml", toml_dumps(run.config))
            write_json(rdir / "run.json", {**read_json(src / "run.json", {}), "study": job.study.name,
                                           "scale": job.study.scale, "run_id": run.run_id, "axes": run.axes,
                                           "reused_from": f"{src.parent.name}/{src.name}"})
            write_bytes(rdir / "metrics.json", (src / "metrics.json").read_bytes())
            return src
    return None


def train_run(job: Job, run: Run, claim: Claim, env: dict, together: bool = False) -> None:
    """Train (or resume) one claimed run in its folder. A failure is a RunError naming the folder.
    ``together``: under torchrun, as rank 0 of the processes that train it (``work_together``)."""
    study, rdir = job.study, job.sdir / run.run_id
    check_snapshot(rdir, run, study)
    if not (rdir / "config.toml").exists():
        write_text(rdir / "config.toml", toml_dumps(run.config))
    write_json(rdir / "run.json", {"study": study.name, "scale": study.scale, "run_id": run.run_id,
                                    "axes": run.axes, "env": env})
    with run_session(rdir, claim, job.stale_after):
        # one rank alone must not stop: the others would wait for it forever
        _fit(job, run, rdir, [] if together else [StopIfClaimLost(claim)])
    if not (rdir / "metrics.json").exists():
        raise RunError(f"{rdir}: training returned but wrote no metrics.json")
    if snapshot_diff(rdir, run):  # continued under a changed train.epochs: the folder now holds this config
        write_text(rdir / "config.toml", toml_dumps(run.config))
    precision = read_json(rdir / "metrics.json", {}).get("precision")
    if precision:  # the precision the run resolved ("auto" -> fp32 / bf16) belongs with its environment
        write_json(rdir / "run.json", {**read_json(rdir / "run.json", {}), "precision": precision})


def _fit(job: Job, run: Run, rdir: Path, callbacks: list, main: bool = True) -> None:
    """The training itself: bertlab.train, or a direct baseline's fit (``main`` process only)."""
    try:
        if run.config.get("model", {}).get("arch") in DIRECT_BASELINES:
            if main:  # the metrics.json, the mark of a finished run, is written after the predictions
                from bertlab.baselines.direct import fit_direct
                write_json(rdir / "metrics.json", fit_direct(run.config, rdir))
            return
        from bertlab.train import train
        cfg = build_train_config(run.config, f"{job.study.path} (run {run.run_id})")
        if job.quiet and cfg.train.progress == "auto":
            cfg.train = dataclasses.replace(cfg.train, progress="off")
        callbacks = list(job.callbacks) + list(callbacks)
        recorder = _gradflow_recorder(job.study, rdir) if job.study.gradflow is not None and main else None
        if recorder is not None:
            callbacks.append(recorder)
        train(cfg, rdir, callbacks=callbacks, resume=True)
        if recorder is not None:
            _finish_gradflow(recorder, run.run_id)
    except (StudyError, ClaimLost, FolderBusy):
        raise
    except Exception as e:
        raise RunError(f"{rdir}: {one_line(e)}") from e


def work_together(job: Job, progress=print) -> None:
    """``work`` under torchrun (``WORLD_SIZE > 1``, e.g. ``torchrun --nnodes 2 ...``): all the
    processes train each run together, data parallel (bertlab.train); rank 0 claims the runs,
    keeps their files and tells the others, over a gloo group, whether a run is theirs to train."""
    import torch.distributed as dist
    group = dist.new_group(backend="gloo")
    main = dist.get_rank() == 0
    env = environment() | {"world_size": dist.get_world_size()}
    for run in job.runs:
        rdir = job.sdir / run.run_id
        tag = f"[{job.position[run.run_id]}/{len(job.position)}] {run.run_id}"
        claim = None
        if main and finished(rdir, run):
            progress(f"{tag}: finished, skipped")
        elif main:
            claim = take_claim(rdir, job.stale_after, job.invocation)
            if claim is None:
                holder = (read_claim(rdir) or (0, {}))[1]
                progress(f"{tag}: being trained by {holder.get('host')} pid {holder.get('pid')}, skipped")
        go = [claim is not None]
        dist.broadcast_object_list(go, src=0, group=group)
        if not go[0]:
            continue
        try:
            if main:
                progress(f"{tag}: {'resuming' if any(rdir.glob('checkpoint*')) else 'training'} "
                         f"with {dist.get_world_size()} processes")
                train_run(job, run, claim, env, together=True)
            else:
                _fit(job, run, rdir, [], main=False)
        except FolderBusy as e:  # every rank hears it from bertlab.train: all skip the run together
            progress(f"{tag}: {e}; skipped")
            continue
        finally:
            if claim is not None:
                claim.release()
        if main:
            with study_lock(job.sdir, job.stale_after, job.invocation):
                write_results(job.sdir)


def _gradflow_recorder(study: Study, rdir: Path):
    from bertlab.gradflow import GradFlowConfig, GradFlowRecorder
    try:
        cfg = GradFlowConfig.from_dict(dict(study.gradflow), source=str(study.path))
    except (ValueError, TypeError) as e:
        raise StudyError(str(e)) from None
    return GradFlowRecorder.from_config(cfg, rdir)


def _finish_gradflow(recorder, run_id: str) -> None:
    from bertlab.gradflow import write_figures
    recorder.close()
    write_figures(recorder.rows, recorder.out_dir, name=run_id)
