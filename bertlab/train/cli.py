"""``bertlab train``: one training run from a TOML config (docs/training.md)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bertlab.config import ConfigError, load_config, read_config_file
from bertlab.errors import EXIT_INTERRUPTED, debug_requested, fail
from bertlab.train.loop import TrainingInterrupted, train


def main(argv: list[str] | None = None) -> int:
    """``bertlab train --config FILE.toml [--set section.key=value ...] [--out DIR] [--no-resume]``."""
    ap = argparse.ArgumentParser(prog="bertlab train", description="Train one model from a TOML config "
                                 "(docs/training.md); under torchrun, data-parallel. Paths in the config "
                                 "are relative to the config file.")
    ap.add_argument("--config", required=True, help="a training config TOML file, e.g. experiments/train_example.toml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a config field, value parsed as TOML (repeatable), e.g. optim.lr=1e-4")
    ap.add_argument("--out", help="the run folder (default: runs/train/<config file name>, with --set "
                                  "runs/train/<config file name>-<a hash of the overrides>); one training "
                                  "at a time: a second one into a busy folder is refused")
    ap.add_argument("--no-resume", action="store_true", help="start over even if OUT has a checkpoint")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error (also: BERTLAB_DEBUG=1)")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else default_out_dir(args.config, args.overrides)
    try:
        raw = read_config_file(args.config)
        # a [gradflow] section turns the gradient-flow instruments on (bertlab.gradflow)
        gradflow = raw.pop("gradflow", None)
        cfg = load_config(raw, args.overrides, where=args.config)
        callbacks = []
        if gradflow is not None:
            from bertlab.gradflow import GradFlowConfig, GradFlowRecorder
            try:
                gcfg = GradFlowConfig.from_dict(gradflow, source=args.config)
            except ValueError as e:
                raise ConfigError(str(e)) from None
            callbacks.append(GradFlowRecorder.from_config(gcfg, out))
        metrics = train(cfg, out, callbacks=callbacks, resume=not args.no_resume)
        if callbacks and int(os.environ.get("RANK", "0")) == 0:
            from bertlab.gradflow import read_rows, write_figures
            folder = callbacks[0].out_dir
            written = write_figures(read_rows(folder / "gradflow.csv"), folder)
            print(f"gradient flow: {folder / 'gradflow.csv'}" + (f" and {len(written)} figures" if written else ""))
    except KeyboardInterrupt as e:  # Ctrl-C: where training stood and how to go on, not a traceback
        if args.debug or debug_requested():
            raise
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"bertlab train: {e if isinstance(e, TrainingInterrupted) else 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # one line naming the file/key (bertlab.errors); --debug shows the traceback
        return fail("train", e, args.debug)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {out / 'metrics.json'} (best model: {out / 'best'})")
    return 0 if metrics is not None else 1


def default_out_dir(config: str | os.PathLike, overrides: list[str] = ()) -> Path:
    """The run folder when ``--out`` is not given: ``runs/train/<config file name>``, and with
    ``--set`` overrides ``runs/train/<config file name>-<8 hex digits>``, a hash of the overrides as
    parsed (their order, spacing and spelling of a number aside; a key set twice counts once, as
    its last value). So each variant of a config gets a folder of its own, and running the same
    command again finds its folder to resume."""
    import hashlib

    from bertlab.config import parse_override
    name = Path(config).stem
    if not overrides:
        return Path("runs") / "train" / name
    parsed = {}
    for item in overrides:
        try:
            key, value = parse_override(item)
        except ValueError:  # load_config says what is wrong with it
            key, value = item, None
        parsed[key] = value
    text = json.dumps(sorted(parsed.items()), default=str)
    return Path("runs") / "train" / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
