"""``--workers N``: N processes on this machine share one study, each taking the next unclaimed run.

``run_workers`` starts them (spawned: fresh interpreters, no inherited torch threads or CUDA
state), each pinned to its place (bertlab.study.schedule.worker_places), and prints their progress
prefixed ``[wI]``. A worker dies with its parent however the parent dies, releasing its claim on
the way out, so a re-run resumes at once.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

from bertlab.errors import one_line
from bertlab.study.folder import finished
from bertlab.study.schedule import worker_places
from bertlab.study.work import Job, RunError, work


def run_workers(job: Job, n: int, threads: int = 0, progress=print) -> None:
    """Train ``job`` with ``n`` worker processes on this machine, each taking the next unclaimed
    run (``work``), and print their progress prefixed ``[wI]``. Each is pinned to its place
    (``worker_places``). If one fails or dies, the others finish their current run and stop,
    then RunError says what happened; re-running resumes."""
    import multiprocessing
    from multiprocessing.connection import wait
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no inherited torch threads or CUDA state
    # "stop after your current run", as one shared byte: an Event is five named semaphores, which
    # the resource tracker reports as leaked when this process is killed (SIGKILL, OOM killer)
    stop = ctx.RawValue("b", 0)
    procs, readers, current, skipped = [], {}, {}, set()
    failures: list[str] = []
    spent: list[float] = []
    try:
        for i, place in enumerate(worker_places(n, threads)):
            reader, writer = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker_main, args=(job, i, place, writer, stop), name=f"bertlab-w{i}")
            with _environ(CUDA_VISIBLE_DEVICES=place["gpu"]):
                proc.start()
            writer.close()
            procs.append(proc)
            readers[reader] = i
            progress(f"[w{i}] pid {proc.pid}: {place['text']}")
        while readers:
            for reader in wait(list(readers)):
                i = readers[reader]
                try:
                    kind, *msg = reader.recv()
                except (EOFError, OSError):  # the worker has exited, or died
                    del readers[reader]
                    procs[i].join()
                    code = procs[i].exitcode
                    if code != 0 and not any(f.startswith(f"[w{i}]") for f in failures):
                        how = (f"was killed by {signal.Signals(-code).name}" if code < 0
                               else f"exited with status {code}")
                        failures.append(f"[w{i}] pid {procs[i].pid} {how}"
                                        + (f" while training {current[i]}" if i in current else ""))
                        stop.value = 1
                    continue
                if kind == "line":
                    if msg[0].endswith("skipped"):  # every worker passes every run: say it once
                        if msg[0] in skipped:
                            continue
                        skipped.add(msg[0])
                    progress(f"[w{i}] {msg[0]}")
                elif kind == "start":
                    current[i] = msg[0]
                elif kind == "done":
                    current.pop(i, None)
                    spent.append(msg[1])
                    left = sum(1 for r in job.runs if not finished(job.sdir / r.run_id, r))
                    busy = max(1, sum(p.is_alive() for p in procs))
                    progress(f"    {len(spent)} run(s) done here, {left} left: about "
                             f"{sum(spent) / len(spent) * left / min(busy, max(left, 1)) / 60:.0f} min "
                             f"with {busy} worker(s)")
                elif kind == "failed":
                    failures.append(f"[w{i}] {msg[0]}")
                    stop.value = 1
    except BaseException:  # Ctrl-C (the workers get it too) or an error here: let them stop cleanly
        stop.value = 1
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.terminate()
        raise
    if failures:
        raise RunError(f"{'; '.join(failures)}; the other workers stopped after their current run; "
                       f"re-run the same command to resume")


@contextlib.contextmanager
def _environ(**values):
    """Set (or, for None, leave alone) environment variables while the block runs: a spawned
    worker inherits them from birth, before torch reads them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class ParentGone(Exception):
    """The study process a worker reports to has gone (killed): the worker stops quietly."""


def _worker_main(job: Job, index: int, place: dict, conn, stop) -> None:
    """One worker of ``run_workers``: pin to its place, then ``work`` on the shared job, sending
    progress to the parent through ``conn``. ``stop``: a shared byte the parent sets to 1. When
    the parent is gone (its end of ``conn`` closed), the worker stops at its next message without
    a BrokenPipeError traceback; its run keeps its checkpoint, and the claim is released."""
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    _die_with_parent()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, place["cores"])
    import torch
    torch.set_num_threads(place["threads"])

    def send(*message) -> None:
        try:
            conn.send(message)
        except (BrokenPipeError, ConnectionResetError, EOFError):
            raise ParentGone from None

    try:
        work(job, progress=lambda line: send("line", line), stop=lambda: bool(stop.value), event=send)
    except KeyboardInterrupt:
        sys.exit(130)
    except ParentGone:
        sys.exit(1)
    except Exception as e:
        try:
            send("failed", one_line(e))
        except ParentGone:
            pass
        sys.exit(2)
    finally:
        leave_quietly()


def leave_quietly() -> None:
    """Ignore SIGTERM from here on: the process holds nothing more and is on its way out. A SIGTERM
    (the parent's death signal) that lands while the interpreter runs its exit handlers would
    otherwise raise SystemExit inside one of them, and Python prints that as a traceback."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _die_with_parent() -> None:
    """SIGTERM this worker when the study process that started it dies, however it dies (a
    SIGKILL runs none of the parent's own cleanup): the worker then stops its run and releases its
    claim (``exit_on_sigterm``), so a re-run resumes the run at once instead of finding it held by
    an orphan that trains on unseen and dies at its next message to the parent. Linux:
    ``prctl(PR_SET_PDEATHSIG)``, the kernel's signal at the parent's death; elsewhere a thread
    that waits on the parent's sentinel."""
    import multiprocessing
    parent = multiprocessing.parent_process()
    if parent is None:  # not started by multiprocessing
        return
    armed = False
    if sys.platform.startswith("linux"):
        import ctypes
        try:
            armed = ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0) == 0  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            armed = False
    if not armed:
        def watch():
            from multiprocessing.connection import wait
            wait([parent.sentinel])
            os.kill(os.getpid(), signal.SIGTERM)
        threading.Thread(target=watch, name="bertlab-parent-watch", daemon=True).start()
    elif os.getppid() != parent.pid:  # the parent died before prctl: its signal will never come
        os.kill(os.getpid(), signal.SIGTERM)


def exit_on_sigterm(signum, frame):
    """SIGTERM (Slurm's scancel, a time limit) as SystemExit: claims are released on the way out. A
    second SIGTERM on that way out is ignored, so the release is not cut short."""
    leave_quietly()
    sys.exit(128 + signum)
