"""Helpers for the training tests: a tiny CoNLL corpus, a tiny config, and a script entry point.

    python tests/_train_script.py CONFIG.json OUT_DIR [--sleep SECONDS] [--no-resume]

runs ``bertlab.train.train`` on a config dict stored as JSON (also under torchrun). ``--sleep``
pauses after every optimisation step (it changes nothing that is computed), so a test can SIGKILL
the process mid-epoch.
"""
from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

from bertlab.callbacks import Callback

WORDS = ("the patient had severe chest pain and fever after aspirin was given daily for headache "
         "with nausea ibuprofen of left arm").split()
SIGNS = {"pain": "Sign", "fever": "Sign", "headache": "Sign", "nausea": "Sign"}
DRUGS = {"aspirin", "ibuprofen"}


def write_conll(path: Path, n_sentences: int, seed: int) -> None:
    """Random sentences of the words above; "chest pain" is a two-word Sign, drugs are Drug.
    Three sentences a document (``-DOCSTART-``), so predictions carry real doc ids."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_sentences):
        if i % 3 == 0:
            lines.append("-DOCSTART-\tO\n\n")
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
        tags, prev = [], "O"
        for w in words:
            if w in DRUGS:
                tag = "B-Drug"
            elif w in SIGNS:
                tag = "I-Sign" if prev == "B-Sign" and w == "pain" else "B-Sign"
            elif w == "chest":
                tag = "B-Sign"
            else:
                tag = "O"
            tags.append(tag)
            prev = tag
        lines += [f"{w}\t{t}\n" for w, t in zip(words, tags)] + ["\n"]
    path.write_text("".join(lines), encoding="utf-8")


def write_corpus(folder: Path, n_train: int = 24, n_dev: int = 6, n_test: int = 6) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n, seed in (("train", n_train, 0), ("dev", n_dev, 1), ("test", n_test, 2)):
        files[f"{split}_file"] = str(folder / f"{split}.tsv")
        write_conll(folder / f"{split}.tsv", n, seed)
    return files


TINY_MODEL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=64)


def tiny_config(data_dir: Path, **sections) -> dict:
    """A config dict for a 2-layer, 32-wide BERT (MiniLM's vocabulary) on the tiny corpus;
    ``sections`` update the defaults section by section."""
    cfg = {
        "data": {**write_corpus(Path(data_dir)), "max_length": 16, "stride": 4},
        "model": {"preset": "minilm", "overrides": dict(TINY_MODEL)},
        "sampler": {"batch_size": 4},
        "optim": {"lr": 2e-3, "grad_accum": 2, "warmup_ratio": 0.2},
        # fp32 whatever "auto" picks on this CPU: these tests check identities (resume, fused = naive,
        # one process = two, ...) to float32 tolerances; bf16 autocast has its own tests
        "train": {"epochs": 2, "seed": 3, "log_every": 3, "checkpoint_every": 2, "progress": "off",
                  "precision": "fp32"},
        "eval": {"decode": ["argmax"]},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


class Sleep(Callback):
    """A callback that slows training down without changing it."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def after_optimizer_step(self, step, model, optimizer) -> None:
        time.sleep(self.seconds)


def main(argv: list[str]) -> int:
    import torch
    torch.set_num_threads(2)  # as tests/conftest.py: results are compared bit for bit
    from bertlab.config import load_config
    from bertlab.train import train
    config_file, out = argv[0], argv[1]
    sleep = float(argv[argv.index("--sleep") + 1]) if "--sleep" in argv else 0.0
    cfg = load_config(json.loads(Path(config_file).read_text(encoding="utf-8")))
    train(cfg, out, callbacks=[Sleep(sleep)] if sleep else [], resume="--no-resume" not in argv,
          log=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
