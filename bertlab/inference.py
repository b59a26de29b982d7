"""From a trained model to tags and scores: word logits, decoding, evaluation.

    sentences --encode_words--> windows --model--> subword logits --word_predictions--> word logits
    word logits --decode--> tags --entity_report--> scores

Decodes (all read the same word logits, so they come from one forward pass):

- ``"argmax"``: each word's highest-scoring label (softmax heads).
- ``"viterbi"``: the CRF's best IOB2-valid tag sequence over the sentence's words (CRF heads).
- ``"knn"``: each word's label voted by its k nearest *training* words in logit space
  (``fit_knn_on_train``, ``bertlab.knn.KNNClassifier``, k = 17 as in the BTL paper).
- ``"calibrated"``: argmax after per-entity-type logit offsets fitted on dev
  (``bertlab.calibration.BiasCalibrator``): the decoder a BTL objective calls for.
- ``"logit_adjusted"``: argmax of ``z - τ log π`` (training label priors π, τ chosen on dev;
  ``bertlab.logit_adjustment.LogitAdjustedDecoder``): post-hoc logit adjustment, Menon et al. 2021.

Argmax and KNN predict one label per word independently, so they can produce sequences that are
not valid IOB2 (``O I-X``). Scoring is strict IOB2 (seqeval ``mode="strict"``): such an orphan
``I-X`` is simply not an entity, which is the conservative reading; the tolerant conlleval reading
(an orphan ``I-X`` starts an entity) is reported next to it (``micro_f1_conlleval``).
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from bertlab.metrics import entity_report, token_report, unweighted_accuracy
from bertlab.sampling import collate, pad_multiple, padded_width
from bertlab.tokenization import word_predictions

DECODES = ("argmax", "viterbi", "knn", "calibrated", "logit_adjusted")
# decodes fitted on dev, passed as ``calibrator`` (an object with ``predict(logits)``)
DEV_FITTED = {"calibrated": "a BiasCalibrator", "logit_adjusted": "a LogitAdjustedDecoder"}


def _words(sentences) -> list[list[str]]:
    """Accept Sentence objects (``.tokens``) or plain lists of words."""
    return [list(s.tokens) if hasattr(s, "tokens") else list(s) for s in sentences]


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def check_window(model, max_length: int, multiple: int = 1,
                 names: tuple[str, str] = ("max_length", "pad_to_multiple_of")) -> None:
    """Raise ValueError if a window of ``max_length`` subwords (special tokens included), padded to
    a multiple of ``multiple``, needs more positions than the model has (its config's
    ``max_position_embeddings``; models without one, the BiLSTMs, take any length). ``names``: how
    the message names the two settings (config fields or command-line options)."""
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if positions is None:
        return
    widest = padded_width(max_length, multiple)
    if max_length > positions:
        raise ValueError(f"{names[0]} = {max_length} is more than the model's {positions} positions "
                         f"(max_position_embeddings)")
    if widest > positions:
        raise ValueError(f"{names[1]} = {multiple} pads windows of {names[0]} = {max_length} subwords to "
                         f"{widest}, more than the model's {positions} positions (max_position_embeddings); "
                         f"choose one that divides {positions}, or a smaller {names[0]}")


@torch.no_grad()
def word_logits(model, tokenizer, sentences, max_length: int = 128, stride: int = 32,
                batch_size: int = 64, precision: str = "fp32", progress: bool = False,
                pad_to_multiple_of: int = 0) -> list[np.ndarray]:
    """Per-sentence float32 arrays ``[n_words, C]``: the logits at each word's first subword.

    ``sentences``: Sentence objects or lists of words. Long sentences become overlapping windows
    (``max_length`` subwords, ``stride`` overlap); ``tokenizer.word_predictions`` merges them so
    each word is read from the one window that owns it (no double counting). Windows are run
    sorted by length in batches of ``batch_size`` to keep padding small. ``precision="bf16"``
    runs the model under bf16 autocast (logits are returned in float32). The model is put in eval
    mode for the call and restored to its previous mode afterwards. ``progress=True`` shows a tqdm
    bar over the batches on stderr. Batches are padded to a multiple of ``pad_to_multiple_of``
    (0: the device's choice, ``bertlab.sampling.pad_multiple``: 8 on CUDA, none on a CPU); padding
    is masked, so it changes the logits only by float rounding.
    """
    from tqdm import tqdm
    device = _device_of(model)
    multiple = pad_multiple(device, pad_to_multiple_of)
    check_window(model, max_length, multiple)
    words = _words(sentences)
    windows = tokenizer.batch_encode(words, None, max_length, stride)
    flat = [w for ws in windows for w in ws]
    order = sorted(range(len(flat)), key=lambda j: len(flat[j]))
    out: list = [None] * len(flat)
    autocast = (torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision])
                if precision in ("bf16", "fp16") else contextlib.nullcontext())
    was_training = model.training
    model.eval()
    try:
        for lo in tqdm(range(0, len(order), batch_size), desc="word logits", unit="batch",
                       disable=not progress, leave=False):
            chunk = order[lo:lo + batch_size]
            batch = collate([flat[j] for j in chunk], pad_token_id=tokenizer.pad_token_id,
                            pad_to_multiple_of=multiple)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast:
                logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            logits = logits.float().cpu().numpy()
            for row, j in enumerate(chunk):
                out[j] = logits[row, :len(flat[j])]
    finally:
        model.train(was_training)
    result, k = [], 0
    num_labels = model.num_labels
    for sentence_words, ws in zip(words, windows):
        if not sentence_words:
            result.append(np.zeros((0, num_labels), dtype=np.float32))
        else:
            result.append(word_predictions(ws, out[k:k + len(ws)]))
        k += len(ws)
    return result


def decode_argmax(logits: list[np.ndarray], labels: list[str]) -> list[list[str]]:
    """Each word's highest-scoring label."""
    return [[labels[i] for i in l.argmax(-1)] if len(l) else [] for l in logits]


@torch.no_grad()
def decode_viterbi(model, logits: list[np.ndarray], batch_size: int = 256) -> list[list[str]]:
    """The CRF's best tag sequence for each sentence (``model.crf``), IOB2-valid by construction.

    The CRF runs over the sentence's words (the word logits are its emissions), also for sentences
    that were split into several windows for the encoder.
    """
    if getattr(model, "crf", None) is None:
        raise ValueError("decode='viterbi' needs a model with a CRF head (head='crf')")
    labels = model.labels
    crf = model.crf
    device = crf.transitions.device
    out = []
    for lo in range(0, len(logits), batch_size):
        chunk = logits[lo:lo + batch_size]
        T = max((len(l) for l in chunk), default=0)
        if T == 0:
            out.extend([] for _ in chunk)
            continue
        emissions = np.zeros((len(chunk), T, len(labels)), dtype=np.float32)
        mask = np.zeros((len(chunk), T), dtype=bool)
        for b, l in enumerate(chunk):
            emissions[b, :len(l)] = l
            mask[b, :len(l)] = True
        paths = crf.decode(torch.from_numpy(emissions).to(device), torch.from_numpy(mask).to(device))
        out.extend([labels[i] for i in p] for p in paths)
    return out


def fit_knn_on_train(model, tokenizer, train_sentences, k: int = 17, metric: str = "euclidean",
                     max_length: int = 128, stride: int = 32, batch_size: int = 64,
                     precision: str = "fp32", logits: list[np.ndarray] | None = None,
                     pad_to_multiple_of: int = 0):
    """A ``bertlab.knn.KNNClassifier`` fitted on the training set's word logits.

    Every word of a training sentence is labelled (its gold tag), so X is all training words'
    logits ``[N_words, C]`` and y their label ids. Pass precomputed ``logits`` to skip the forward pass.
    """
    from bertlab.knn import KNNClassifier
    label2id = {l: i for i, l in enumerate(model.labels)}
    if logits is None:
        logits = word_logits(model, tokenizer, train_sentences, max_length, stride, batch_size, precision,
                             pad_to_multiple_of=pad_to_multiple_of)
    X = np.concatenate([l for l in logits if len(l)], axis=0)
    y = np.array([label2id[t] for s in train_sentences for t in s.tags], dtype=np.int64)
    if len(X) != len(y):
        raise ValueError(f"{len(X)} word logits but {len(y)} training tags")
    return KNNClassifier(k=k, metric=metric).fit(X, y)


def decode_knn(knn, logits: list[np.ndarray], labels: list[str]) -> list[list[str]]:
    """Each word's label by a vote of its k nearest training words (may be invalid IOB2)."""
    lengths = [len(l) for l in logits]
    if sum(lengths) == 0:
        return [[] for _ in logits]
    ids = np.asarray(knn.predict(np.concatenate([l for l in logits if len(l)], axis=0)))
    out, k = [], 0
    for n in lengths:
        out.append([labels[i] for i in ids[k:k + n]])
        k += n
    return out


def unweighted_accuracy_variants(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """Mean per-class recall in its four readings: classes are BIO tags (``tag``) or entity types
    (``type``, B-X/I-X merged), with or without ``O``. ``tag_with_o`` is bertlab's
    ``unweighted_accuracy``; the BTL paper does not say which one it reports."""
    return {f"{unit}_{'with' if with_o else 'without'}_o": unweighted_accuracy(gold, pred, include_o=with_o,
                                                                              collapse=unit == "type")
            for unit in ("tag", "type") for with_o in (True, False)}


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in the dtype of ``x`` (max-shifted, so large logits do not overflow)."""
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def mean_probabilities(logits: list[np.ndarray], labels: list[str]) -> dict[str, float]:
    """Each label's softmax probability averaged over all words (computed in float64): the label
    distribution the model believes in for these words, before any decoder picks one label.

    Decoder-free, so it can show what argmax / KNN / calibrated tags cannot: a model that learned
    only the label frequencies puts each label's training share of probability on it, while
    argmax then predicts the most frequent label everywhere. For a CRF head these are the
    softmaxed emissions, not the CRF's marginals."""
    rows = [np.asarray(l, dtype=np.float64) for l in logits if len(l)]
    if not rows:
        return {label: float("nan") for label in labels}
    return dict(zip(labels, softmax(np.concatenate(rows)).mean(axis=0).tolist()))


def decode_tags(decode: str, logits: list[np.ndarray], model, knn=None, calibrator=None) -> list[list[str]]:
    """Tags per sentence from word logits with one decode (see the module docstring)."""
    if decode not in DECODES:
        raise ValueError(f"decode must be one of {DECODES}, got {decode!r}")
    if decode == "argmax":
        return decode_argmax(logits, model.labels)
    if decode == "viterbi":
        return decode_viterbi(model, logits)
    if decode == "knn":
        if knn is None:
            raise ValueError("decode='knn' needs knn= (a classifier from fit_knn_on_train)")
        return decode_knn(knn, logits, model.labels)
    if calibrator is None:
        raise ValueError(f"decode={decode!r} needs calibrator= ({DEV_FITTED[decode]} fitted on dev)")
    return calibrator.predict(logits)


def evaluate(model, tokenizer, corpus, decode: str = "argmax", knn=None, max_length: int = 128,
             stride: int = 32, batch_size: int = 64, precision: str = "fp32",
             logits: list[np.ndarray] | None = None, calibrator=None, pad_to_multiple_of: int = 0) -> dict:
    """Score ``model`` on a Corpus (or a list of Sentences) with one decode.

    Returns ``{"decode", "micro_f1", "micro_f1_conlleval", "entity_report", "entity_conlleval",
    "token", "unweighted_accuracy", "predictions"}``: ``entity_report`` is ``entity_report(..., scheme="IOB2",
    mode="strict")`` (seqeval's dict layout), ``entity_conlleval`` the tolerant conlleval reading,
    ``token`` the token-level report, ``unweighted_accuracy`` the mean per-label recall (its four
    readings in ``unweighted_accuracy_variants``), ``mean_probability`` each label's mean softmax
    probability over the words (``mean_probabilities``: the same for every decode), and
    ``predictions`` one ``{"doc_id", "sentence", "tokens", "tags" (gold), "pred"}`` per sentence (sentence =
    index within its document), for bootstrapping over documents. ``decode="knn"`` needs ``knn``
    (see ``fit_knn_on_train``), ``decode="calibrated"`` a fitted ``calibrator``; ``logits`` reuses
    word logits computed earlier for these sentences.
    """
    if decode not in DECODES:
        raise ValueError(f"decode must be one of {DECODES}, got {decode!r}")
    if decode == "knn" and knn is None:
        raise ValueError("decode='knn' needs knn= (a classifier from fit_knn_on_train)")
    if decode in DEV_FITTED and calibrator is None:
        raise ValueError(f"decode={decode!r} needs calibrator= ({DEV_FITTED[decode]} fitted on dev)")
    sentences = corpus.sentences if hasattr(corpus, "sentences") else list(corpus)
    if logits is None:
        logits = word_logits(model, tokenizer, sentences, max_length, stride, batch_size, precision,
                             pad_to_multiple_of=pad_to_multiple_of)
    pred = decode_tags(decode, logits, model, knn, calibrator)
    gold = [list(s.tags) for s in sentences]
    strict = entity_report(gold, pred, scheme="IOB2", mode="strict", zero_division=0)
    tolerant = entity_report(gold, pred, mode="conlleval", zero_division=0)
    from bertlab.results import prediction_rows
    predictions = prediction_rows(sentences, pred)
    return {
        "decode": decode,
        "micro_f1": strict["micro avg"]["f1-score"],
        "micro_f1_conlleval": tolerant["micro avg"]["f1-score"],
        "entity_report": dict(strict),
        "entity_conlleval": dict(tolerant),
        "token": dict(token_report(gold, pred, zero_division=0)),
        "unweighted_accuracy": unweighted_accuracy(gold, pred),
        "unweighted_accuracy_variants": unweighted_accuracy_variants(gold, pred),
        "mean_probability": mean_probabilities(logits, model.labels),
        "predictions": predictions,
    }
