"""Studies: one TOML file -> many training runs -> ``results.jsonl`` -> ``report.md``.

A study (``experiments/NAME.toml``) is a base training config plus sweep axes over its dotted
keys::

    [study]
    name = "btl_focal"
    baseline = { "sampler.name" = "atl", "loss.name" = "ce", decode = "argmax" }

    [base.data]                      # a TrainConfig, section by section (docs/architecture.md)
    name = "maccrobat"
    [base.model]
    builtin = "minilm"

    [sweep]                          # the cartesian product of these lists is the set of runs
    "sampler.name" = ["atl", "btl"]
    "loss.name" = ["ce", "weighted_ce", "focal"]
    "train.seed" = [0, 1, 2]         # seeds pair runs across variants for the paired tests

    [scale.smoke]                    # dotted-key overrides of [base] per scale;
    "data.max_documents" = 4         # [scale.smoke.sweep] may replace whole axes
    [report]                         # options for bertlab.report

Every run is trained once; each decode in ``eval.decode`` (argmax, knn) scores that same model,
so decode is an axis of *variants* (what the report compares) but not of *runs* (what is trained).

Layout of ``runs/NAME/`` (``runs/NAME-SCALE/`` for a scale other than ``default``)::

    study.json                       the expanded study: axes, baseline, report options, scale (and
                                     what it changes), the commands that trained in the folder
    results.jsonl                    one line per finished (run, decode); rebuilt from the folders
    report.md, figures/              bertlab.report
    lock-G.json                      while a process rewrites study.json / results.jsonl / the report
    <run_id>/                        e.g. sampler=btl__loss=focal__seed=1
        config.toml                  the TrainConfig this run was trained with
        run.json                     axis values, environment, train mention counts
        metrics.json, log.jsonl, predictions_<split>_<decode>.jsonl, best/   (bertlab.train)
        timing.json                  wall time summed over sessions (kept current while training)
        claim-G.json                 while a process trains it: host, pid, heartbeat
        .lock                        while bertlab.train writes the folder (one training at a time)

A run is finished iff its ``metrics.json`` exists. Re-running skips finished runs and resumes
interrupted ones from their checkpoint (``train(..., resume=True)``). The one config change a run
folder takes is ``train.epochs``: a finished run is then continued from its checkpoint, where that
is exactly the run the new config trains (``bertlab.train.change_epochs``). ``results.jsonl`` is a pure
function of the finished run folders, rewritten atomically after every run, so it can never hold
a duplicate or miss a finished run.

Any number of processes, on one machine (``--workers N``) or many (``--shard I/N``, e.g. a Slurm
array over a shared folder), may work on one study folder: a process trains a run only after
claiming its folder (a file created with O_EXCL), a claim is taken over only when its holder is
gone or its heartbeat is stale, and whichever process finishes last writes the report. Who
trains a run does not change its numbers: its seed and config are the study's, not the process's.

The package, in the order a study goes::

    spec.py       the study file -> Study -> Runs: load_study, expand, select, the checks before training
    folder.py     the study folder: study.json, run folders against the config the study gives now
    schedule.py   who trains what: shards (--shard I/N), run costs, worker places (--workers N)
    claims.py     claim files, heartbeats and the study lock
    work.py       training the runs one after another (work; work_together under torchrun)
    workers.py    --workers N processes on one machine
    runner.py     run_experiment: all of the above, then results.jsonl and the report
    cli.py        ``bertlab experiment``

The direct HMM / feature-CRF runs are fitted by bertlab.baselines.direct, the environment every
run records is bertlab.environment's, and results.jsonl is bertlab.results'.

Public API, exported here: ``run_experiment``, ``load_study``, ``expand``, ``select``, ``Study``,
``Run``, ``StudyError``.
"""
from bertlab.study.runner import run_experiment
from bertlab.study.spec import Run, Study, StudyError, expand, load_study, select

__all__ = ["Run", "Study", "StudyError", "expand", "load_study", "run_experiment", "select"]
