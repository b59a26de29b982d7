"""Claims: which process trains which run of a study, on one machine or many sharing a folder.

A claim is a file PREFIX-G.json in the claimed folder (a run folder; the study folder for its
lock), holding {"host", "pid", "invocation", "since", "heartbeat"}. It is created with O_EXCL,
so of several processes (on any hosts sharing the folder) exactly one gets it. To take over a
stale claim a process creates generation G+1: again only one can, and the old holder sees the
newer generation at its next heartbeat and stops. The study folder's own claim (``lock-G.json``,
``study_lock``) lets processes take turns at rewriting study.json, results.jsonl and the report.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bertlab.files import write_text
from bertlab.study.spec import StudyError

# seconds without a heartbeat after which another process may take over a run's claim (--stale-after)
STALE_AFTER = 600.0
MIN_STALE_AFTER = 1.0  # the heartbeat comes every stale_after / 4 s: at most 4 times a second


class ClaimLost(RuntimeError):
    """Another process took over this process's claim on a run (its heartbeat looked stale)."""


def claim_files(folder: Path, prefix: str = "claim") -> list[tuple[int, Path]]:
    """``[(generation, path)]`` of the claim files in ``folder``, oldest first."""
    found = []
    for p in folder.glob(f"{prefix}-*.json"):
        generation = p.name[len(prefix) + 1:-len(".json")]
        if generation.isdigit():
            found.append((int(generation), p))
    return sorted(found)


def read_claim(folder: Path, prefix: str = "claim") -> tuple[int, dict] | None:
    """The newest claim on ``folder`` as ``(generation, holder)``, or None."""
    for generation, path in reversed(claim_files(folder, prefix)):
        try:
            text, mtime = path.read_text(encoding="utf-8"), path.stat().st_mtime
        except FileNotFoundError:  # released just now
            continue
        try:
            return generation, json.loads(text)
        except json.JSONDecodeError:  # created an instant ago, not written yet: as fresh as its file
            return generation, {"heartbeat": mtime}
    return None


def claim_is_live(holder: dict, stale_after: float) -> bool:
    """Whether a claim still holds: not if its process is gone (checked on its own host), nor if
    its heartbeat is older than ``stale_after`` seconds (another host's process, or a hung one).
    Hosts are compared by name, so their clocks should agree to well under ``stale_after``."""
    if holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid")):
        return False
    return time.time() - float(holder.get("heartbeat", 0)) < stale_after


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):  # another user's process, or no pid recorded
        return True
    try:  # a killed child that its parent has not reaped yet is a zombie: gone all the same
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass
class Claim:
    """This process's claim on a folder (``take_claim``)."""
    path: Path
    prefix: str
    generation: int
    holder: dict
    took_over: dict | None = None  # the stale holder it replaced
    lost: bool = False

    def beat(self) -> bool:
        """Refresh the heartbeat; False (and ``lost``) once another process took the claim over."""
        if self.lost or claim_files(self.path.parent, self.prefix)[-1:] != [(self.generation, self.path)]:
            self.lost = True
            return False
        self.holder["heartbeat"] = time.time()
        write_text(self.path, json.dumps(self.holder))
        return True

    def release(self) -> None:
        """Give the folder up: delete this claim's file."""
        self.path.unlink(missing_ok=True)


def take_claim(folder: Path, stale_after: float = STALE_AFTER, invocation: str = "",
               prefix: str = "claim") -> Claim | None:
    """Claim ``folder`` for this process; None if a live process holds it (``claim_is_live``)."""
    folder.mkdir(parents=True, exist_ok=True)
    current = read_claim(folder, prefix)
    if current is not None and claim_is_live(current[1], stale_after):
        return None
    generation = 0 if current is None else current[0] + 1
    now = time.time()
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "invocation": invocation,
              "since": now, "heartbeat": now}
    path = folder / f"{prefix}-{generation}.json"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:  # another process was faster
        return None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(holder))
    for g, p in claim_files(folder, prefix):
        if g < generation:  # the stale holder's file
            p.unlink(missing_ok=True)
        elif g > generation:  # a fresh claim raced a takeover: the newer generation wins
            path.unlink(missing_ok=True)
            return None
    return Claim(path, prefix, generation, holder, took_over=current[1] if current else None)


def heartbeat_period(stale_after: float) -> float:
    """Seconds between heartbeats: a quarter of ``stale_after`` (a claim survives three missed
    beats), at most 30."""
    return min(30.0, stale_after / 4)


@contextlib.contextmanager
def heartbeat(period: float, beat):
    """Call ``beat()`` every ``period`` seconds on a background thread while the block runs."""
    stopped = threading.Event()

    def loop():
        while not stopped.wait(period):
            with contextlib.suppress(OSError):  # a shared file system's hiccup: the next beat retries
                beat()

    thread = threading.Thread(target=loop, name="bertlab-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopped.set()
        thread.join()


@contextlib.contextmanager
def study_lock(sdir: Path, stale_after: float = STALE_AFTER, invocation: str = ""):
    """Hold the study folder's lock (a claim named ``lock-G.json``) while the block runs: processes
    rewriting study.json, results.jsonl or the report take turns."""
    while (claim := take_claim(sdir, stale_after, invocation, prefix="lock")) is None:
        time.sleep(0.2)
    try:
        with heartbeat(heartbeat_period(stale_after), claim.beat):
            yield
    finally:
        claim.release()


def busy_runs(sdir: Path, stale_after: float = STALE_AFTER) -> dict[str, dict]:
    """``{run_id: holder}`` of the unfinished runs in ``sdir`` that a live process is training."""
    busy = {}
    for rdir in sorted(p for p in sdir.iterdir() if p.is_dir()):
        current = read_claim(rdir)
        if current and claim_is_live(current[1], stale_after) and not (rdir / "metrics.json").exists():
            busy[rdir.name] = current[1]
    return busy


def check_stale_after(seconds: float) -> None:
    """``--stale-after``: a finite number of seconds, at least ``MIN_STALE_AFTER``. Zero, a negative
    number or NaN made every claim look stale (processes took each other's runs over) and the
    heartbeat, every ``stale_after / 4`` seconds, spin."""
    if not (math.isfinite(seconds) and seconds >= MIN_STALE_AFTER):
        raise StudyError(f"--stale-after {seconds:g}: expected a number of seconds >= {MIN_STALE_AFTER:g} "
                         f"(default {STALE_AFTER:g}): a claim whose heartbeat is older is taken over")
