"""From a trained model to tags and scores: word logits, decoding, evaluation.

    sentences --encode_words--> windows --model--> subword logits --owning window--> word logits
    word logits --decode--> tags --entity_report--> scores

Decodes (all read the same word logits, so they come from one forward pass):

- ``"argmax"``: each word's highest-scoring label (softmax heads).
- ``"viterbi"``: the CRF's best IOB2-valid tag sequence over the sentence's words (CRF heads).
- ``"knn"``: each word's label voted by its k nearest *training* words in logit space
  (``fit_knn_on_train``, ``bertlab.knn.KNNClassifier``, k = 17 as in the BTL paper).
- ``"calibrated"``: argmax after per-entity-type logit offsets fitted on dev
  (``bertlab.calibration.BiasCalibrator``): the decoder a BTL objective calls for.
- ``"argmax+bio"``, ``"knn+bio"``, ``"calibrated+bio"``: the same decoder's per-word scores
  (``decoder_scores``), read by a Viterbi over IOB2's allowed transitions (``bertlab.constrained``):
  the best valid tag sequence; a sentence whose unconstrained tags are valid keeps them.
- ``"logit_adjusted"``: argmax of ``z - τ log π`` (training label priors π, τ chosen on dev;
  ``bertlab.logit_adjustment.LogitAdjustedDecoder``): post-hoc logit adjustment, Menon et al. 2021.

Argmax, KNN and calibrated predict one label per word independently, so they can produce sequences
that are not valid IOB2 (``O I-X``). Scoring is strict IOB2 (seqeval ``mode="strict"``): such an orphan
``I-X`` is simply not an entity, which is the conservative reading; the tolerant conlleval reading
(an orphan ``I-X`` starts an entity) is reported next to it (``micro_f1_conlleval``).
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from bertlab.batching import collate, pad_multiple, padded_width
from bertlab.calibration import decode_argmax
from bertlab.config import DECODES
from bertlab.constrained import base_decode, constrain, is_constrained
from bertlab.metrics import entity_report, token_report, unweighted_accuracy

# decodes fitted on dev, passed as ``calibrator`` (an object with ``predict(logits)`` and ``adjust(logits)``)
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


def word_logits(model, tokenizer, sentences, max_length: int = 128, stride: int = 32,
                batch_size: int = 64, precision: str = "fp32", progress: bool = False,
                pad_to_multiple_of: int = 0) -> list[np.ndarray]:
    """Per-sentence float32 arrays ``[n_words, C]``: the logits at each word's first subword.

    ``sentences``: Sentence objects or lists of words. Long sentences become overlapping windows
    (``max_length`` subwords, ``stride`` overlap); each word is read from the one window that owns
    it (``Window.owned``, as ``tokenization.word_predictions``: no double counting). Windows are run
    sorted by length in batches of ``batch_size`` to keep padding small. ``precision="bf16"``
    runs the model under bf16 autocast (logits are returned in float32). The model is put in eval
    mode for the call and restored to its previous mode afterwards. ``progress=True`` shows a tqdm
    bar over the batches on stderr. Batches are padded to a multiple of ``pad_to_multiple_of``
    (0: the device's choice, ``bertlab.batching.pad_multiple``: 8 on CUDA, none on a CPU); padding
    is masked, so it changes the logits only by float rounding.

    Every window is encoded up front and kept; ``iter_word_logits`` is the same computation for a
    caller that re-encodes windows on demand to keep memory bounded (``bertlab predict``).
    """
    check_window(model, max_length, pad_multiple(_device_of(model), pad_to_multiple_of))
    windows = tokenizer.batch_encode(_words(sentences), None, max_length, stride)
    out: list = [None] * len(windows)
    for done in iter_word_logits(model, tokenizer.pad_token_id, [[len(w) for w in ws] for ws in windows],
                                 lambda ids: {i: windows[i] for i in ids}, batch_size, precision, progress,
                                 pad_to_multiple_of):
        for i, logits in done:
            out[i] = logits
    return out


def batch_order(window_lengths) -> np.ndarray:
    """The order windows are run in: by length, shortest first, ties in input order (a stable sort,
    so the batches, and with them the logits to the last bit, depend only on the windows)."""
    return np.argsort(np.asarray(window_lengths, dtype=np.int64), kind="stable")


@torch.no_grad()
def iter_word_logits(model, pad_token_id: int, window_lengths: list[list[int]], windows_of,
                     batch_size: int = 64, precision: str = "fp32", progress: bool = False,
                     pad_to_multiple_of: int = 0):
    """``word_logits`` batch by batch, for callers that cannot keep every window (a long document):
    yields, after each batch, ``[(i, logits_i), ...]`` for the sentences whose last window that batch
    ran (``logits_i``: float32 ``[n_words_i, C]``, as ``word_logits``); every sentence once.

    ``window_lengths[i]``: the lengths of sentence i's windows, as ``Tokenizer.batch_encode`` cuts
    them (the batches are planned from them: ``batch_order``, the same batches as ``word_logits``, so
    the same logits to the last bit). ``windows_of(ids)``: ``{i: [Window, ...]}`` for the sentences a
    batch draws on (it may encode them again). Memory: one batch of windows and logits, plus the
    word logits of sentences whose windows have not all run yet (a long sentence's last, shorter
    window runs before its full ones: only the rows of the words it owns are kept), plus 12 bytes a
    window for the plan.
    """
    from tqdm import tqdm
    device = _device_of(model)
    multiple = pad_multiple(device, pad_to_multiple_of)
    counts = np.array([len(ls) for ls in window_lengths], dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(counts)])           # sentence i: windows first[i]:first[i + 1]
    order = batch_order([n for ls in window_lengths for n in ls])
    remaining = counts.copy()
    pending: dict[int, list] = {}  # per sentence not yet complete: (word ids, their logits) of each window run
    autocast = (torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision])
                if precision in ("bf16", "fp16") else contextlib.nullcontext())
    was_training = model.training
    model.eval()
    try:
        for lo in tqdm(range(0, len(order), batch_size), desc="word logits", unit="batch",
                       disable=not progress, leave=False):
            chunk = order[lo:lo + batch_size]
            owners = np.searchsorted(first, chunk, side="right") - 1
            windows = windows_of(sorted(set(owners.tolist())))
            items = [windows[i][j - first[i]] for i, j in zip(owners, chunk)]
            batch = collate(items, pad_token_id=pad_token_id, pad_to_multiple_of=multiple)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast:
                logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            logits = logits.float().cpu().numpy()
            done = []
            for row, (i, w) in enumerate(zip(owners.tolist(), items)):
                pos = [t for t, o in enumerate(w.owned) if o]     # the first subwords of the words it owns
                pending.setdefault(i, []).append(([w.word_ids[t] for t in pos], logits[row, :len(w)][pos]))
                remaining[i] -= 1
                if remaining[i] == 0:
                    out = np.full((w.n_words, logits.shape[-1]), np.nan, dtype=np.float32)
                    for word_ids, rows in pending.pop(i):
                        out[word_ids] = rows
                    done.append((i, out))
            yield done
    finally:
        model.train(was_training)


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


def knn_vote_shares(knn, logits: list[np.ndarray], n_labels: int) -> list[np.ndarray]:
    """Per sentence ``[n_words, n_labels]`` float64: the share of each word's k nearest training
    words that vote for each label (``knn.predict_proba``; 0 for a label no training word has)."""
    lengths = [len(l) for l in logits]
    shares = np.zeros((sum(lengths), n_labels))
    if len(shares):
        proba = knn.predict_proba(np.concatenate([l for l in logits if len(l)], axis=0))
        shares[:, np.asarray(knn.classes_)] = proba
    return np.split(shares, np.cumsum(lengths)[:-1]) if logits else []


def decode_knn(knn, logits: list[np.ndarray], labels: list[str]) -> list[list[str]]:
    """Each word's label by a vote of its k nearest training words (may be invalid IOB2): the
    largest vote share, the lower label id on a tie (``knn.predict``'s rule, as ``classes_`` is sorted)."""
    return [[labels[i] for i in s.argmax(-1)] for s in knn_vote_shares(knn, logits, len(labels))]


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


def calibration_error(logits: list[np.ndarray], gold: list[list[str]], labels: list[str], n_bins: int = 15) -> dict:
    """How well the softmax's confidence matches its accuracy, over all words: each word's
    confidence is its largest softmax probability (float64), correct when that label is the gold
    one. The words are binned by confidence into ``n_bins`` equal-width bins on [0, 1] (a
    confidence of exactly 1 in the last bin); the expected calibration error is
    ``ECE = Σ_b (n_b / N) · |accuracy_b − confidence_b|`` (Guo et al. 2017), and ``bins`` are the
    reliability diagram's points: ``{"count", "confidence", "accuracy"}`` per bin (None where
    empty). A property of the model, not of a decoder: the same for every decode of one model;
    for a CRF head it is that of the softmaxed emissions."""
    rows = [(np.asarray(l, dtype=np.float64), g) for l, g in zip(logits, gold) if len(l)]
    if not rows:
        return {"ece": float("nan"), "words": 0, "bins": []}
    probs = softmax(np.concatenate([l for l, _ in rows]))
    index = {label: i for i, label in enumerate(labels)}
    gold_ids = np.array([index.get(t, -1) for _, g in rows for t in g])
    confidence, correct = probs.max(-1), probs.argmax(-1) == gold_ids
    which = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        mask = which == b
        n = int(mask.sum())
        conf = float(confidence[mask].mean()) if n else None  # None, not NaN: the dict goes to JSON as is
        acc = float(correct[mask].mean()) if n else None
        bins.append({"count": n, "confidence": conf, "accuracy": acc})
        if n:
            ece += n / len(confidence) * abs(acc - conf)
    return {"ece": float(ece), "words": int(len(confidence)), "bins": bins}


def check_decode(decode: str, knn=None, calibrator=None) -> None:
    """ValueError unless ``decode`` is a decode name with what it needs (``knn`` / ``calibrator``)."""
    if decode not in DECODES:
        raise ValueError(f"decode must be one of {DECODES}, got {decode!r}")
    if base_decode(decode) == "knn" and knn is None:
        raise ValueError(f"decode={decode!r} needs knn= (a classifier from fit_knn_on_train)")
    if base_decode(decode) in DEV_FITTED and calibrator is None:
        raise ValueError(f"decode={decode!r} needs calibrator= ({DEV_FITTED[base_decode(decode)]} fitted on dev)")


def decode_words(decode: str, logits: list[np.ndarray], model, knn=None,
                 calibrator=None) -> tuple[list[list[str]], list[np.ndarray]]:
    """Tags per sentence from word logits with one decode (see the module docstring), and per
    sentence the ``[n_words, C]`` probabilities the decoder read: the softmax of the logits
    (argmax; viterbi: of the CRF's emissions), of the offset logits (calibrated, logit_adjusted), the neighbour
    vote shares (knn). ``+bio`` decodes constrain the tags (``bertlab.constrained.constrain``) over
    the scores of ``decoder_scores``; their probabilities are the unconstrained decoder's."""
    check_decode(decode, knn, calibrator)
    labels, base = model.labels, base_decode(decode)
    if base == "knn":
        probabilities = knn_vote_shares(knn, logits, len(labels))
        tags = [[labels[i] for i in p.argmax(-1)] for p in probabilities]
    elif base in DEV_FITTED:  # calibrated offsets, or logit adjustment z - τ log π
        tags = calibrator.predict(logits)
        probabilities = [softmax(z) for z in calibrator.adjust(logits)]
    else:
        tags = decode_viterbi(model, logits) if base == "viterbi" else decode_argmax(logits, labels)
        probabilities = [softmax(l) for l in logits]
    if is_constrained(decode):
        tags = constrain(decoder_scores(base, logits, probabilities, knn, calibrator), tags, labels)
    return tags, probabilities


def decoder_scores(base: str, logits: list[np.ndarray], probabilities: list[np.ndarray], knn=None,
                   calibrator=None) -> list[np.ndarray]:
    """The per-word scores ``[n_words, C]`` (float64) a ``+bio`` decode maximises the sum of
    (``bertlab.constrained``): the logits (argmax; their log-softmax differs by a constant per
    word, so it picks the same path), the logits plus the calibrated offsets (calibrated), and
    log(k · share + 1), the add-one smoothed neighbour votes (knn; ``probabilities`` are its shares)."""
    if base == "knn":
        return [np.log(knn.k * p + 1.0) for p in probabilities]
    if base == "calibrated":
        return calibrator.adjust(logits)
    return [np.asarray(l, dtype=np.float64) for l in logits]


def decode_tags(decode: str, logits: list[np.ndarray], model, knn=None, calibrator=None) -> list[list[str]]:
    """Tags per sentence from word logits with one decode (see the module docstring)."""
    return decode_words(decode, logits, model, knn, calibrator)[0]


def evaluate(model, tokenizer, corpus, decode: str = "argmax", knn=None, max_length: int = 128,
             stride: int = 32, batch_size: int = 64, precision: str = "fp32",
             logits: list[np.ndarray] | None = None, calibrator=None, pad_to_multiple_of: int = 0) -> dict:
    """Score ``model`` on a Corpus (or a list of Sentences) with one decode.

    Returns ``{"decode", "micro_f1", "micro_f1_conlleval", "entity_report", "entity_conlleval",
    "token", "unweighted_accuracy", "predictions"}``: ``entity_report`` is ``entity_report(..., scheme="IOB2",
    mode="strict")`` (seqeval's dict layout), ``entity_conlleval`` the tolerant conlleval reading,
    ``token`` the token-level report, ``unweighted_accuracy`` the mean per-label recall (its four
    readings in ``unweighted_accuracy_variants``), ``mean_probability`` each label's mean softmax
    probability over the words (``mean_probabilities``: the same for every decode),
    ``calibration`` the softmax's expected calibration error and reliability bins
    (``calibration_error``: also the same for every decode), and
    ``predictions`` one ``{"doc_id", "sentence", "tokens", "tags" (gold), "pred"}`` per sentence (sentence =
    index within its document), for bootstrapping over documents. ``decode="knn"`` needs ``knn``
    (see ``fit_knn_on_train``), ``decode="calibrated"`` a fitted ``calibrator`` (so do their
    ``+bio`` forms); ``logits`` reuses
    word logits computed earlier for these sentences.
    """
    check_decode(decode, knn, calibrator)
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
        "calibration": calibration_error(logits, gold, model.labels),
        "predictions": predictions,
    }
