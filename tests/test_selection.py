"""Per-epoch learning curves and checkpoint selection per decoder.

References: the dev scores a run records for each epoch equal a fresh evaluation of that epoch's
weights (a stale cache or a mix-up of epochs fails this); each decode is scored on the checkpoint
its own dev score chose (a scripted dev-score sequence fixes which epoch that must be).
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch

import bertlab.train.scoring as scoring_module
from bertlab.config import EvalConfig
from bertlab.selection import update_best
from bertlab.config import load_config
from bertlab.datasets.prepare import load_splits
from bertlab.train import train

sys.path.insert(0, str(Path(__file__).parent))
from _train_script import tiny_config  # noqa: E402

DECODES = ["argmax", "knn", "calibrated"]


def quiet(line: str) -> None:
    pass


def assert_saved_weights(folder: Path, state: dict, labels: list[str]) -> None:
    from bertlab.checkpoint import load_pretrained
    saved, _ = load_pretrained(folder, labels=labels)
    saved = saved.state_dict()
    assert saved.keys() == state.keys()
    for key, value in saved.items():
        assert torch.equal(value, state[key]), (folder.name, key)


class Snapshots:
    """Keeps the model's weights at the end of every epoch (the callback protocol gives the model
    at each optimizer step and the epoch's record at its end)."""

    def __init__(self):
        self.model, self.states = None, {}

    def after_optimizer_step(self, step, model, optimizer):
        self.model = model

    def on_epoch_end(self, epoch, record):
        self.states[epoch] = copy.deepcopy(self.model.state_dict())


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory):
    root = tmp_path_factory.mktemp("select")
    cfg = load_config(tiny_config(root / "data", train={"epochs": 3, "seed": 1},
                                  eval={"decode": DECODES, "knn_k": 3}))
    snaps = Snapshots()
    metrics = train(cfg, root / "run", callbacks=[snaps], resume=False, log=quiet)
    return cfg, root / "run", metrics, snaps


def test_every_epoch_records_every_decode_and_the_dev_loss(three_epochs):
    cfg, run, metrics, _ = three_epochs
    assert [h["epoch"] for h in metrics["history"]] == [0, 1, 2]
    for h in metrics["history"]:
        assert set(h["dev"]) == set(DECODES) and h["dev_loss"] > 0 and h["train_loss"] > 0
        for scores in h["dev"].values():
            assert set(scores) == {"f1_micro", "f1_macro", "unweighted_accuracy"}
    lines = (run / "metrics.csv").read_text().splitlines()
    assert len(lines) == 4 and lines[0].startswith("epoch,step,train_loss,dev_loss,dev_f1_micro_argmax")
    first = dict(zip(lines[0].split(","), lines[1].split(",")))
    assert float(first["dev_loss"]) == pytest.approx(metrics["history"][0]["dev_loss"], rel=1e-5)


def test_recorded_dev_scores_equal_a_fresh_evaluation_of_that_epochs_weights(three_epochs):
    # the stale-attention-cache bug made epochs >= 1 differ here: the loop's model scored
    # with the first evaluation's fused QKV weights
    cfg, run, metrics, snaps = three_epochs
    from bertlab.checkpoint import load_pretrained
    splits = load_splits(cfg.data)
    fresh, tokenizer = load_pretrained(run / "best", labels=splits.labels)
    options = dict(max_length=cfg.data.max_length, stride=cfg.data.stride, batch_size=64, precision="fp32")
    for epoch, state in snaps.states.items():
        fresh.load_state_dict(state)
        dev, _ = scoring_module.evaluate_dev(fresh, tokenizer, splits, cfg, options)
        recorded = metrics["history"][epoch]
        assert dev["loss"] == pytest.approx(recorded["dev_loss"], rel=1e-5, abs=1e-7), epoch
        assert dev["decodes"] == recorded["dev"], epoch


def test_each_decode_is_scored_on_its_own_best_checkpoint(three_epochs):
    cfg, run, metrics, snaps = three_epochs
    for decode in DECODES:
        curve = [h["dev"][decode]["f1_micro"] for h in metrics["history"]]
        best = max(curve)
        expected = max(i for i, v in enumerate(curve) if v == best)  # ties: the later epoch
        assert metrics["best_epochs"][decode] == expected
        assert metrics["test"][decode]["best_epoch"] == expected
        folder = run / ("best" if decode == DECODES[0] else f"best-{decode}")
        assert_saved_weights(folder, snaps.states[expected], metrics["labels"])
        meta = json.loads((folder / "bertlab_train.json").read_text())
        assert meta["epoch"] == expected and meta["decode"] == decode
        assert meta["config"]["data"]["max_length"] == cfg.data.max_length
    assert (run / "best-knn" / "knn.npz").exists()
    assert (run / "best-calibrated" / "calibration.json").exists()


def test_a_flat_argmax_does_not_pin_knn_to_the_first_epoch(tmp_path, monkeypatch):
    """The regression of the converged-studies issue: argmax dev F1 is 0 every epoch (as under
    BTL) while KNN's peaks at epoch 1. KNN rows must come from epoch 1, argmax from the last."""
    scripted = {"argmax": [0.0, 0.0, 0.0, 0.0], "knn": [0.1, 0.4, 0.3, 0.2]}
    real = scoring_module.evaluate_dev

    def fake_evaluate_dev(model, tokenizer, splits, cfg, options, priors=None, loss=None):
        dev, fitted = real(model, tokenizer, splits, cfg, options)
        epoch = len(fake_evaluate_dev.seen)
        fake_evaluate_dev.seen.append(epoch)
        for decode, values in scripted.items():
            dev["decodes"][decode]["f1_micro"] = values[epoch]
        return dev, fitted
    fake_evaluate_dev.seen = []
    monkeypatch.setattr(scoring_module, "evaluate_dev", fake_evaluate_dev)
    cfg = load_config(tiny_config(tmp_path / "data", train={"epochs": 4, "early_stopping_patience": 3},
                                  eval={"decode": ["argmax", "knn"], "knn_k": 3}))
    snaps = Snapshots()
    metrics = train(cfg, tmp_path / "run", callbacks=[snaps], resume=False, log=quiet)
    assert metrics["best_epochs"] == {"argmax": 3, "knn": 1}
    assert metrics["test"]["knn"]["best_epoch"] == 1 and metrics["test"]["argmax"]["best_epoch"] == 3
    assert_saved_weights(tmp_path / "run" / "best-knn", snaps.states[1], metrics["labels"])
    # early stopping counts strict gains only: knn fell after epoch 1, argmax stayed flat
    assert metrics["history"][-1]["epoch"] == 3 and not metrics["stopped_early"]


@pytest.mark.parametrize("select, expected", [("f1_micro", {"argmax": 2, "knn": 1}),
                                              ("loss", {"argmax": 0, "knn": 0}),
                                              ("last", {"argmax": 2, "knn": 2})])
def test_update_best_rules(select, expected):
    devs = [{"loss": 0.5, "decodes": {"argmax": {"f1_micro": 0.0}, "knn": {"f1_micro": 0.2}}},
            {"loss": 0.6, "decodes": {"argmax": {"f1_micro": 0.0}, "knn": {"f1_micro": 0.3}}},
            {"loss": 0.7, "decodes": {"argmax": {"f1_micro": 0.0}, "knn": {"f1_micro": 0.3 - 1e-9}}}]
    best, gains = {}, []
    for epoch, dev in enumerate(devs):
        _, progressed = update_best(best, EvalConfig(decode=["argmax", "knn"], select=select), epoch, dev)
        gains.append(progressed)
    assert {k: v["epoch"] for k, v in best.items()} == expected
    if select == "f1_micro":
        assert gains == [True, True, False]  # epoch 2: argmax only tied, knn fell


def test_hard_links_when_decodes_agree(three_epochs):
    _, run, metrics, _ = three_epochs
    epochs = metrics["best_epochs"]
    for decode in DECODES[1:]:
        same = (run / "best" / "model.safetensors").stat().st_ino == \
               (run / f"best-{decode}" / "model.safetensors").stat().st_ino
        assert same == (epochs[decode] == epochs[DECODES[0]])


def test_the_time_split_adds_up(three_epochs):
    """metrics.json says where a run's seconds went; the parts come from the per-epoch records."""
    _, _, metrics, _ = three_epochs
    split = metrics["time_split"]
    assert set(split) >= {"training", "dev_forward", "knn_fit", "calibration_fit", "dev_decoding",
                          "best_model_saving", "checkpoints", "final_scoring"}
    assert split["training"] == pytest.approx(sum(t["train_seconds"] for t in metrics["timing"]))
    assert all(v >= 0 for v in split.values()) and split["knn_fit"] > 0 and split["final_scoring"] > 0
    per_epoch_eval = sum(t["eval_seconds"] for t in metrics["timing"])
    parts = sum(split[k] for k in ("dev_forward", "knn_fit", "calibration_fit", "dev_decoding", "best_model_saving"))
    assert parts <= per_epoch_eval + 1e-6  # the parts are inside the measured evaluation time


def test_rescore_bad_input_is_one_line_naming_the_folder_or_file(tmp_path, capsys):
    from bertlab.selection import rescore_main
    assert rescore_main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err == f"bertlab rescore: {tmp_path / 'missing'}: no finished run folders (*/metrics.json)\n"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text("{bad")
    assert rescore_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bertlab rescore: {tmp_path / 'run' / 'metrics.json'}: not valid JSON (") and err.count("\n") == 1


def test_bio_decodes_and_cross_fitted_calibration_select_and_score_as_documented(tmp_path):
    """Every ``+bio`` decode is its own decode (own dev curve, own best folder with the KNN
    reference / calibration it needs); with ``calibration_fit = "crossfit"`` each epoch's
    calibrated dev scores are those of a fresh cross-fit on that epoch's weights, the saved
    calibration is the fit on all of dev, and test predictions use it."""
    import numpy as np

    from bertlab.calibration import BiasCalibrator, CrossFitCalibrator
    from bertlab.checkpoint import best_folder, load_pretrained
    from bertlab.datasets.tags import tag_problems
    from bertlab.inference import decode_tags, word_logits
    from bertlab.knn import KNNClassifier
    from bertlab.metrics import entity_report
    decodes = ["argmax", "argmax+bio", "knn+bio", "calibrated", "calibrated+bio"]
    cfg = load_config(tiny_config(tmp_path / "data", train={"epochs": 2, "seed": 1},
                                  eval={"decode": decodes, "knn_k": 3, "calibration_fit": "crossfit"}))
    snaps = Snapshots()
    run = tmp_path / "run"
    metrics = train(cfg, run, callbacks=[snaps], resume=False, log=quiet)
    assert metrics["config"]["eval"]["calibration_fit"] == "crossfit"
    splits = load_splits(cfg.data)
    dev, test = splits.dev.sentences, splits.test.sentences
    gold = [list(s.tags) for s in dev]
    model, tokenizer = load_pretrained(run / "best", labels=splits.labels)
    options = dict(max_length=cfg.data.max_length, stride=cfg.data.stride)

    def f1(tags, pred):
        return entity_report(tags, pred, scheme="IOB2", mode="strict", zero_division=0)["micro avg"]["f1-score"]
    for epoch, state in snaps.states.items():
        model.load_state_dict(state)
        logits = word_logits(model, tokenizer, dev, **options)
        cross = CrossFitCalibrator(model.labels).fit(logits, gold, [s.doc_id for s in dev])
        for d in ("calibrated", "calibrated+bio"):
            recorded = metrics["history"][epoch]["dev"][d]["f1_micro"]
            assert f1(gold, decode_tags(d, logits, model, calibrator=cross)) == pytest.approx(recorded, abs=1e-12)
    for d in decodes:
        folder = best_folder(run, d, decodes)
        assert json.loads((folder / "bertlab_train.json").read_text())["decode"] == d
        model.load_state_dict(snaps.states[metrics["best_epochs"][d]])
        dev_logits = word_logits(model, tokenizer, dev, **options)
        knn = KNNClassifier.load(folder / "knn.npz") if d == "knn+bio" else None
        calibrator = None
        if d.startswith("calibrated"):
            calibrator = BiasCalibrator.load(folder / "calibration.json")
            np.testing.assert_array_equal(calibrator.bias, BiasCalibrator(model.labels).fit(dev_logits, gold).bias)
        expected = decode_tags(d, word_logits(model, tokenizer, test, **options), model, knn=knn, calibrator=calibrator)
        rows = [json.loads(line) for line in (run / f"predictions_test_{d}.jsonl").read_text().splitlines()]
        assert [r["pred"] for r in rows] == expected, d
        if d.endswith("+bio"):
            assert all(not tag_problems(r["pred"], "IOB2") for r in rows)
    # the final dev score of a calibrated decode is its selection score: out of sample too
    for d in ("calibrated", "calibrated+bio"):
        best = metrics["history"][metrics["best_epochs"][d]]["dev"][d]["f1_micro"]
        assert metrics["dev"][d]["micro_f1"] == pytest.approx(best, abs=1e-12)


def test_folders_of_one_epoch_share_their_forward_pass_and_score_as_copies_do(three_epochs, tmp_path, monkeypatch):
    """Final scoring runs one dev and one test forward pass per weights file: best folders that
    hard-link one file (saved at one epoch) share it, and their scores and prediction files equal
    those of the same weights held as separate copies, each with its own forward pass."""
    import shutil
    import bertlab.inference as inference
    from bertlab.checkpoint import link_folder
    from bertlab.selection import final_evaluation
    from bertlab.train.setup import build_model_and_tokenizer
    cfg, run, metrics, _ = three_epochs
    splits = load_splits(cfg.data)
    options = dict(max_length=cfg.data.max_length, stride=cfg.data.stride, batch_size=cfg.train.eval_batch_size,
                   precision="fp32")
    real, calls = inference.word_logits, []

    dev, test = splits.dev.sentences, splits.test.sentences  # each a new list of the same sentences

    def counted(model, tokenizer, sentences, *args, **kw):
        if sentences[0] is dev[0] or sentences[0] is test[0]:
            calls.append(sentences[0] is test[0])
        return real(model, tokenizer, sentences, *args, **kw)
    monkeypatch.setattr(inference, "word_logits", counted)

    scored = {}
    for layout in ("linked", "copied"):
        out = tmp_path / layout
        shutil.copytree(run / "best", out / "best")
        for decode in DECODES[1:]:  # the weights of best/ under every decode, without its KNN or calibration
            if layout == "linked":
                link_folder(out / "best", out / f"best-{decode}")
            else:
                shutil.copytree(out / "best", out / f"best-{decode}")
        model, tok = build_model_and_tokenizer(cfg.model, splits.labels, splits.train)
        calls.clear()
        result = final_evaluation(cfg, model, tok, splits, out, options, quiet)
        scored[layout] = (len(calls), result, {f.name: f.read_text() for f in out.glob("predictions_*.jsonl")})
    assert scored["linked"][0] == 2 and scored["copied"][0] == 2 * len(DECODES)

    def scores(result):
        return {(s, d): {k: v for k, v in r.items() if k != "tokens_per_second"}
                for s, by in result.items() for d, r in by.items()}
    assert scores(scored["linked"][1]) == scores(scored["copied"][1])
    assert scored["linked"][2] == scored["copied"][2] and len(scored["linked"][2]) == 2 * len(DECODES)
