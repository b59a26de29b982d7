"""The classic taggers a study fits directly, with no training loop: the HMM and the feature CRF.

A study's model table with ``arch = "hmm"`` or ``arch = "crf"`` (``DIRECT_TAGGERS``) is trained
here instead of by ``bertlab.train``: ``fit_direct`` fits the tagger on the training split, decodes
dev and test by Viterbi, writes ``predictions_<split>_viterbi.jsonl`` into the run folder, and
returns the run's metrics.json in the layout ``bertlab.train`` writes (per split, per decode:
``micro_f1``, ``entity_report``, ``token``, ``unweighted_accuracy``, ``tokens_per_second``), so
results.jsonl and the report read both alike. The study runner writes it (bertlab.study.work).

Every tagger here offers the same interface (``DirectTagger``): ``fit(tokens, tags)`` and
``predict(tokens)`` on lists of sentences, its ``labels`` after fitting, and ``num_parameters()``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

from bertlab.baselines.feature_crf import FeatureCRFTagger
from bertlab.baselines.hmm import HMMTagger

# model table ``arch`` -> the tagger a study fits directly (bertlab.study.spec.DIRECT_BASELINES names them)
DIRECT_TAGGERS = {"hmm": HMMTagger, "crf": FeatureCRFTagger}


class DirectTagger(Protocol):
    """What ``fit_direct`` needs of a tagger (sklearn's ``fit`` / ``predict`` on sentences)."""
    labels: list[str] | None

    def fit(self, sentences_tokens: list[list[str]], sentences_tags: list[list[str]]) -> "DirectTagger": ...

    def predict(self, sentences_tokens: list[list[str]]) -> list[list[str]]: ...

    def num_parameters(self) -> int: ...


def fit_direct(config: dict, rdir: Path) -> dict:
    """Fit the tagger of ``config`` (a run's config dict: ``[model] arch`` and ``overrides``, the
    tagger's keyword arguments; ``[data]``; ``[train] seed`` seeds the feature CRF) on the
    training split, score dev and test, write their predictions into ``rdir`` and return the
    metrics.json dict. Times are wall seconds."""
    from bertlab.config import config_from_dict
    from bertlab.datasets.prepare import load_splits, mention_counts, tag_counts
    data = config_from_dict({"data": dict(config.get("data", {}))}).data
    splits = load_splits(data)
    model = config["model"]
    options = dict(model.get("overrides", {}))
    if model["arch"] == "crf":
        options.setdefault("seed", int(config.get("train", {}).get("seed", 0)))
    tagger: DirectTagger = DIRECT_TAGGERS[model["arch"]](**options)
    train_sents = splits.train.sentences
    t0 = time.perf_counter()
    tagger.fit([s.tokens for s in train_sents], [s.tags for s in train_sents])
    train_seconds = time.perf_counter() - t0
    out = {split: {"viterbi": _score(tagger, getattr(splits, split).sentences,
                                     rdir / f"predictions_{split}_viterbi.jsonl")}
           for split in ("dev", "test") if getattr(splits, split) is not None}
    # no random state (counts; convex L-BFGS from zero weights): one run stands for every seed
    deterministic = model["arch"] == "hmm" or options.get("optimizer", "lbfgs") == "lbfgs"
    return {
        **out, "config": config, "labels": tagger.labels, "params": tagger.num_parameters(),
        "epochs": 1, "train_seconds": train_seconds, "train_mentions": mention_counts(train_sents),
        "train_tags": tag_counts(train_sents), "best_dev_f1": out.get("dev", {}).get("viterbi", {}).get("micro_f1"),
        "deterministic": deterministic,
        **({"fold": splits.test.notes["fold"]} if splits.test is not None and "fold" in splits.test.notes else {})}


def _score(tagger: DirectTagger, sents, predictions: Path) -> dict:
    """Viterbi-decode ``sents``, write their ``predictions`` file, and score them against gold."""
    from bertlab.metrics import entity_report, token_report, unweighted_accuracy
    from bertlab.results import write_predictions
    t0 = time.perf_counter()
    pred = tagger.predict([s.tokens for s in sents])
    seconds = time.perf_counter() - t0
    write_predictions(predictions, sents, pred)
    gold = [s.tags for s in sents]
    entity = entity_report(gold, pred, zero_division=0)
    return {"decode": "viterbi", "micro_f1": entity["micro avg"]["f1-score"] if "micro avg" in entity else 0.0,
            "entity_report": dict(entity), "token": dict(token_report(gold, pred, zero_division=0)),
            "unweighted_accuracy": unweighted_accuracy(gold, pred),
            "tokens_per_second": sum(len(s.tokens) for s in sents) / max(seconds, 1e-9)}
