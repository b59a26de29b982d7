"""The training loop against references: an uninterrupted run (resume after SIGKILL), a second run
with the same seed (bit-identical), one process (two torchrun processes), one big batch (gradient
accumulation), transformers (the learning-rate schedule, the saved model), the losses' own
reductions (the normaliser), and the config validator's error messages.

Every run is a 2-layer, 32-wide BERT with MiniLM's vocabulary on a 24-sentence corpus (tests/_train_script.py).
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bertlab.config import ConfigError, TrainConfig, config_to_dict, load_config
from bertlab.losses.objective import build_objective, step_loss
from bertlab.models import ops
from bertlab.train import NonFiniteLossError, train
from bertlab.train.cli import main
from bertlab.train.setup import lr_factor

sys.path.insert(0, str(Path(__file__).parent))
from _train_script import TINY_MODEL, tiny_config  # noqa: E402

SCRIPT = Path(__file__).with_name("_train_script.py")
REPO = Path(__file__).resolve().parents[1]
TIMING_KEYS = {"timing", "train_seconds", "tokens_per_second", "time_split", "cpu_share"}


def quiet(line: str) -> None:
    pass


def strip_timing(obj):
    """metrics.json without its wall-clock fields (the only ones allowed to differ between runs)."""
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


def final_params(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]


def assert_same_params(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0.0:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def test_repairs_are_listed_and_untrained_dev_types_warned(tmp_path):
    """`[data] repair = true` changed tags without a record (issue #41, item 9): each change is printed
    and kept in metrics.json's data_repairs; a type only dev has trains with a warning (evaluate warns)."""
    from bertlab.datasets.corpus import DataError
    def write(path, sentences):
        path.write_text("".join("".join(f"{w}\t{t}\n" for w, t in zip(words, tags)) + "\n" for words, tags in sentences))
    write(tmp_path / "train.tsv", [("the patient had chest pain".split(), ["O", "O", "O", "I-Sign", "I-Sign"]),
                                   *SENTENCES[1:]])
    write(tmp_path / "dev.tsv", [("aspirin for the cough".split(), ["B-Drug", "O", "O", "B-Symptom"])])
    cfg = {"data": {"train_file": str(tmp_path / "train.tsv"), "dev_file": str(tmp_path / "dev.tsv"),
                    "max_length": 16, "stride": 4},
           "model": {"preset": "minilm", "overrides": TINY_MODEL},
           "train": {"epochs": 1, "max_steps": 1, "progress": "off", "precision": "fp32"}, "eval": {"decode": ["argmax"]}}
    with pytest.raises(DataError, match=r"train.tsv:4: .*--set data.repair=true"):
        train(load_config(cfg), tmp_path / "refused", resume=False, log=quiet)
    lines: list[str] = []
    metrics = train(load_config(cfg, ["data.repair=true"]), tmp_path / "run", resume=False, log=lines.append)
    change = f"{tmp_path / 'train.tsv'}:4: I-Sign -> B-Sign"
    assert metrics["data_repairs"] == [change]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["data_repairs"] == [change]
    assert any(change in line for line in lines)
    warning = [line for line in lines if line.startswith("warning:") and "Symptom (1 mention)" in line]
    assert len(warning) == 1 and "dev split" in warning[0], lines


@pytest.mark.parametrize("hardware", [True, False])
def test_bf16_on_a_cpu_without_bf16_arithmetic_trains_with_a_warning(tmp_path, monkeypatch, hardware):
    """precision = 'bf16' on a CPU without bf16 arithmetic: bf16 is emulated in float32 (no faster
    than fp32) and, on AVX2-only CPUs, oneDNN's bf16 fusions are unavailable; the run still trains
    and scores, and says so up front, naming the emulator (cpu_has_bf16 reads /proc/cpuinfo, so
    both answers are forced here)."""
    import bertlab.train.setup as setup

    monkeypatch.setattr(setup, "cpu_has_bf16", lambda: hardware)
    cfg = tiny_config(tmp_path / "data", train={"epochs": 1, "max_steps": 1, "precision": "bf16"})
    lines: list[str] = []
    metrics = train(load_config(cfg), tmp_path / "run", resume=False, log=lines.append)
    assert metrics["precision"] == "bf16" and 0.0 <= metrics["test"]["argmax"]["entity_report"]["micro avg"]["f1-score"] <= 1.0
    warned = [line for line in lines if line.startswith("warning: [train] precision = 'bf16' on a CPU without")]
    assert len(warned) == (0 if hardware else 1), lines
    # who emulates: oneDNN on AVX-512 CPUs, bertlab's float32 GEMMs on AVX2-only ones
    assert all(f"(by {'oneDNN' if ops.onednn_bf16() else 'bertlab.models.ops'})" in line for line in warned)


def test_keep_checkpoint_false_drops_it_and_the_run_stays_finished(tmp_path):
    """Each finished run kept its checkpoint.pt (optimizer state, 170-270 MB; issue #41, item 10).
    `[train] keep_checkpoint = false` deletes it when metrics.json is written; resuming the run
    returns its metrics without training (it used to start over without a checkpoint), and more
    epochs are refused with the reason, not trained from scratch behind the user's back."""
    from bertlab.study.spec import NON_RESULT_KEYS
    cfg = tiny_config(tmp_path / "data", train={"epochs": 1, "max_steps": 2, "keep_checkpoint": False})
    run = tmp_path / "run"
    metrics = train(load_config(cfg), run, resume=False, log=quiet)
    assert (run / "metrics.json").exists() and not (run / "checkpoint.pt").exists()
    written = (run / "metrics.json").stat().st_mtime_ns
    lines: list[str] = []
    assert train(load_config(cfg), run, log=lines.append) == json.loads((run / "metrics.json").read_text())
    assert any("already finished" in line for line in lines) and not any("training" in l for l in lines), lines
    assert (run / "metrics.json").stat().st_mtime_ns == written and metrics["config"]["train"]["keep_checkpoint"] is False
    # the same run with its checkpoint kept from now on is the same run
    assert train(load_config(cfg, ["train.keep_checkpoint=true"]), run, log=quiet)["steps"] == metrics["steps"]
    with pytest.raises(ConfigError, match=r"metrics.json: .*\[train\] epochs \(1 -> 2\).*keep_checkpoint = false"):
        train(load_config(cfg, ["train.epochs=2"]), run, log=quiet)
    assert "train.keep_checkpoint" in NON_RESULT_KEYS  # a study's finished runs stay finished when it changes
    with pytest.raises(ConfigError, match=r"\[train\] keep_checkpoint: expected true or false"):
        load_config(cfg, ["train.keep_checkpoint=1"])


def log_rows(run_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (run_dir / "log.jsonl").read_text().splitlines()]


def subprocess_env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="2")
    env.pop("WORLD_SIZE", None)
    return env


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run of the tiny config (2 epochs x 4 steps, grad_accum 2, checkpoints
    every 2 steps): the reference for determinism, resume and output files."""
    root = tmp_path_factory.mktemp("reference")
    cfg = tiny_config(root / "data")
    metrics = train(load_config(cfg), root / "run", resume=False, log=quiet)
    return cfg, root / "run", metrics


# ---- config ---------------------------------------------------------------------------------

@pytest.mark.parametrize("toml, expected", [
    ("[trian]\nepochs = 1\n", "unknown section [trian]"),
    ("[train]\nepoch = 1\n", "[train] epoch: unknown key"),
    ("[train]\nepochs = \"3\"\n", "[train] epochs: expected an integer, got '3'"),
    ("[train]\nepochs = 2.5\n", "[train] epochs: expected an integer"),
    ("[optim]\nlr = true\n", "[optim] lr: expected a number, got True"),
    ("[sampler]\nname = \"bTL\"\n", "[sampler] name: expected one of ['atl', 'btl', 'resample'], got 'bTL'"),
    ("[sampler]\nbatch_size = 0\n", "[sampler] batch_size: expected a value >= 1"),
    ("[train]\npad_to_multiple_of = -8\n", "[train] pad_to_multiple_of: expected a value >= 0"),
    ("[eval]\ndecode = [\"argmax\", \"beam\"]\n", "[eval] decode: expected entries from"),
    ("[eval]\ndecode = [\"viterbi\"]\n", "[eval] decode: 'viterbi' needs a CRF"),
    ("[loss]\nname = \"tversky\"\n", "[loss] name: expected one of"),
    ("[loss]\nname = \"ce\"\ngamma = 2.0\n", "[loss] LossConfig.gamma=2.0 is only used by name='focal'"),
    ("[model]\npreset = \"tinybert\"\npath = \"/x\"\n", "[model] path and preset are both set"),
    ("[sampler]\nname = \"btl\"\n[model]\nhead = \"crf\"\n", "[sampler] name: 'btl' cannot train a CRF"),
    ("[train\n", "not valid TOML"),
    ("[data]\nfolds = 1\n", "[data] folds: expected 0 (the corpus's own split) or K >= 2 folds, got 1"),
    ("[data]\nfolds = 3\nfold = 3\n", "[data] fold: expected 0 <= fold < folds = 3, got 3"),
    ("[data]\nfold = 1\n", "[data] fold: only used with [data] folds = K"),
    ("[data]\nfolds = -2\n", "[data] folds: expected a value >= 0"),
    # a pretrained model keeps its config: the way to cut it is num_layers, and the error says so
    ("[model]\noverrides = { num_hidden_layers = 2 }\n", "to keep only its first N layers set [model] num_layers = N"),
])
def test_config_errors_name_file_section_and_key(tmp_path, toml, expected):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: ")
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


def test_config_defaults_roundtrip_and_overrides(tmp_path):
    assert load_config({}) == TrainConfig()
    path = tmp_path / "run.toml"
    path.write_text('[optim]\nlr = 1e-4\n[eval]\ndecode = ["argmax"]\n')
    cfg = load_config(path, ["optim.lr=3", "eval.decode=[\"argmax\", \"knn\"]", "model.builtin=minilm",
                             "loss.name=focal", "loss.gamma=1"])
    assert cfg.optim.lr == 3.0 and isinstance(cfg.optim.lr, float)  # an int is accepted for a float
    assert cfg.eval.decode == ["argmax", "knn"] and cfg.loss.gamma == 1.0
    assert load_config(config_to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match=r"--set 'optim\.lr': expected section\.key=value"):
        load_config(path, ["optim.lr"])
    with pytest.raises(ConfigError, match=r"bad\.toml: config file not found"):
        load_config(tmp_path / "bad.toml")


# ---- schedule and normalisation -------------------------------------------------------------

def test_lr_schedule_matches_transformers():
    from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup
    total, warmup = 23, 5
    for schedule, make in (("linear", lambda o: get_linear_schedule_with_warmup(o, warmup, total)),
                           ("constant", lambda o: get_constant_schedule_with_warmup(o, warmup))):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = make(opt)
        for step in range(total):
            assert lr_factor(step, total, warmup, schedule) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
            opt.step()
            sched.step()


def test_each_epoch_has_its_own_batch_order_and_a_resume_rebuilds_it():
    """The batch order is a function of (seed, epoch) and nothing else: a new order every epoch
    (the data is reshuffled), the same order for the same pair (a resume rebuilds the epoch it
    was interrupted in from these two numbers alone)."""
    from bertlab.batching import epoch_batches
    lengths = [(7 * i) % 23 + 1 for i in range(200)]
    epoch0 = epoch_batches(lengths, 8, seed=13, epoch=0)
    epoch1 = epoch_batches(lengths, 8, seed=13, epoch=1)
    assert epoch1 != epoch0
    assert sorted(i for b in epoch1 for i in b) == sorted(i for b in epoch0 for i in b) == list(range(200))
    assert epoch_batches(list(lengths), 8, seed=13, epoch=1) == epoch1
    assert epoch_batches(lengths, 8, seed=14, epoch=0) != epoch0


def _tiny_model(labels, dropout=0.0):
    from bertlab.checkpoint import build_model
    torch.manual_seed(0)
    return build_model("minilm", labels, **TINY_MODEL, hidden_dropout_prob=dropout,
                       attention_probs_dropout_prob=dropout)


def _windows(minilm_path, labels, sentences):
    from bertlab.tokenization import Tokenizer
    tok = Tokenizer.from_pretrained(minilm_path)
    label2id = {l: i for i, l in enumerate(labels)}
    return [w for words, tags in sentences
            for w in tok.encode_words(words, [label2id[t] for t in tags], max_length=16, stride=4)]


SENTENCES = [
    ("the patient had chest pain".split(), ["O", "O", "O", "B-Sign", "I-Sign"]),
    ("aspirin".split(), ["B-Drug"]),
    ("fever after ibuprofen was given daily for headache".split(),
     ["B-Sign", "O", "B-Drug", "O", "O", "O", "O", "B-Sign"]),
    ("nausea".split(), ["B-Sign"]),
]
LABELS = ["O", "B-Drug", "I-Drug", "B-Sign", "I-Sign"]


def test_grad_accum_normalises_by_all_labelled_tokens(tmp_path):
    """One training step of two accumulated micro-batches of 2 windows moves the parameters exactly
    as one batch of 4 does, and both by minus lr times the gradient of the mean CE over all
    labelled tokens: not the mean of the two micro-batch means (their token counts differ)."""
    from bertlab.checkpoint import build_model, builtin_path
    from bertlab.datasets.prepare import encode_corpus, load_splits
    from bertlab.batching import collate
    from bertlab.tokenization import Tokenizer
    train_file = tmp_path / "train.tsv"
    train_file.write_text("".join("".join(f"{w}\t{t}\n" for w, t in zip(words, tags)) + "\n"
                                  for words, tags in SENTENCES))
    model_cfg = {"preset": "minilm", "overrides": {**TINY_MODEL, "hidden_dropout_prob": 0.0,
                                                    "attention_probs_dropout_prob": 0.0}}

    def one_step(batch_size, accum, lr, name):
        cfg = {"data": {"train_file": str(train_file), "max_length": 16, "stride": 4}, "model": model_cfg,
               "sampler": {"batch_size": batch_size},
               "optim": {"name": "sgd", "lr": lr, "clip_grad_norm": 0.0, "warmup_ratio": 0.0, "grad_accum": accum,
                         "schedule": "constant", "weight_decay": 0.0},
               "train": {"epochs": 1, "max_steps": 1, "progress": "off", "precision": "fp32"}}
        train(load_config(cfg), tmp_path / name, resume=False, log=quiet)
        return final_params(tmp_path / name), load_config(cfg)

    init, cfg = one_step(4, 1, 0.0, "init")
    big, _ = one_step(4, 1, 1.0, "big")
    accumulated, _ = one_step(2, 2, 1.0, "accumulated")
    # the reference: autograd of the mean CE over the 4 windows' labelled tokens, at the initial weights
    splits = load_splits(cfg.data)
    windows = encode_corpus(Tokenizer.from_pretrained(builtin_path("minilm")), splits.train, splits.labels, 16, 4)
    assert len(windows) == 4
    reference = build_model("minilm", splits.labels, **model_cfg["overrides"])
    reference.load_state_dict(init)
    batch = collate(windows)
    logits = reference(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    torch.nn.functional.cross_entropy(logits.reshape(-1, len(splits.labels)), batch["labels"].reshape(-1)).backward()
    for n, p in reference.named_parameters():
        torch.testing.assert_close(init[n] - big[n], p.grad, atol=1e-6, rtol=1e-5, msg=n)
        torch.testing.assert_close(init[n] - accumulated[n], p.grad, atol=1e-6, rtol=1e-5, msg=n)
    # the mean of micro-batch means is a different (wrong) normalisation, so this test can fail
    counts = [sum(len(t) for _, t in SENTENCES[:2]), sum(len(t) for _, t in SENTENCES[2:])]
    assert counts[0] != counts[1]


def test_normaliser_reproduces_each_loss_reduction(minilm_path):
    """step_loss / normaliser equals the loss modules' own reduction on one micro-batch: token mean
    for CE and focal, Σα_t for weighted_mean, token_mean for the CRF, and per-copy token mean for
    BTL (other_to_o: every copy sees all labelled tokens)."""
    from bertlab.batching import collate
    from bertlab.losses import LossConfig, btl_fused_loss, build_loss, label_counts
    windows = _windows(minilm_path, LABELS, SENTENCES)
    batch = collate(windows)
    everything = list(range(len(windows)))
    counts = label_counts([w.labels for w in windows], len(LABELS))
    cases = [
        ({}, lambda m, lg: build_loss(LossConfig())(lg, batch["labels"])),
        ({"loss": {"name": "focal", "gamma": 2.0, "alpha": "weights"}},
         lambda m, lg: build_loss(LossConfig(name="focal", gamma=2.0, alpha="weights"), counts)(lg, batch["labels"])),
        ({"loss": {"name": "weighted_ce", "reduction": "weighted_mean"}},
         lambda m, lg: build_loss(LossConfig(name="weighted_ce", reduction="weighted_mean"), counts)(
             lg, batch["labels"])),
        ({"model": {"head": "crf"}}, lambda m, lg: m.crf_loss(lg, batch["labels"], reduction="token_mean")),
        ({"sampler": {"name": "btl"}},
         lambda m, lg: btl_fused_loss(lg, batch["labels"], LABELS, build_loss(LossConfig()))[0]),
    ]
    for sections, reference in cases:
        cfg = load_config(sections)
        objective = build_objective(cfg, LABELS, windows)
        model = _tiny_model(LABELS)
        if cfg.model.head == "crf":
            from bertlab.models.heads import TokenClassifier
            model = TokenClassifier(model.encoder, LABELS, head="crf")
            with torch.no_grad():
                model.crf.transitions.normal_()
        model.eval()
        loss_sum, logits = step_loss(model, batch, objective)
        ours = loss_sum / objective.normaliser(everything)
        torch.testing.assert_close(ours, reference(model, logits).float(), atol=1e-6, rtol=1e-6,
                                   msg=str(sections))


# ---- whole runs -----------------------------------------------------------------------------

def test_run_writes_metrics_predictions_log_and_a_transformers_folder(reference):
    cfg, run_dir, metrics = reference
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert metrics["epochs"] == 2 and metrics["steps"] == 8 and metrics["params"] > 0
    assert set(metrics["test"]) == {"argmax"} and set(metrics["dev"]) == {"argmax"}
    report = metrics["test"]["argmax"]["entity_report"]
    assert {"micro avg", "macro avg", "weighted avg"} <= set(report)
    assert metrics["best_dev_f1"] == max(h["dev_f1"] for h in metrics["history"])
    assert len(metrics["timing"]) == 2 and metrics["timing"][0]["tokens_per_s"] > 0

    rows = [json.loads(l) for l in (run_dir / "predictions_test_argmax.jsonl").read_text().splitlines()]
    test_tags = [l.split("\t")[1].strip() for l in Path(cfg["data"]["test_file"]).read_text().splitlines()
                 if "\t" in l and not l.startswith("-DOCSTART-")]
    assert sum(len(r["tags"]) for r in rows) == len(test_tags)
    assert [t for r in rows for t in r["tags"]] == test_tags
    assert all(len(r["pred"]) == len(r["tokens"]) for r in rows)
    assert len({r["doc_id"] for r in rows}) == 2  # 6 sentences, 3 a document

    log = log_rows(run_dir)
    assert [r["step"] for r in log if r["event"] == "step"] == [3, 6]  # log_every = 3
    assert [r["epoch"] for r in log if r["event"] == "epoch"] == [0, 1]

    # best/ is an ordinary Hugging Face folder: transformers gives the logits bertlab gives
    from transformers import AutoModelForTokenClassification

    from bertlab.checkpoint import load_pretrained
    ours, tok = load_pretrained(run_dir / "best")
    theirs = AutoModelForTokenClassification.from_pretrained(run_dir / "best").eval()
    ids = torch.tensor([tok.encode_words(["chest", "pain"])[0].input_ids])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_same_seed_gives_bit_identical_metrics_and_parameters(reference, tmp_path):
    cfg, run_dir, metrics = reference
    again = train(load_config(cfg), tmp_path / "again", resume=False, log=quiet)
    assert strip_timing(again) == strip_timing(metrics)
    assert_same_params(final_params(tmp_path / "again"), final_params(run_dir))
    # and the seed matters: another seed gives other parameters
    other = copy.deepcopy(cfg)
    other["train"].update(seed=4, epochs=1, max_steps=1)
    train(load_config(other), tmp_path / "other", resume=False, log=quiet)
    first = final_params(tmp_path / "other")
    assert not torch.equal(first["classifier.weight"], final_params(run_dir)["classifier.weight"])


def _killed_mid_epoch(cfg: dict, tmp_path: Path) -> Path:
    """The tiny config trained in a subprocess, SIGKILLed after its first checkpoint (mid-epoch 0)."""
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path / "config.json"), str(out), "--sleep", "0.4"],
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while not (out / "checkpoint.pt").exists():  # the first checkpoint comes after step 2 of epoch 0
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "metrics.json").exists()
    return out


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(reference, tmp_path):
    cfg, run_dir, metrics = reference
    out = _killed_mid_epoch(cfg, tmp_path)
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    progress = json.loads(ckpt["progress"])
    assert progress["step"] < 8 and progress["micro_batch"] > 0, progress  # killed mid-epoch

    lines = []
    resumed = train(load_config(cfg), out, resume=True, log=lines.append)
    assert any(l.startswith(f"resuming {out} at step {progress['step']}") for l in lines), lines
    assert strip_timing(resumed) == strip_timing(metrics)
    assert_same_params(final_params(out), final_params(run_dir))
    # the log reads as the uninterrupted one: nothing twice, the same mean losses (log_every 3
    # straddles the checkpoints every 2 steps)
    steps = [(r["step"], r["loss"]) for r in log_rows(out) if r["event"] == "step"]
    assert steps == [(r["step"], r["loss"]) for r in log_rows(run_dir) if r["event"] == "step"]
    assert [r["event"] for r in log_rows(out)].count("resume") == 1
    # a finished run is not trained again
    assert strip_timing(train(load_config(cfg), out, resume=True, log=quiet)) == strip_timing(metrics)


def test_resume_refuses_a_different_config(reference, tmp_path):
    cfg, run_dir, _ = reference
    changed = copy.deepcopy(cfg)
    changed["optim"]["lr"] = 1e-3
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes((run_dir / "checkpoint.pt").read_bytes())
    with pytest.raises(ConfigError, match=r"checkpoint\.pt: written by a run with a different config: "
                                          r"\[optim\] lr \(0\.002 -> 0\.001\)"):
        train(load_config(changed), out, resume=True, log=quiet)


def test_nan_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path):
    """A callback poisons the weights after step 3; step 4's loss is NaN. The checkpoint of step 2
    stays byte for byte, and the error names step 4."""
    cfg = tiny_config(tmp_path / "data")
    out = tmp_path / "run"
    seen = {}

    class Poison:
        def after_optimizer_step(self, step, model, optimizer):
            if step == 3:
                seen["sha"] = hashlib.sha256((out / "checkpoint.pt").read_bytes()).hexdigest()
                with torch.no_grad():
                    model.classifier.weight.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match=r"non-finite loss nan at step 4 \(epoch 0\).*"
                                                 r"last good checkpoint is .*checkpoint\.pt \(step 2\)"):
        train(load_config(cfg), out, callbacks=[Poison()], resume=False, log=quiet)
    assert hashlib.sha256((out / "checkpoint.pt").read_bytes()).hexdigest() == seen["sha"]
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert json.loads(ckpt["progress"])["step"] == 2
    assert torch.isfinite(ckpt["model"]["classifier.weight"]).all()


def test_early_stopping_after_patience_epochs(tmp_path):
    # lr 0: the dev F1 of epoch 0 is never beaten, so patience 1 stops after epoch 1; the tie
    # goes to the later epoch (a flat metric keeps the latest model, not the first)
    cfg = tiny_config(tmp_path / "data", optim={"lr": 0.0}, train={"epochs": 5, "early_stopping_patience": 1})
    metrics = train(load_config(cfg), tmp_path / "run", resume=False, log=quiet)
    assert metrics["stopped_early"] and metrics["epochs"] == 2 and metrics["best_epoch"] == 1
    assert [h["dev_f1"] for h in metrics["history"]] == [metrics["best_dev_f1"]] * 2


def test_fused_btl_equals_naive_btl_without_dropout(tmp_path):
    """Without dropout the fused BTL loss (one forward) and the paper's naive one (a forward per
    class) give the same training run."""
    runs = {}
    for impl in ("fused", "naive"):
        cfg = tiny_config(tmp_path / "data", sampler={"name": "btl", "btl_impl": impl},
                          model={"overrides": {**TINY_MODEL, "hidden_dropout_prob": 0.0,
                                               "attention_probs_dropout_prob": 0.0}},
                          train={"epochs": 1, "max_steps": 2})
        runs[impl] = train(load_config(cfg), tmp_path / impl, resume=False, log=quiet)
    assert_same_params(final_params(tmp_path / "fused"), final_params(tmp_path / "naive"), atol=1e-6)


@pytest.mark.parametrize("data, train_section, expected", [
    ({"max_length": 80}, {}, "[data] max_length = 80 is more than the model's 64 positions (max_position_embeddings)"),
    ({"max_length": 60}, {"pad_to_multiple_of": 48},
     "[train] pad_to_multiple_of = 48 pads windows of [data] max_length = 60 subwords to 96, more than the "
     "model's 64 positions"),
])
def test_windows_past_the_models_positions_are_a_config_error(tmp_path, data, train_section, expected):
    cfg = tiny_config(tmp_path / "data", train={"epochs": 1, "max_steps": 1, **train_section})
    cfg["data"].update(data)
    with pytest.raises(ConfigError) as e:
        train(load_config(cfg), tmp_path / "run", resume=False, log=quiet)
    assert expected in str(e.value)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_padding_to_a_multiple_trains_the_same_model_without_dropout(tmp_path):
    """Extra padding is masked in attention and ignored by the loss: without dropout (whose masks
    follow the batch's shape) a run padded to a multiple of 16 equals the unpadded one."""
    for multiple in (1, 16):
        cfg = tiny_config(tmp_path / "data", model={"overrides": {**TINY_MODEL, "hidden_dropout_prob": 0.0,
                                                                   "attention_probs_dropout_prob": 0.0}},
                          train={"epochs": 1, "max_steps": 3, "pad_to_multiple_of": multiple})
        train(load_config(cfg), tmp_path / str(multiple), resume=False, log=quiet)
    assert_same_params(final_params(tmp_path / "1"), final_params(tmp_path / "16"), atol=1e-5)
    losses = [[r["loss"] for r in log_rows(tmp_path / m) if "loss" in r] for m in ("1", "16")]
    assert losses[0] and losses[1] == pytest.approx(losses[0], rel=1e-5)


@pytest.mark.parametrize("sections", [
    {"model": {"head": "crf"}, "eval": {"decode": ["viterbi", "argmax", "knn"]}},
    {"loss": {"name": "focal", "gamma": 2.0}, "optim": {"name": "sgd", "lr": 5e-2, "momentum": 0.9}},
    {"loss": {"name": "weighted_ce"}, "sampler": {"name": "btl", "btl_mode": "binary", "btl_classes": "all"},
     "train": {"precision": "bf16"}},
    {"model": {"preset": "", "arch": "bilstm_crf", "overrides": {"embedding_dim": 16, "lstm_hidden_size": 8}},
     "eval": {"decode": ["viterbi", "knn"]}},
], ids=["crf-viterbi-knn", "focal-sgd", "btl-binary-bf16", "bilstm-crf"])
def test_variants_train_and_decode(tmp_path, sections):
    sections = copy.deepcopy(sections)
    sections.setdefault("train", {}).update(epochs=1, max_steps=2, log_every=1)
    cfg = tiny_config(tmp_path / "data", **sections)
    metrics = train(load_config(cfg), tmp_path / "run", resume=False, log=quiet)
    decodes = cfg["eval"]["decode"]
    assert set(metrics["test"]) == set(decodes)
    steps = [r for r in log_rows(tmp_path / "run") if r["event"] == "step"]
    assert [r["step"] for r in steps] == [1, 2] and all(r["loss"] > 0 for r in steps)
    assert metrics["history"][0]["train_loss"] == pytest.approx(sum(r["loss"] for r in steps) / 2)
    # every decode's predictions file is what that decode gives on the checkpoint chosen for it
    from bertlab.checkpoint import best_folder, is_bilstm
    from bertlab.datasets.prepare import load_splits
    from bertlab.inference import decode_tags, word_logits
    from bertlab.knn import KNNClassifier
    from bertlab.checkpoint import load_best_into
    from bertlab.train.setup import build_model_and_tokenizer
    c = load_config(cfg)
    splits = load_splits(c.data)
    for d in decodes:
        model, tok = build_model_and_tokenizer(c.model, splits.labels, splits.train)
        folder = best_folder(tmp_path / "run", d, decodes)
        load_best_into(model, folder)
        if is_bilstm(model):
            from bertlab.baselines import WordTokenizer
            tok = WordTokenizer.from_pretrained(folder)
        logits = word_logits(model, tok, splits.test.sentences, c.data.max_length, c.data.stride)
        knn = KNNClassifier.load(folder / "knn.npz") if d == "knn" else None
        expected = decode_tags(d, logits, model, knn=knn)
        rows = [json.loads(l) for l in (tmp_path / "run" / f"predictions_test_{d}.jsonl").read_text().splitlines()]
        assert [r["pred"] for r in rows] == expected, d


def test_two_processes_equal_one_process(tmp_path):
    """torchrun with 2 CPU processes (gloo): each takes half of every global micro-batch, gradients
    are summed, the normaliser counts the global batch; after 3 steps (with accumulation) the
    parameters equal a single process's."""
    cfg = tiny_config(tmp_path / "data", model={"overrides": {**TINY_MODEL, "hidden_dropout_prob": 0.0,
                                                              "attention_probs_dropout_prob": 0.0}},
                      train={"epochs": 1, "max_steps": 3, "checkpoint_every": 0})
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           str(SCRIPT), str(tmp_path / "config.json"), str(tmp_path / "ddp")]
    env = subprocess_env()
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 process(es)" in done.stdout
    train(load_config(cfg), tmp_path / "single", resume=False, log=quiet)
    assert_same_params(final_params(tmp_path / "ddp"), final_params(tmp_path / "single"), atol=1e-6)
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp["world_size"] == 2 and ddp["steps"] == 3


# ---- command line ---------------------------------------------------------------------------

def tiny_toml(tmp_path) -> str:
    """The tiny config (tests/_train_script.py) written as a TOML file's text."""
    cfg = tiny_config(tmp_path / "data")
    return "\n".join(
        [f"[{s}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in vals.items() if not isinstance(v, dict))
         for s, vals in cfg.items()]) + "\n[model.overrides]\n" + "\n".join(
        f"{k} = {v}" for k, v in TINY_MODEL.items()) + "\n"


def test_cli_trains_and_reports_config_errors(tmp_path, capsys):
    toml = tiny_toml(tmp_path)
    path = tmp_path / "tiny.toml"
    path.write_text(toml)
    assert main(["--config", str(path), "--set", "train.bogus=1"]) == 2
    assert "--set train.bogus=1: [train] bogus: unknown key" in capsys.readouterr().err
    out = tmp_path / "cli"
    assert main(["--config", str(path), "--set", "train.max_steps=1", "--set", "train.epochs=1",
                 "--out", str(out), "--no-resume"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 1 and metrics["config"]["train"]["max_steps"] == 1


def test_crf_transitions_get_their_own_learning_rate():
    """optim.crf_lr puts the CRF's parameters in their own group (no decay), scheduled like the rest."""
    from bertlab.models import BertModel, TokenClassifier
    from bertlab.models.bert import BertConfig
    from bertlab.config import OptimConfig
    from bertlab.train.setup import make_optimizer
    model = TokenClassifier(BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
                                                 num_attention_heads=2, intermediate_size=16)),
                            ["O", "B-X", "I-X"], head="crf")
    crf_ids = {id(p) for p in model.crf.parameters()}
    opt = make_optimizer(model, OptimConfig(lr=2e-5, crf_lr=1e-3), torch.device("cpu"))
    crf_groups = [g for g in opt.param_groups if any(id(p) in crf_ids for p in g["params"])]
    assert len(crf_groups) == 1 and {id(p) for p in crf_groups[0]["params"]} == crf_ids
    assert crf_groups[0]["lr"] == crf_groups[0]["initial_lr"] == 1e-3 and crf_groups[0]["weight_decay"] == 0.0
    others = [g for g in opt.param_groups if g is not crf_groups[0]]
    assert all(g["lr"] == g["initial_lr"] == 2e-5 for g in others)
    # crf_lr = 0 means "same as optim.lr"
    opt = make_optimizer(model, OptimConfig(lr=2e-5), torch.device("cpu"))
    assert all(g["initial_lr"] == 2e-5 for g in opt.param_groups)


def test_cli_gradflow_section_records_the_gradient_flow(tmp_path, capsys):
    """A [gradflow] section in a train config turns the instruments on (issue #6)."""
    toml = tiny_toml(tmp_path) + "\n[gradflow]\nevery = 1\nper_class_every = 1\n"
    path = tmp_path / "tiny.toml"
    path.write_text(toml)
    out = tmp_path / "cli"
    assert main(["--config", str(path), "--set", "train.max_steps=2", "--set", "train.epochs=1",
                 "--out", str(out), "--no-resume"]) == 0
    import csv
    rows = list(csv.DictReader((out / "gradflow" / "gradflow.csv").open()))
    assert {int(r["step"]) for r in rows} == {1, 2}
    layers = {r["layer"] for r in rows}
    assert {"embeddings", "layer.0", "layer.1", "head"} <= layers
    assert (out / "gradflow" / "summary.md").exists()
    # a bad [gradflow] key is a config error naming the file
    path.write_text(toml + "bogus = 1\n")
    assert main(["--config", str(path), "--out", str(tmp_path / "bad"), "--no-resume"]) == 2
    assert str(path) in capsys.readouterr().err


class _Crash(Exception):
    pass


def test_gradflow_of_an_interrupted_and_resumed_run_equals_the_uninterrupted_one(tmp_path):
    """A crash right after a mid-epoch checkpoint, then a resume with a new recorder: the gradient-
    flow files (every statistic, the running loss variance and the epoch means included) are
    byte-identical to those of a run that was never stopped, and nothing is recorded twice."""
    from bertlab.callbacks import Callback
    from bertlab.gradflow import GradFlowRecorder, read_rows

    class CrashAfterCheckpoint(Callback):
        def on_checkpoint(self, step):
            if step == 2:  # checkpoints every 2 steps: this one is in the middle of epoch 0
                raise _Crash(step)

    cfg = tiny_config(tmp_path / "data")
    recorder = lambda out: GradFlowRecorder(out / "gradflow", every=1, per_class_every=2)  # noqa: E731
    whole = tmp_path / "whole"
    train(load_config(cfg), whole, callbacks=[recorder(whole)], resume=False, log=quiet)
    out = tmp_path / "resumed"
    with pytest.raises(_Crash):
        train(load_config(cfg), out, callbacks=[recorder(out), CrashAfterCheckpoint()], resume=False, log=quiet)
    assert {r["step"] for r in read_rows(out / "gradflow" / "gradflow.csv")} == {1, 2}
    train(load_config(cfg), out, callbacks=[recorder(out)], resume=True, log=quiet)
    for name in ("gradflow.csv", "gradflow.jsonl"):
        assert (out / "gradflow" / name).read_bytes() == (whole / "gradflow" / name).read_bytes(), name
    steps = [r["step"] for r in read_rows(whole / "gradflow" / "gradflow.csv") if r["statistic"] == "batch_loss"]
    assert steps == list(range(1, 9))  # 2 epochs x 4 steps, each once


def test_a_misspelt_callback_hook_is_an_error_not_silence():
    from bertlab.callbacks import Callback, CallbackList

    class Typo:
        def on_epoch_ends(self, epoch, record):
            pass

    class Fine(Callback):
        def __init__(self):
            self.seen = []

        def on_epoch_end(self, epoch, record):
            self.seen.append(epoch)
    with pytest.raises(TypeError, match="on_epoch_ends"):
        CallbackList([Typo()])
    fine = Fine()
    CallbackList([fine]).on_epoch_end(3, {})
    assert fine.seen == [3]


def test_fp16_trains_with_a_grad_scaler_and_resumes(tmp_path):
    """precision = "fp16": autocast in float16 and a GradScaler whose state is checkpointed; the
    run learns like fp32 (same loss curve to fp16 accuracy) and resumes after an interruption."""
    cfg = tiny_config(tmp_path / "data", train={"precision": "fp16", "epochs": 2})
    fp16 = train(load_config(cfg), tmp_path / "fp16", resume=False, log=quiet)
    ckpt = torch.load(tmp_path / "fp16" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert fp16["precision"] == "fp16" and ckpt["scaler"]["scale"] > 0
    fp32 = train(load_config(tiny_config(tmp_path / "data2", train={"epochs": 2})), tmp_path / "fp32",
                 resume=False, log=quiet)
    for a, b in zip(fp16["history"], fp32["history"]):
        assert abs(a["train_loss"] - b["train_loss"]) < 0.05 * b["train_loss"]


def test_fp16_overflow_skips_the_step_instead_of_stopping(tmp_path):
    """An inf gradient under fp16 is an overflow the scaler handles (the step is skipped and the
    scale lowered), not divergence: training goes on and the weights do not move that step."""
    from bertlab.callbacks import Callback
    seen = {}

    class Overflow(Callback):
        """An fp16 overflow as it happens: an inf in one parameter's gradient during backward."""
        def on_batch(self, step, model, batch, logits, loss):
            if step == 2 and "hook" not in seen:
                seen["before"] = {n: p.detach().clone() for n, p in model.named_parameters()}
                seen["hook"] = next(model.parameters()).register_hook(lambda g: torch.full_like(g, float("inf")))

        def after_backward(self, step, model):
            if step == 2:
                seen["hook"].remove()

        def after_optimizer_step(self, step, model, optimizer):
            if step == 2:
                seen["after"] = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = tiny_config(tmp_path / "data", train={"precision": "fp16", "epochs": 1})
    metrics = train(load_config(cfg), tmp_path / "run", callbacks=[Overflow()], resume=False, log=quiet)
    assert metrics["steps"] == 4
    for n in seen["before"]:
        assert torch.equal(seen["before"][n], seen["after"][n]), n


def test_tensorboard_gets_the_log_lines_and_the_epoch_scores(tmp_path, monkeypatch):
    import types
    calls = []

    class FakeWriter:
        def __init__(self, log_dir, purge_step=None):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            calls.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            calls.append(("closed", None, None))
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object())
    cfg = tiny_config(tmp_path / "data", train={"tensorboard": True, "log_every": 1})
    metrics = train(load_config(cfg), tmp_path / "run", resume=False, log=quiet)
    logged = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in logged if r["event"] == "step"]
    assert [(t, v, s) for t, v, s in calls if t == "train/loss"] == [("train/loss", r["loss"], r["step"]) for r in steps]
    dev = [(v, s) for t, v, s in calls if t == "dev_argmax/f1_micro"]
    assert dev == [(h["dev"]["argmax"]["f1_micro"], h["step"]) for h in metrics["history"]]
    assert calls[-1][0] == "closed"


def test_tensorboard_without_the_package_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match=r"\[train\] tensorboard = true needs the tensorboard package"):
        load_config(tiny_config(tmp_path / "data", train={"tensorboard": True}))



def test_btl_ignore_mode_trains_on_all_labelled_tokens_as_denominator(minilm_path):
    """docs/btl.md and docs/training.md agree with the code: in training, an ignore-mode copy's loss
    is the sum over the tokens it keeps divided by ALL labelled tokens of the step (then the mean
    over copies), not the copy's own-token mean that btl_fused_loss with reduction="mean" gives."""
    import torch.nn.functional as F

    from bertlab.batching import collate
    from bertlab.losses import LossConfig, binary_token_label_batches, btl_fused_loss, build_loss
    windows = _windows(minilm_path, LABELS, SENTENCES)
    batch = collate(windows)
    cfg = load_config({"sampler": {"name": "btl", "btl_mode": "ignore"}})
    objective = build_objective(cfg, LABELS, windows)
    model = _tiny_model(LABELS).eval()
    loss_sum, logits = step_loss(model, batch, objective)
    ours = loss_sum / objective.normaliser(list(range(len(windows))))
    n_all = int((batch["labels"] != -100).sum())
    copies = binary_token_label_batches(batch, LABELS, "ignore", "present")
    per_copy_sum = [F.cross_entropy(logits.reshape(-1, 5), c["labels"].reshape(-1), ignore_index=-100,
                                    reduction="sum") for _, c, _ in copies]
    torch.testing.assert_close(ours, sum(per_copy_sum) / len(copies) / n_all)
    own_mean, _ = btl_fused_loss(logits, batch["labels"], LABELS, build_loss(LossConfig()), "ignore")
    assert not torch.allclose(ours, own_mean)  # the standalone per-copy mean is another normalisation


def test_auto_precision_is_bf16_on_cuda_and_on_cpus_with_bf16_instructions(monkeypatch):
    """precision = "auto": bf16 autocast where the hardware does bf16 (CUDA; a CPU with the
    avx512_bf16 or amx_bf16 flag), fp32 elsewhere; explicit precisions are kept."""
    import bertlab.train.runtime as T
    flags = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f {}\nbugs\t\t: spectre_v1\n"
    assert T.cpu_has_bf16(flags.format("avx512_bf16"))
    assert T.cpu_has_bf16(flags.format("amx_bf16 amx_tile"))
    assert not T.cpu_has_bf16(flags.format("avx512_vnni"))  # VNNI (int8) is not bf16
    assert not T.cpu_has_bf16(flags.format("amx_tile"))     # AMX without its bf16 unit
    assert not T.cpu_has_bf16("")                           # no flags line (not Linux, a container)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(T, "cpu_has_bf16", lambda cpuinfo=None: True)
    assert T.resolve_precision("auto", cpu) == "bf16" and T.resolve_precision("auto", cuda) == "bf16"
    assert T.resolve_precision("fp32", cpu) == "fp32" and T.resolve_precision("fp16", cuda) == "fp16"
    monkeypatch.setattr(T, "cpu_has_bf16", lambda cpuinfo=None: False)
    assert T.resolve_precision("auto", cpu) == "fp32" and T.resolve_precision("auto", cuda) == "bf16"
    assert T.resolve_precision("bf16", cpu) == "bf16"


def test_cuda_and_auto_pick_an_indexed_gpu(monkeypatch):
    """device = "cuda" or "auto" on a GPU machine: torch.cuda.set_device takes only an indexed
    device (it raises on a bare "cuda" before touching the GPU), so the process's current GPU is
    named, or a torchrun rank's own; "cuda:N" is kept. CUDA is simulated; tests/test_cuda.py runs
    it for real where a GPU is."""
    import bertlab.train.runtime as T
    chosen = []

    def set_device(device):
        if torch.device(device).index is None:  # what torch does, without a GPU
            raise ValueError(f"Expected a torch.device with a specified index, got {device}")
        chosen.append(str(device))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    single, rank3 = T.Dist(), T.Dist(3, 4, 3, False)
    assert T.pick_device("cuda", single) == torch.device("cuda:0")
    assert T.pick_device("auto", single) == torch.device("cuda:0")
    assert T.pick_device("cuda:1", single) == torch.device("cuda:1")
    assert T.pick_device("cuda", rank3) == torch.device("cuda:3")
    assert T.pick_device("cpu", single) == torch.device("cpu")
    assert chosen == ["cuda:0", "cuda:0", "cuda:1", "cuda:3"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert T.pick_device("auto", single) == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        T.pick_device("cuda", single)


def test_cpu_share_is_cpu_seconds_over_wall_seconds_times_threads(reference, tmp_path, monkeypatch):
    """Every CPU epoch records the training loop's CPU share, and the run its share over all epochs.
    A run that gets half as many CPU seconds as wall seconds (another busy process on its cores;
    simulated by a process clock at half speed) reads 0.5 / threads: its seconds overstate its cost."""
    cfg, _, metrics = reference
    threads = torch.get_num_threads()
    for t in metrics["timing"]:
        assert t["threads"] == threads and 0 < t["cpu_share"] <= 1.5, t
    assert metrics["cpu_share"] == pytest.approx(sum(t["cpu_seconds"] for t in metrics["timing"])
                                                 / sum(t["train_seconds"] * threads for t in metrics["timing"]))
    monkeypatch.setattr(time, "process_time", lambda: time.perf_counter() * 0.5)
    halved = train(load_config(cfg), tmp_path / "half", resume=False, log=quiet)
    assert [t["cpu_share"] for t in halved["timing"]] == pytest.approx([0.5 / threads] * 2, rel=1e-3)
    assert halved["cpu_share"] == pytest.approx(0.5 / threads, rel=1e-3)


def test_resume_from_a_checkpoint_without_cpu_time_leaves_that_epochs_share_unknown(reference, tmp_path):
    """A checkpoint written before CPU seconds were kept (no ``epoch_cpu_seconds``), mid-epoch: that
    epoch's share is unknown (None), not the small number its missing seconds would give; the next
    epoch is measured again; the run's share is unknown."""
    cfg, _, metrics = reference
    out = _killed_mid_epoch(cfg, tmp_path)
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    progress = json.loads(ckpt["progress"])
    assert progress["epoch"] == 0 and progress["epoch_train_seconds"] > 0
    del progress["epoch_cpu_seconds"]
    torch.save({**ckpt, "progress": json.dumps(progress)}, out / "checkpoint.pt")
    resumed = train(load_config(cfg), out, resume=True, log=quiet)
    assert strip_timing(resumed) == strip_timing(metrics)
    assert resumed["timing"][0]["cpu_share"] is None and 0 < resumed["timing"][1]["cpu_share"] <= 1.5
    assert resumed["cpu_share"] is None


# ---- more (or fewer) epochs for a run that has a checkpoint -----------------------------------

def _epochs_config(data_dir: Path, epochs: int, schedule: str = "constant", warmup_ratio: float = 0.0,
                   **train_keys) -> TrainConfig:
    cfg = tiny_config(data_dir)
    cfg["optim"].update(schedule=schedule, warmup_ratio=warmup_ratio)
    cfg["train"].update(epochs=epochs, **train_keys)
    return load_config(cfg)


def test_more_epochs_continue_a_finished_run_as_the_longer_run_from_scratch(tmp_path):
    """A finished 2-epoch run with a constant schedule, asked for 4 epochs, trains epochs 2-3 from
    its checkpoint: metrics, parameters and step log equal a 4-epoch run from scratch."""
    data = tmp_path / "data"
    longer = train(_epochs_config(data, 4), tmp_path / "scratch", resume=False, log=quiet)
    out = tmp_path / "run"
    short = train(_epochs_config(data, 2), out, resume=False, log=quiet)
    assert short["epochs"] == 2 and not short["stopped_early"]
    lines = []
    continued = train(_epochs_config(data, 4), out, resume=True, log=lines.append)
    assert any(l.startswith("[train] epochs 2 -> 4: continuing at epoch 2") for l in lines), lines
    assert continued["epochs"] == 4 and continued["config"]["train"]["epochs"] == 4
    assert strip_timing(continued) == strip_timing(longer)
    assert_same_params(final_params(out), final_params(tmp_path / "scratch"))
    steps = [(r["step"], r["loss"]) for r in log_rows(out) if r["event"] == "step"]
    assert steps == [(r["step"], r["loss"]) for r in log_rows(tmp_path / "scratch") if r["event"] == "step"]
    assert [r.get("epochs_from") for r in log_rows(out) if r["event"] == "resume"] == [2]
    assert [r["event"] for r in log_rows(out)].count("end") == 1  # the 2-epoch end was dropped with its log tail


def test_more_epochs_for_a_run_that_stopped_early_train_nothing(tmp_path):
    """lr 0: no dev score improves after epoch 0, so patience 1 stops the run after epoch 1 under any
    cap above 2; a larger cap scores it again under the new config and trains no step more."""
    data = tmp_path / "data"
    cfg = tiny_config(data)
    cfg["optim"].update(lr=0.0, schedule="constant", warmup_ratio=0.0)
    cfg["train"].update(epochs=3, early_stopping_patience=1)
    out = tmp_path / "run"
    first = train(load_config(cfg), out, resume=False, log=quiet)
    assert first["stopped_early"] and first["epochs"] == 2
    cfg["train"]["epochs"] = 6
    scratch = train(load_config(cfg), tmp_path / "scratch", resume=False, log=quiet)
    lines = []
    again = train(load_config(cfg), out, resume=True, log=lines.append)
    assert any("the run stopped early after epoch 2" in l for l in lines), lines
    assert again["steps"] == first["steps"] and again["config"]["train"]["epochs"] == 6
    assert strip_timing(again) == strip_timing(scratch)


@pytest.mark.parametrize("schedule, warmup_ratio, epochs, message", [
    ("linear", 0.0, 4, r"the linear schedule \(warmup_ratio 0\.0\) stretches with the number of epochs, so "
                       r"step 2 of the 8 already taken had another learning rate"),
    ("constant", 0.2, 4, r"the constant schedule \(warmup_ratio 0\.2\) stretches with the number of epochs"),
    ("constant", 0.0, 1, r"the run has already trained 2 epoch\(s\)"),
])
def test_an_epochs_change_that_would_not_be_exact_is_refused_and_loses_nothing(tmp_path, schedule, warmup_ratio,
                                                                               epochs, message):
    data, out = tmp_path / "data", tmp_path / "run"
    train(_epochs_config(data, 2, schedule, warmup_ratio), out, resume=False, log=quiet)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match=rf"checkpoint\.pt: \[train\] epochs 2 -> {epochs}: {message}"):
        train(_epochs_config(data, epochs, schedule, warmup_ratio), out, resume=True, log=quiet)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
