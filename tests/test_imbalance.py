"""The class-imbalance methods of #40 as a user meets them: chosen in TOML (``bertlab train`` and
studies), validated with one-line errors naming the field, recorded in metrics.json, and run by
the training loop (deferred re-weighting at its epoch, sentence-level resampling and its table,
the post-hoc logit-adjusted decode, the CRF head where a method applies to it).

The losses' equations are tested in test_losses.py, their training paths in test_loss_path.py,
the resampling table in test_sampling.py and the decoder in test_logit_adjustment.py.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bertlab.config import ConfigError
from bertlab.losses import class_weights, label_counts
from bertlab.sampling import sentence_repeats
from bertlab.config import load_config
from bertlab.losses.objective import build_objective
from bertlab.train import train

sys.path.insert(0, str(Path(__file__).parent))
from _train_script import tiny_config  # noqa: E402
from conftest import write_study  # noqa: E402


def quiet(line: str) -> None:
    pass


def log_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


# ---- TOML: selectable, validated, recorded --------------------------------------------------------

SECTIONS = [
    '[loss]\nname = "logit_adjusted"\ntau = 0.5\nlabel_smoothing = 0.1\n',
    '[loss]\nname = "balanced_softmax"\n',
    '[loss]\nname = "ldam"\nmax_margin = 0.3\nscale = 10.0\ndrw_epoch = 1\ndrw_beta = 0.999\n',
    '[loss]\nname = "dice"\nalpha = 0.5\ngamma = 0.1\n',
    '[loss]\nname = "weighted_ce"\nlabel_smoothing = 0.05\nreduction = "weighted_mean"\n',
    '[loss]\nname = "ce"\ndrw_epoch = 2\n[train]\nepochs = 3\n',
    '[sampler]\nname = "resample"\nmethod = "nsCRD"\n',
    '[eval]\ndecode = ["argmax", "logit_adjusted"]\n',
]


@pytest.mark.parametrize("toml", SECTIONS)
def test_each_method_is_selectable_from_toml(tmp_path, toml):
    path = tmp_path / "run.toml"
    path.write_text(toml)
    cfg = load_config(path)
    import tomllib
    for section, values in tomllib.loads(toml).items():
        for key, value in values.items():
            assert getattr(getattr(cfg, section), key) == value


@pytest.mark.parametrize("toml, expected", [
    ('[loss]\nname = "logit_adjusted"\ntau = -1.0\n', "[loss] LossConfig.tau=-1.0 must be >= 0"),
    ('[loss]\nname = "logit_adjusted"\ntau = "one"\n', "[loss] tau: expected a number or none, got 'one'"),
    ('[loss]\nname = "ce"\ntau = 1.0\n', "[loss] LossConfig.tau=1.0 is only used by name='logit_adjusted'"),
    ('[loss]\nname = "ldam"\nscale = 0\n', "[loss] LossConfig.scale=0.0 must be > 0"),
    ('[loss]\nname = "focal"\nmax_margin = 0.5\n', "[loss] LossConfig.max_margin=0.5 is only used by name='ldam'"),
    ('[loss]\nname = "dice"\nalpha = "weights"\n', "[loss] LossConfig.alpha='weights': the dice loss's alpha"),
    ('[loss]\nname = "dice"\nlabel_smoothing = 0.1\n', "[loss] LossConfig.label_smoothing=0.1 is only used by"),
    ('[loss]\nname = "ce"\nlabel_smoothing = 1.5\n', "[loss] LossConfig.label_smoothing=1.5 must be in [0, 1)"),
    ('[loss]\nname = "balanced_softmax"\ndrw_epoch = 1\n', "[loss] LossConfig.drw_epoch=1 is only used by"),
    ('[loss]\nname = "ldam"\ndrw_epoch = 3\n[train]\nepochs = 3\n', "[loss] drw_epoch: the re-weighting would start"),
    ('[loss]\nname = "ldam"\ndrw_epochs = 1\n', "[loss] drw_epochs: unknown key"),
    ('[loss]\nname = "ldam"\n[model]\nhead = "crf"\n', "[loss] name/reduction: a CRF head trains on its own"),
    ('[loss]\nlabel_smoothing = 0.1\n[model]\nhead = "crf"\n', "[loss] label_smoothing: a CRF head"),
    ('[loss]\ndrw_epoch = 0\n[model]\nhead = "crf"\n', "[loss] drw_epoch: a CRF head"),
    ('[sampler]\nname = "resample"\n', '[sampler] method: name = "resample" needs a method'),
    ('[sampler]\nname = "resample"\nmethod = "SCRD"\n', "[sampler] method: expected one of"),
    ('[sampler]\nname = "btl"\nmethod = "sCRD"\n', '[sampler] method: only used with name = "resample"'),
])
def test_bad_fields_are_one_line_errors_naming_them(tmp_path, toml, expected):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: ") and expected in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_a_decode_fitted_on_dev_needs_a_dev_set(tmp_path):
    cfg = tiny_config(tmp_path, eval={"decode": ["argmax", "logit_adjusted"]})
    cfg["data"]["dev_file"] = ""
    with pytest.raises(ConfigError, match="'logit_adjusted' is fitted on dev and needs a dev set"):
        load_config(cfg)


STUDY = """
[study]
name = "imbalance"
baseline = { loss = "ce", decode = "argmax" }

[base.data]
name = "maccrobat"
max_documents = 2

[base.train]
epochs = 2

[base.eval]
decode = ["argmax", "logit_adjusted"]

[sweep]
loss = [{label = "ce", name = "ce"}, {label = "la", name = "logit_adjusted", tau = 0.5},
        {label = "bs", name = "balanced_softmax"}, {label = "ldam", name = "ldam", drw_epoch = 1},
        {label = "dice", name = "dice"}, {label = "ls", name = "ce", label_smoothing = 0.1}]
sampler = [{label = "atl", name = "atl"}, {label = "rs", name = "resample", method = "sCRD"}]
"""


def test_studies_accept_the_methods_and_name_a_bad_field(tmp_path):
    from bertlab.study.spec import StudyError, build_train_config, expand, load_study
    study = load_study("imbalance", experiments_dir=write_study(tmp_path, STUDY, "imbalance"))
    runs = expand(study)
    assert len(runs) == 12
    configs = [build_train_config(r.config, f"{study.path} (run {r.run_id})") for r in runs]
    assert {c.loss.name for c in configs} == {"ce", "logit_adjusted", "balanced_softmax", "ldam", "dice"}
    assert {c.sampler.method for c in configs} == {"", "sCRD"}
    bad = STUDY.replace('tau = 0.5', 'tau = -0.5')
    study = load_study("bad", experiments_dir=write_study(tmp_path, bad.replace('"imbalance"', '"bad"'), "bad"))
    with pytest.raises(StudyError) as e:
        for r in expand(study):
            build_train_config(r.config, f"{study.path} (run {r.run_id})")
    assert "LossConfig.tau=-0.5 must be >= 0" in str(e.value) and "bad.toml" in str(e.value)
    assert "\n" not in str(e.value)


# ---- the training loop ---------------------------------------------------------------------------

def no_eval(cfg: dict) -> dict:
    cfg["data"]["dev_file"] = cfg["data"]["test_file"] = ""
    return cfg


def test_deferred_reweighting_switches_on_at_its_epoch_in_the_loop(tmp_path):
    """Epoch 0 trains exactly as LDAM without DRW; at the start of epoch 1 the weights switch on
    (logged, with the effective-number weights of the training counts) and the run diverges."""
    out = {}
    for name, loss in (("plain", {"name": "ldam", "scale": 2.0}),
                       ("drw", {"name": "ldam", "scale": 2.0, "drw_epoch": 1})):
        cfg = no_eval(tiny_config(tmp_path / name / "data", loss=loss, train={"epochs": 2}))
        out[name] = train(load_config(cfg), tmp_path / name / "run", resume=False, log=quiet)
    plain, drw = out["plain"]["history"], out["drw"]["history"]
    assert plain[0]["train_loss"] == drw[0]["train_loss"]
    assert plain[1]["train_loss"] != drw[1]["train_loss"]
    events = [r for r in log_rows(tmp_path / "drw" / "run") if r["event"] == "reweight"]
    assert [(e["epoch"], e["step"]) for e in events] == [(1, plain[0]["step"])]
    assert out["drw"]["config"]["loss"]["drw_epoch"] == 1 and out["drw"]["config"]["loss"]["drw_beta"] == 0.9999
    assert not [r for r in log_rows(tmp_path / "plain" / "run") if r["event"] == "reweight"]
    # the weights logged are those of the objective's counts
    cfg = load_config(no_eval(tiny_config(tmp_path / "drw" / "data", loss={"name": "ldam", "drw_epoch": 1})))
    from bertlab.checkpoint import builtin_path
    from bertlab.datasets.prepare import encode_corpus, load_splits
    from bertlab.tokenization import Tokenizer
    splits = load_splits(cfg.data)
    windows = encode_corpus(Tokenizer.from_pretrained(builtin_path("minilm")), splits.train, splits.labels,
                            cfg.data.max_length, cfg.data.stride)
    counts = label_counts([w.labels for w in windows], len(splits.labels))
    expected = class_weights(counts, "effective", 0.9999, "mean")
    np.testing.assert_allclose(events[0]["weights"], expected.numpy(), atol=1e-6)


def test_the_objective_follows_the_epoch_also_when_resumed_past_it(tmp_path):
    cfg = load_config(tiny_config(tmp_path, loss={"name": "ldam", "drw_epoch": 2}, train={"epochs": 4}))
    from bertlab.checkpoint import builtin_path
    from bertlab.datasets.prepare import encode_corpus, load_splits
    from bertlab.tokenization import Tokenizer
    splits = load_splits(cfg.data)
    windows = encode_corpus(Tokenizer.from_pretrained(builtin_path("minilm")), splits.train, splits.labels,
                            cfg.data.max_length, cfg.data.stride)
    objective = build_objective(cfg, splits.labels, windows)
    assert [objective.start_epoch(e) for e in range(4)] == [False, False, True, False]
    torch.testing.assert_close(objective.loss.alpha, class_weights(objective.label_counts, "effective", 0.9999, "mean"))
    resumed = build_objective(cfg, splits.labels, windows)  # a run resumed in epoch 3 starts from epoch 0's loss
    assert resumed.loss.alpha is None and resumed.start_epoch(3) and resumed.loss.alpha is not None


def test_resampling_trains_on_the_repeated_sentences_and_writes_its_table(tmp_path):
    cfg = tiny_config(tmp_path / "data", sampler={"name": "resample", "method": "sCRD"},
                      train={"epochs": 1, "max_steps": 2})
    metrics = train(load_config(cfg), tmp_path / "run", resume=False, log=quiet)
    from bertlab.datasets.prepare import load_splits
    splits = load_splits(load_config(cfg).data)
    tags = [s.tags for s in splits.train.sentences]
    expected = sentence_repeats(tags, "sCRD")
    lines = (tmp_path / "run" / "resampling.tsv").read_text().splitlines()
    assert lines[0].startswith("# sentence-level resampling, method sCRD") and lines[1].startswith("doc_id\t")
    rows = [line.split("\t") for line in lines[2:]]
    assert [int(r[-1]) for r in rows] == expected and max(expected) > 1
    assert [int(r[2]) for r in rows] == [len(t) for t in tags]
    start = next(r for r in log_rows(tmp_path / "run") if r["event"] == "start")
    plain = tiny_config(tmp_path / "data", train={"epochs": 1, "max_steps": 2})
    plain_metrics = train(load_config(plain), tmp_path / "plain", resume=False, log=quiet)
    plain_start = next(r for r in log_rows(tmp_path / "plain") if r["event"] == "start")
    # each sentence's windows (a long one has two), as often as the sentence is repeated
    from types import SimpleNamespace

    from bertlab.checkpoint import builtin_path
    from bertlab.datasets.prepare import encode_corpus
    from bertlab.tokenization import Tokenizer
    tok = Tokenizer.from_pretrained(builtin_path("minilm"))
    per_sentence = [len(encode_corpus(tok, SimpleNamespace(sentences=[s]), splits.labels, 16, 4))
                    for s in splits.train.sentences]
    assert plain_start["train_windows"] == sum(per_sentence) > len(tags)
    assert start["train_windows"] == sum(r * w for r, w in zip(expected, per_sentence))
    assert metrics["config"]["sampler"] == {**plain_metrics["config"]["sampler"], "name": "resample", "method": "sCRD"}
    assert not (tmp_path / "plain" / "resampling.tsv").exists()


def test_the_crf_head_trains_with_resampling(tmp_path):
    """Resampling is a data method, so it applies to a CRF head (the losses do not: a CRF trains
    its own sequence NLL, and the config refuses them, see above)."""
    cfg = no_eval(tiny_config(tmp_path / "data", model={"head": "crf"}, eval={"decode": ["viterbi"]},
                              sampler={"name": "resample", "method": "nsCRD"}, train={"epochs": 1, "max_steps": 2}))
    metrics = train(load_config(cfg), tmp_path / "run", resume=False, log=quiet)
    assert metrics["steps"] == 2 and (tmp_path / "run" / "resampling.tsv").exists()


def test_the_logit_adjusted_decode_is_fitted_on_dev_and_scores_test_with_it(tmp_path):
    from bertlab.checkpoint import best_folder, load_best_into
    from bertlab.datasets.prepare import load_splits
    from bertlab.inference import word_logits
    from bertlab.logit_adjustment import LOGIT_ADJUSTMENT_FILE, LogitAdjustedDecoder
    from bertlab.train.setup import build_model_and_tokenizer
    decodes = ["argmax", "logit_adjusted"]
    cfg = tiny_config(tmp_path / "data", eval={"decode": decodes}, train={"epochs": 2})
    metrics = train(load_config(cfg), tmp_path / "run", resume=False, log=quiet)
    assert set(metrics["test"]) == set(decodes)
    c = load_config(cfg)
    splits = load_splits(c.data)
    folder = best_folder(tmp_path / "run", "logit_adjusted", decodes)
    decoder = LogitAdjustedDecoder.load(folder / LOGIT_ADJUSTMENT_FILE)
    model, tok = build_model_and_tokenizer(c.model, splits.labels, splits.train)
    load_best_into(model, folder)
    # τ is the dev-best τ of this model, and the priors are the training label counts
    dev_logits = word_logits(model, tok, splits.dev.sentences, c.data.max_length, c.data.stride)
    refit = LogitAdjustedDecoder(splits.labels, decoder.counts).fit(dev_logits, [s.tags for s in splits.dev.sentences])
    assert refit.tau == decoder.tau
    assert metrics["dev"]["logit_adjusted"]["micro_f1"] == pytest.approx(decoder.dev_f1)
    train_tags = [t for s in splits.train.sentences for t in s.tags]
    assert decoder.counts.tolist() == [train_tags.count(label) for label in splits.labels]
    logits = word_logits(model, tok, splits.test.sentences, c.data.max_length, c.data.stride)
    predictions = tmp_path / "run" / "predictions_test_logit_adjusted.jsonl"
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [r["pred"] for r in rows] == decoder.predict(logits)
