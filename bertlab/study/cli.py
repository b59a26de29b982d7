"""``bertlab experiment NAME``: the command line of bertlab.study (run_experiment).

Errors take bertlab's one error path (bertlab.errors.fail): one line naming the file and key, exit
status 2; ``--debug`` or ``BERTLAB_DEBUG=1`` prints the traceback. Ctrl-C says where training
stopped (exit 130), and SIGTERM (scancel, a time limit) releases this process's claims.
"""
from __future__ import annotations

import argparse
import signal
import sys

from bertlab.errors import EXIT_INTERRUPTED, debug_requested, fail
from bertlab.study.claims import MIN_STALE_AFTER, STALE_AFTER, check_stale_after
from bertlab.study.runner import run_experiment
from bertlab.study.schedule import parse_shard, shard_runs
from bertlab.study.spec import SCALES, StudyError, expand, load_study, select
from bertlab.study.workers import exit_on_sigterm


def main(argv: list[str] | None = None) -> int:
    """``bertlab experiment NAME [--scale S] [--only k=v ...] [--set k=v ...] [--out runs]
    [--shard I/N] [--workers N]``."""
    ap = argparse.ArgumentParser(prog="bertlab experiment", description=(
        "Run (or resume) a study: every run of experiments/NAME.toml at a scale, then its report "
        "(docs/experiments.md). Re-running the same command resumes where it stopped."))
    ap.add_argument("name", help="study name (experiments/NAME.toml) or a path to a study .toml")
    ap.add_argument("--scale", default="default", choices=SCALES,
                    help="smoke (a few documents, seconds a run), default, or full (default: default); "
                         "writes OUT/NAME, or OUT/NAME-SCALE for a non-default scale")
    ap.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                    help="run only the runs with this axis value (repeatable), e.g. --only seed=0")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                    help="override a base config key (TOML value), e.g. --set train.epochs=1 or "
                         "--set models.bio_clinicalbert.path=/models/Bio_ClinicalBERT")
    ap.add_argument("--runs", "--out", dest="out", default="runs", metavar="DIR",
                    help="the folder that holds study folders: the study goes to RUNS/NAME (default runs/; "
                         "--out is the old name)")
    ap.add_argument("--experiments", default="experiments", help="folder of study files (default experiments/)")
    ap.add_argument("--list", action="store_true", help="print the runs and exit")
    ap.add_argument("--no-report", action="store_true", help="do not build report.md at the end")
    ap.add_argument("--reuse", action="append", default=[], metavar="DIR",
                    help="another study folder (repeatable): a run whose exact config finished there is "
                         "copied instead of trained (e.g. --reuse runs/btl_focal for btl_ablation's runs); "
                         "not for studies that record the gradient flow")
    ap.add_argument("--shard", metavar="I/N",
                    help="train only part I of N of the runs (0 <= I < N), e.g. --shard "
                         "$SLURM_ARRAY_TASK_ID/8; parts are balanced by estimated cost and the same on "
                         "every machine")
    ap.add_argument("--workers", type=int, default=1, metavar="N",
                    help="N processes on this machine, each taking the next unclaimed run, each on "
                         "its own CUDA device (round-robin) or its share of the CPU cores")
    ap.add_argument("--threads", type=int, default=0, metavar="T",
                    help="torch threads per process (default: with --workers N, cores / N; "
                         "otherwise torch's default)")
    ap.add_argument("--stale-after", type=float, default=STALE_AFTER, metavar="SECONDS",
                    help=f"take over a run whose claim's heartbeat is older than this (default "
                         f"{STALE_AFTER:.0f}, at least {MIN_STALE_AFTER:.0f}); on its own host a claim is taken "
                         f"over once its process is gone")
    ap.add_argument("--debug", action="store_true",
                    help="print the traceback of an error (also: environment BERTLAB_DEBUG=1)")
    args = ap.parse_args(argv)
    debug = args.debug or debug_requested()
    on_term = signal.signal(signal.SIGTERM, exit_on_sigterm)  # a killed study releases its claims
    try:
        shard = parse_shard(args.shard) if args.shard else None
        if args.workers < 1 or args.threads < 0:
            raise StudyError(f"--workers {args.workers} --threads {args.threads}: expected --workers >= 1 "
                             f"and --threads >= 0")
        check_stale_after(args.stale_after)
        if args.list:
            study = load_study(args.name, args.scale, args.overrides, args.experiments)
            runs = select(expand(study), args.only, study)
            for run in shard_runs(runs, *shard) if shard else runs:
                print(run.run_id)
            return 0
        if args.threads and args.workers == 1:
            import torch
            torch.set_num_threads(args.threads)
        run_experiment(args.name, args.scale, args.out, args.only, args.overrides,
                       experiments_dir=args.experiments, report=not args.no_report, shard=shard,
                       workers=args.workers, threads=args.threads, stale_after=args.stale_after,
                       reuse=args.reuse)
    except KeyboardInterrupt as e:  # a run trained here says where it stopped (bertlab.train.TrainingInterrupted)
        from bertlab.train import TrainingInterrupted
        said = str(e) if isinstance(e, TrainingInterrupted) else "interrupted; re-run the same command to resume"
        print(f"bertlab experiment: {said}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `bertlab experiment NAME --list | head`: the reader left; bertlab.cli exits quietly
        raise
    except Exception as e:  # one line for a human (bertlab.errors); the traceback on request
        return fail("experiment", e, debug)
    finally:
        signal.signal(signal.SIGTERM, on_term)
    return 0
