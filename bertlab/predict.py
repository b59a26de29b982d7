"""Using what was trained: ``bertlab predict`` tags new text with a saved model; the functions that
read a model folder (``load_model``, ``window_settings``, ``scoring_precision``, ``choose_decode``,
``load_decoders``) serve ``bertlab evaluate`` (``bertlab.evaluate``) as well.

    text --sentence_spans / word_tokenize--> words with character offsets
         --iter_word_logits (sliding windows, one row per word, batch by batch)--> a decode (--decode)
         --> IOB2 tags --strict_entities (or conlleval_entities)--> {doc, type, text, start, end, score}

A document is tagged batch by batch (``tag_sentences``) and written sentence by sentence, so memory
is bounded by a batch, not by the document; the batches are those of the whole document's windows
sorted by length, as ``word_logits`` runs them, so the output is the same to the last bit.

Windows are cut as the model was trained: ``max_length`` and ``stride`` come from the settings saved
with the model (``best/bertlab_train.json``, else the run's ``metrics.json`` or ``config.toml``),
and only fall back to 128 / 32 when there are none; ``--max-length`` / ``--stride`` override them.

Offsets are character offsets into the input text (``text[start:end] == entity["text"]``). The
score of an entity is the mean, over its words, of the softmax probability of the predicted tag
(for a CRF head, of its emissions; for KNN, the share of the k neighbours that voted for it; for
the calibrated decoder, of the offset logits).

The decode is ``--decode`` (any of ``bertlab.config.DECODES``; ``--knn`` is ``--decode knn``), by
default Viterbi for a CRF head and argmax otherwise. KNN decodes read ``DIR/knn.npz`` (refitted
when missing), calibrated ones ``DIR/calibration.json`` (written by training); ``+bio`` decodes
return IOB2-valid tags (``bertlab.constrained``), so the strict and lenient readings agree.

Entities are read from the tags in strict IOB2 by default: an ``I-X`` with no ``B-X`` before it is
no entity, the reading ``bertlab evaluate`` and the study reports score as ``micro_f1``. Argmax and
KNN choose each word's tag alone and do emit such orphans, so the lenient reading
(``reading="lenient"``, ``--lenient``: an ``I-X`` after ``O`` or after another type starts an
entity, as conlleval and transformers' ``pipeline(aggregation_strategy="first")`` read it) finds
more entities on the same logits; ``micro_f1_conlleval`` scores that reading.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from bertlab.errors import BertlabError, fail
from bertlab.files import write_with
from bertlab.metrics import conlleval_entities, strict_entities

DEFAULT_WINDOW = (128, 32)              # max_length, stride when no settings were saved
TRAIN_SETTINGS = "bertlab_train.json"   # written into best/ by training: {"config": TrainConfig dict}
READINGS = {"strict": strict_entities, "lenient": conlleval_entities}


class UsageError(BertlabError, ValueError):
    """An expected failure of ``bertlab predict`` / ``evaluate``: one line on stderr, exit status 2."""


# ---- the saved model and its settings -----------------------------------------------------

def pick_device(name: str = "cpu"):
    """The ``torch.device`` to tag on: "cpu", "cuda", "cuda:N", or "auto" (CUDA when available),
    chosen as training chooses it (``bertlab.train.runtime.pick_device``), after a check that names the flag."""
    import torch

    from bertlab.train.runtime import Dist
    from bertlab.train.runtime import pick_device as train_pick_device
    try:
        kind = "auto" if name == "auto" else torch.device(name).type
    except RuntimeError:
        kind = None
    if kind not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device {name}: expected cpu, cuda, cuda:N or auto")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available (torch {torch.__version__}); use --device cpu")
    return train_pick_device(name, Dist())


def load_model(model_dir: str | os.PathLike, device: str = "cpu"):
    """``(model, tokenizer)`` from a Hugging Face folder saved by training (e.g. ``<run>/best``), the
    model on ``device`` (``pick_device``) in eval mode."""
    from bertlab.checkpoint import load_pretrained
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir}: no config.json; --model takes a saved model folder, "
                                f"e.g. runs/btl_focal/<run>/best")
    model, tokenizer = load_pretrained(model_dir)
    if tokenizer is None:
        raise FileNotFoundError(f"{model_dir}: no tokenizer files (tokenizer.json or vocab.txt)")
    check_finite_weights(model, model_dir)
    model.to(pick_device(device)).eval()
    return model, tokenizer


def check_finite_weights(model, model_dir) -> None:
    """UsageError when a weight holds NaN or inf: such a model tags every word with the same
    arbitrary label (argmax of NaN), so its "no entities" would pass for a result."""
    import torch
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise UsageError(f"{model_dir}: {len(bad)} weight tensor(s) hold NaN or infinite values ({bad[0]}"
                         f"{', ...' if len(bad) > 1 else ''}); the model diverged and cannot tag. Use a "
                         f"checkpoint saved before that (bertlab train never saves one as best/)")


def run_config(model_dir: str | os.PathLike) -> tuple[dict | None, Path | None]:
    """``(training config, the file it came from)`` of the run that saved ``model_dir``:
    ``model_dir/bertlab_train.json`` (saved with the model), else the run folder's ``metrics.json``
    or ``config.toml`` (older runs); ``(None, None)`` when there is none."""
    import tomllib
    model_dir = Path(model_dir).resolve()
    candidates = [model_dir / TRAIN_SETTINGS, model_dir.parent / "metrics.json", model_dir.parent / "config.toml"]
    for path in candidates:
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
            cfg = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text).get("config")
        except (ValueError, AttributeError, UnicodeDecodeError) as e:
            raise UsageError(f"{path}: cannot read the run's training config ({type(e).__name__}: {e})") from None
        if cfg:
            return cfg, path
    return None, None


def scoring_precision(model_dir, precision: str | None = None) -> tuple[str, str]:
    """``(precision, where it came from)`` of the forward passes that tag and score with the model
    in ``model_dir``: ``precision`` when given (fp32 / bf16), else the one the run scored it in
    (``bertlab_train.json``'s ``precision``, else the run's ``metrics.json``), so that ``bertlab
    evaluate`` reproduces the run's own test scores; fp32 for a model saved without either."""
    if precision:
        return precision, "--precision"
    model_dir = Path(model_dir).resolve()
    for path in (model_dir / TRAIN_SETTINGS, model_dir.parent / "metrics.json"):
        try:
            saved = json.loads(path.read_text(encoding="utf-8")).get("precision")
        except (OSError, ValueError, AttributeError):
            continue
        if saved in ("fp32", "bf16", "fp16"):
            return saved, f"as scored by the run, from {path}"
    return "fp32", "fp32: the run did not record a precision"


def window_settings(model_dir, max_length: int | None = None, stride: int | None = None) -> tuple[int, int, str]:
    """``(max_length, stride, where they came from)``: the explicit values where given, else the
    ``[data]`` settings the model was trained with (``run_config``), else 128 / 32. Windows that
    cannot be cut (fewer than 3 subwords, a stride that does not move on) are a UsageError naming
    the option, or the file the value came from."""
    if max_length is not None and stride is not None:
        saved, where = (max_length, stride), "--max-length/--stride"
    else:
        cfg, source = run_config(model_dir)
        if cfg is None:
            where = (f"bertlab's defaults: no {TRAIN_SETTINGS} in the model folder, no metrics.json beside it; "
                     f"--max-length/--stride set them")
            saved = DEFAULT_WINDOW
        else:
            data = cfg.get("data", {})
            saved = (int(data.get("max_length", DEFAULT_WINDOW[0])), int(data.get("stride", DEFAULT_WINDOW[1])))
            where = f"as trained, from {source}"
        if max_length is not None or stride is not None:
            where = f"--max-length/--stride, the rest {where}"
    length, overlap = (saved[0] if max_length is None else max_length), (saved[1] if stride is None else stride)
    length_name = f"--max-length {length}" if max_length is not None else f"max_length {length} ({where})"
    stride_name = f"--stride {overlap}" if stride is not None else f"stride {overlap} ({where})"
    if length < 3:
        raise UsageError(f"{length_name}: expected at least 3 (a window holds [CLS], [SEP] and at least "
                         f"one subword)")
    if not 0 <= overlap < length - 2:
        raise UsageError(f"{stride_name}: expected 0 <= stride < max_length - 2 = {length - 2} "
                         f"(consecutive windows overlap by stride subwords and must move on)")
    return length, overlap, where


def load_calibration(model, model_dir: str | os.PathLike):
    """The calibrated decoder of a saved model: ``model_dir/calibration.json`` (the per-type offsets
    training fitted on dev for this checkpoint). A missing file, or one for other labels, is a
    ``ValueError`` naming it."""
    from bertlab.calibration import CALIBRATION_FILE, BiasCalibrator
    path = Path(model_dir) / CALIBRATION_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; training writes it into the best folder of a "
                                f"'calibrated' decode ([eval] decode), e.g. <run>/best-calibrated")
    calibrator = BiasCalibrator.load(path)
    if calibrator.labels != list(model.labels):
        raise ValueError(f"{path}: offsets for the labels {calibrator.labels[:4]}..., but the model has "
                         f"{list(model.labels)[:4]}...; it belongs to another model")
    return calibrator


def choose_decode(model, decode: str | None = None, knn: bool = False) -> str:
    """The decode to tag with: ``decode`` (``--decode``), ``"knn"`` for ``--knn``, else Viterbi
    for a CRF head and argmax otherwise. A ``ValueError`` for an unknown name or a clash."""
    from bertlab.config import DECODES
    if decode is not None and decode not in DECODES:
        raise ValueError(f"--decode {decode}: expected one of {', '.join(DECODES)}")
    if knn and decode not in (None, "knn"):
        raise ValueError(f"--knn is --decode knn; it cannot go with --decode {decode}")
    crf = getattr(model, "crf", None) is not None
    if decode is None:
        decode = "knn" if knn else ("viterbi" if crf else "argmax")
    if decode == "viterbi" and not crf:
        raise ValueError("--decode viterbi needs a model with a CRF head; this one has a softmax head "
                         "(argmax+bio gives IOB2-valid tags from its logits)")
    return decode


def load_decoders(model, tokenizer, model_dir, decode: str, log=print, progress: bool = False,
                  precision: str = "fp32", knn_cache: str | os.PathLike | None = None) -> tuple:
    """``(knn, calibrator)`` a decode needs from the model folder (``None`` for what it does not);
    a refitted KNN reference is kept in ``knn_cache`` (``load_knn``)."""
    from bertlab.constrained import base_decode
    knn = calibrator = None
    if base_decode(decode) == "knn":
        knn = load_knn(model, tokenizer, model_dir, log=log, progress=progress, precision=precision,
                       cache=knn_cache)
    if base_decode(decode) == "calibrated":
        calibrator = load_calibration(model, model_dir)
    return knn, calibrator


def load_knn(model, tokenizer, model_dir: str | os.PathLike, log=print, progress: bool = False,
             precision: str = "fp32", cache: str | os.PathLike | None = None):
    """The KNN decoder of a saved model: ``model_dir/knn.npz`` (training-word logits ``X``,
    labels ``y``, ``k``, ``metric``; training writes it into ``best/`` when ``[eval] decode`` has
    "knn") if present; otherwise refitted on the training split named by the run's config (the
    logits of every training word, as at training time).

    The model folder is only read, never written (it may be read-only, e.g. a shared or
    downloaded copy). A refit is kept only where ``cache`` (a folder) says: as
    ``cache/knn-<fingerprint>.npz``, the fingerprint covering the model folder, its weights file
    (size and modification time), the run's config and the precision, so a retrained model or
    another run never picks up a stale reference; without ``cache`` it is refitted every call.

    A reference that does not fit the model (other labels, other logit width) is a ``ValueError``
    naming the file or the training data."""
    from bertlab.knn import KNN_FILE, KNNClassifier
    model_dir = Path(model_dir)
    saved = model_dir / KNN_FILE
    n_labels = len(model.labels)
    if saved.exists():
        return _fitting_knn(KNNClassifier.load(saved, progress=progress), saved, n_labels)
    cfg, source = run_config(model_dir)
    if cfg is None:
        raise FileNotFoundError(
            f"{model_dir}: --knn needs the training words' logits: {saved} is missing and the folder "
            f"is not inside a run folder (no {TRAIN_SETTINGS}, ../metrics.json or ../config.toml naming "
            f"the training data)")
    cached = Path(cache) / knn_cache_name(model_dir, cfg, precision) if cache is not None else None
    if cached is not None and cached.exists():
        return _fitting_knn(KNNClassifier.load(cached, progress=progress), cached, n_labels)
    from bertlab.inference import word_logits
    from bertlab.config import config_from_dict
    from bertlab.datasets.prepare import load_splits
    tc = config_from_dict({k: v for k, v in cfg.items() if k in ("data", "eval")}, str(source))
    train = load_splits(tc.data).train
    label2id = {l: i for i, l in enumerate(model.labels)}
    unknown: dict[str, int] = {}
    for s in train.sentences:
        for t in s.tags:
            if t not in label2id:
                unknown[t] = unknown.get(t, 0) + 1
    if unknown:
        shown = ", ".join(f"{t} ({n})" for t, n in sorted(unknown.items(), key=lambda x: -x[1])[:5])
        raise ValueError(f"{model_dir}: --knn refits on {train.name} train (named by {source}), but "
                         f"{len(unknown)} of its tags, {sum(unknown.values())} words, are not among the "
                         f"model's {n_labels} labels: {shown}{', ...' if len(unknown) > 5 else ''}")
    log(f"fitting KNN (k={tc.eval.knn_k}, {tc.eval.knn_metric}) on {train.name} train "
        f"({len(train.sentences)} sentences); "
        + (f"cached in {cached}" if cached is not None else "not cached (--knn-cache DIR keeps it)"))
    logits = word_logits(model, tokenizer, train.sentences, tc.data.max_length, tc.data.stride,
                         precision=precision, progress=progress)
    X = np.concatenate([l for l in logits if len(l)], axis=0)
    y = np.array([label2id[t] for s in train.sentences for t in s.tags], dtype=np.int64)
    knn = KNNClassifier(k=tc.eval.knn_k, metric=tc.eval.knn_metric, progress=progress).fit(X, y)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        knn.save(cached)
    return knn


def _fitting_knn(knn, path: Path, n_labels: int):
    """``knn`` if its reference fits a model with ``n_labels`` labels, else a ValueError naming ``path``."""
    width = knn._X.shape[1]
    if width != n_labels or int(np.max(knn.classes_)) >= n_labels or int(np.min(knn.classes_)) < 0:
        raise ValueError(f"{path}: a KNN reference of {width}-wide logits with label ids up to "
                         f"{int(np.max(knn.classes_))}, but the model has {n_labels} labels; it belongs "
                         f"to another model: delete it to refit from the run's config")
    return knn


def knn_cache_name(model_dir, cfg: dict, precision: str) -> str:
    """``knn-<16 hex digits>.npz``: a refitted KNN reference's file name in a ``--knn-cache`` folder,
    a hash of what the reference depends on (the model folder, its weights file's size and
    modification time, the run's config, the precision)."""
    import hashlib
    model_dir = Path(model_dir).resolve()
    weights = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(model_dir.glob("*.safetensors"))]
    key = json.dumps([str(model_dir), weights, cfg, precision], sort_keys=True, default=str)
    return f"knn-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


# ---- tagging text -------------------------------------------------------------------------

def split_words(text: str) -> list[tuple[list[str], list[tuple[int, int]]]]:
    """Sentences of raw text as ``(words, character offsets)``: lines, cut further after ``.?!``
    before a capital or digit (bertlab.datasets' splitter), words as the brat reader makes them."""
    from bertlab.datasets.brat import sentence_spans, word_tokenize
    out = []
    for start, end in sentence_spans(text, mode="simple"):
        tokens = word_tokenize(text, start, end)
        if tokens:
            out.append(([w for w, _ in tokens], [span for _, span in tokens]))
    return out


def tag_texts(model, tokenizer, texts: list[str], knn=None, max_length: int = 128, stride: int = 32,
              batch_size: int = 64, progress: bool = False, precision: str = "fp32", decode: str | None = None,
              calibrator=None) -> list[list[dict]]:
    """Per text, per sentence: ``{"words", "offsets", "tags", "scores"}`` (``scores[i]``: the
    probability of word i's tag, see the module docstring). ``decode``: any decode name (with
    ``knn`` / ``calibrator`` as it needs); by default KNN when ``knn`` is given, Viterbi for a CRF
    head, else argmax. Holds every tagged sentence; ``tag_sentences`` yields them one by one."""
    from tqdm import tqdm
    decode = choose_decode(model, decode, knn=knn is not None and decode is None)
    return [list(tag_sentences(model, tokenizer, text, decode, knn, calibrator, max_length, stride, batch_size,
                               precision))
            for text in tqdm(texts, desc="predict", unit="doc", disable=not progress)]


def tag_sentences(model, tokenizer, text: str, decode: str, knn=None, calibrator=None, max_length: int = 128,
                  stride: int = 32, batch_size: int = 64, precision: str = "fp32"):
    """The sentences of one text (``split_words``), tagged with ``decode``, yielded in order as
    ``tag_texts``' dicts, with memory bounded by a batch rather than the text.

    The batches are the ones ``word_logits`` runs on the whole text (``iter_word_logits``), so tags
    and scores are the same to the last bit, but no window, word list or logit array of the whole
    text is kept. Windows are encoded once to plan the batches (their lengths kept) and again when a batch
    needs them; each decode reads a sentence alone, so the sentences a batch completes are decoded
    at once. Held until written, in order: the text, the plan (12 bytes a window, ~100 a sentence),
    and a tag id and a score per word (8 to 12 bytes); on top, one batch, and the word logits of
    sentences longer than one window from their first window run to their last (windows run
    shortest first, so a long sentence's short last window runs long before its full ones)."""
    from bertlab.datasets.brat import sentence_spans, word_tokenize
    from bertlab.inference import decode_words, iter_word_logits

    def words(i: int) -> list[str]:
        return [w for w, _ in word_tokenize(text, int(starts[i]), int(ends[i]))]

    starts, ends, n_words, window_lengths = [], [], [], []
    spans = sentence_spans(text, mode="simple")
    for lo in range(0, len(spans), 256):  # the Rust tokenizer encodes a group at a time
        group = [(a, b, w) for a, b in spans[lo:lo + 256] if (w := [t for t, _ in word_tokenize(text, a, b)])]
        encoded = tokenizer.batch_encode([w for _, _, w in group], None, max_length, stride) if group else []
        starts += [a for a, _, _ in group]
        ends += [b for _, b, _ in group]
        n_words += [len(w) for _, _, w in group]
        window_lengths += [[len(x) for x in windows] for windows in encoded]
    del spans
    starts, ends = np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64)
    first_word = np.concatenate([[0], np.cumsum(n_words, dtype=np.int64)])
    tag_ids, scores = np.zeros(first_word[-1], dtype=np.int32), None
    done, written = np.zeros(len(starts), dtype=bool), 0
    cache: dict[int, list] = {}

    def windows_of(ids: list[int]) -> dict[int, list]:
        nonlocal cache  # the last batch's sentences: a long sentence's windows fill several batches in a row
        missing = [i for i in ids if i not in cache]
        encoded = tokenizer.batch_encode([words(i) for i in missing], None, max_length, stride) if missing else []
        cache = {**{i: cache[i] for i in ids if i in cache}, **dict(zip(missing, encoded))}
        return cache

    label2id = {l: i for i, l in enumerate(model.labels)}
    for completed in iter_word_logits(model, tokenizer.pad_token_id, window_lengths, windows_of, batch_size,
                                      precision):
        if not completed:
            continue
        tags, probabilities = decode_words(decode, [l for _, l in completed], model, knn, calibrator)
        for (i, _), t, p in zip(completed, tags, probabilities):
            ids = [label2id[x] for x in t]
            if scores is None:  # the decoder's dtype (float32 softmax, float64 vote shares), as it returns it
                scores = np.zeros(first_word[-1], dtype=p.dtype)
            tag_ids[first_word[i]:first_word[i + 1]] = ids
            scores[first_word[i]:first_word[i + 1]] = p[np.arange(len(t)), ids]
            done[i] = True
        while written < len(done) and done[written]:
            i, a, b = written, first_word[written], first_word[written + 1]
            tokens = word_tokenize(text, int(starts[i]), int(ends[i]))
            yield {"words": [w for w, _ in tokens], "offsets": [span for _, span in tokens],
                   "tags": [model.labels[k] for k in tag_ids[a:b]], "scores": scores[a:b]}
            written += 1


def entities_of(text: str, sentences: list[dict], doc: str, reading: str = "strict") -> list[dict]:
    """The entities of one tagged text (``tag_texts``' sentences) as ``{doc, type, text, start,
    end, score}`` dicts; ``reading``: ``"strict"`` IOB2 or ``"lenient"`` (conlleval)."""
    if reading not in READINGS:
        raise ValueError(f"reading must be one of {sorted(READINGS)}, got {reading!r}")
    entities = []
    for s in sentences:
        for typ, a, b in READINGS[reading](s["tags"]):
            start, end = s["offsets"][a][0], s["offsets"][b - 1][1]
            entities.append({"doc": doc, "type": typ, "text": text[start:end], "start": start, "end": end,
                             "score": round(float(np.mean(s["scores"][a:b])), 4)})
    return entities


def predict_text(model, tokenizer, texts: list[str], doc_ids: list[str] | None = None, knn=None,
                 max_length: int = 128, stride: int = 32, batch_size: int = 64, reading: str = "strict",
                 progress: bool = False, decode: str | None = None, calibrator=None) -> list[dict]:
    """Entities of each text: a list of ``{doc, type, text, start, end, score}`` dicts, offsets
    into that text, read from the tags in ``reading`` (``"strict"`` IOB2 or ``"lenient"``);
    ``decode``, ``knn``, ``calibrator`` as in ``tag_texts``."""
    doc_ids = [str(i) for i in range(len(texts))] if doc_ids is None else list(doc_ids)
    tagged = tag_texts(model, tokenizer, texts, knn, max_length, stride, batch_size, progress,
                       decode=decode, calibrator=calibrator)
    return [e for doc, text, sents in zip(doc_ids, texts, tagged) for e in entities_of(text, sents, doc, reading)]


def _decode(data: bytes, name: str) -> str:
    from bertlab.datasets.conll import decode_utf8
    return decode_utf8(data, name, error=UsageError)


def read_inputs(paths: list[str]) -> tuple[list[str], list[str]]:
    """``(doc ids, texts)`` from files (or ``-`` for stdin): a ``.jsonl`` file (or JSONL on stdin)
    holds one document a line with a ``text`` field (``id``/``doc_id`` optional); any other file is
    one plain-text document named after the file. Input must be UTF-8."""
    ids, texts = [], []
    for path in paths:
        if path == "-":
            stdin = getattr(sys.stdin, "buffer", None)
            raw = _decode(stdin.read(), "stdin") if stdin is not None else sys.stdin.read()
        else:
            raw = _decode(Path(path).read_bytes(), path)
        name = "stdin" if path == "-" else Path(path).name
        is_jsonl = path.endswith(".jsonl") or (path == "-" and raw.lstrip().startswith("{"))
        if not is_jsonl:
            ids.append(name)
            texts.append(raw)
            continue
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                text = obj["text"]
                if not isinstance(text, str):
                    raise TypeError
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UsageError(f"{name}:{n}: expected a JSON object with a \"text\" string field") from None
            ids.append(str(obj.get("id", obj.get("doc_id", f"{name}:{n}"))))
            texts.append(text)
    return ids, texts


def entity_lines(doc: str, text: str, sentences, reading: str = "strict"):
    """JSONL lines of one document's entities (``entities_of``), one entity a line; a document
    without entities gets one line with ``type``, ``text``, ``start``, ``end`` and ``score`` null, so
    every input document is accounted for. ``sentences`` may be a generator (``tag_sentences``)."""
    found = False
    for sentence in sentences:
        for e in entities_of(text, [sentence], doc, reading):
            found = True
            yield json.dumps(e, ensure_ascii=False) + "\n"
    if not found:
        yield json.dumps({"doc": doc, "type": None, "text": None, "start": None, "end": None, "score": None}) + "\n"


def conll_lines(sentences):
    """CoNLL lines of one document: ``-DOCSTART-<TAB>O``, then per sentence its ``word<TAB>tag``
    lines and a blank line. The tags are the decoder's own, orphan ``I-X`` included (the reading
    applies to entities only)."""
    yield "-DOCSTART-\tO\n"
    for s in sentences:
        yield "".join(f"{w}\t{t}\n" for w, t in zip(s["words"], s["tags"])) + "\n"


def format_entities(doc_ids, texts, tagged, reading: str = "strict") -> str:
    """JSONL for tagged texts (``tag_texts``): ``entity_lines`` of each document, in input order."""
    return "".join(line for doc, text, sents in zip(doc_ids, texts, tagged)
                   for line in entity_lines(doc, text, sents, reading))


def format_conll(tagged) -> str:
    """CoNLL for tagged texts (``tag_texts``): ``conll_lines`` of each document, in input order;
    ``bertlab.datasets.read_conll`` reads it back."""
    return "".join(line for sents in tagged for line in conll_lines(sents))


# ---- command line -------------------------------------------------------------------------

def check_writable(path: str | os.PathLike) -> None:
    """Fail now, not after minutes of work, when ``path`` cannot be written (atomically: the
    folder must exist and be writable, the path must not be a folder)."""
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise UsageError(f"{path}: is a folder; expected a file path")
    if not folder.is_dir():
        raise UsageError(f"{path}: cannot write: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{path}: cannot write: folder {folder} is not writable")


def check_not_input(output: str | os.PathLike, inputs: list[str]) -> None:
    """UsageError when ``output`` is one of the ``inputs`` (the same file, by any name): writing
    the results would overwrite what was read."""
    for path in inputs:
        if path != "-" and Path(path).is_file() and Path(output).is_file() and os.path.samefile(path, output):
            raise UsageError(f"--output {output}: is the input file {path}; writing would overwrite it. "
                             f"Choose another --output")


def show_progress() -> bool:
    """tqdm bars on a terminal unless ``$CI`` is set (as ``bertlab train``'s ``progress = "auto"``)."""
    from bertlab.train.runtime import show_progress as train_show_progress
    return train_show_progress("auto")


def add_decode_options(ap: argparse.ArgumentParser) -> None:
    from bertlab.config import DECODES
    ap.add_argument("--decode", choices=DECODES, metavar="DECODE",
                    help=f"how words get their tags: {', '.join(DECODES)} (default: viterbi for a CRF head, "
                         f"else argmax). knn votes with the training words' logits (DIR/knn.npz, else refitted "
                         f"from the run); calibrated adds the per-type offsets of DIR/calibration.json; "
                         f"+bio keeps only IOB2-valid tag sequences (a Viterbi over the decoder's scores)")
    ap.add_argument("--knn", action="store_true", help="the same as --decode knn")
    ap.add_argument("--knn-cache", metavar="CACHE_DIR",
                    help="keep a refitted KNN reference in this folder (one file per model and settings) "
                         "and reuse it next time (default: none, refit on every call; the model folder is "
                         "never written)")


def add_window_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--max-length", type=int, metavar="N",
                    help="subwords per window, [CLS]/[SEP] included (default: as the model was trained, "
                         "from best/bertlab_train.json or the run's metrics.json; 128 without them)")
    ap.add_argument("--stride", type=int, metavar="N",
                    help="overlap of consecutive windows of a long sentence (default: as trained; 32 without it)")
    ap.add_argument("--precision", choices=("fp32", "bf16"),
                    help="the forward passes' precision (default: the one the run scored the model in, "
                         "from best/bertlab_train.json or the run's metrics.json, so the run's own scores "
                         "are reproduced; fp32 without them)")
    ap.add_argument("--device", default="cpu", metavar="DEVICE",
                    help="where the model runs: cpu (default), cuda, cuda:N, or auto (cuda when available); "
                         "on another device than the run scored on, scores may differ in the last bits")


def main(argv: list[str] | None = None) -> int:
    """Tag new text with a trained model: entities as JSONL (or word/tag lines as CoNLL) on stdout."""
    ap = argparse.ArgumentParser(
        prog="bertlab predict", description=main.__doc__,
        epilog="Entities are read from the tags in strict IOB2 (an I-X with no B-X before it is no entity), "
               "as `bertlab evaluate` scores them; --lenient reads them as conlleval and transformers' "
               "pipeline(aggregation_strategy=\"first\") do, which finds more on the same tags.")
    ap.add_argument("--model", required=True, metavar="DIR", help="a saved model folder, e.g. runs/btl_focal/<run>/best")
    ap.add_argument("--input", required=True, nargs="+", metavar="FILE",
                    help="UTF-8 text files (one document each), .jsonl files (a \"text\" field per line, "
                         "\"id\" optional), or - for stdin")
    add_decode_options(ap)
    add_window_options(ap)
    ap.add_argument("--format", choices=("jsonl", "conll"), default="jsonl",
                    help="jsonl: one entity a line {doc, type, text, start, end, score}, a null-type line for a "
                         "document without entities; conll: word<TAB>tag lines, -DOCSTART- before each "
                         "document (default: jsonl)")
    ap.add_argument("--lenient", action="store_true",
                    help="read entities leniently: an I-X after O or another type starts an entity (jsonl only)")
    ap.add_argument("--output", default="-", metavar="FILE", help="output file (default: - for stdout)")
    args = ap.parse_args(argv)
    from bertlab.inference import check_window
    from bertlab.batching import pad_multiple
    try:
        if args.output != "-":
            check_writable(args.output)
            check_not_input(args.output, args.input)
        ids, texts = read_inputs(args.input)
        model, tokenizer = load_model(args.model, args.device)
        max_length, stride, where = window_settings(args.model, args.max_length, args.stride)
        check_window(model, max_length, pad_multiple(next(model.parameters()).device),
                     names=("--max-length", "the device's padding multiple"))
        if where.startswith("bertlab's defaults"):
            print(f"bertlab predict: note: windows of {max_length} subwords, stride {stride} ({where})", file=sys.stderr)
        progress = show_progress()
        precision, _ = scoring_precision(args.model, args.precision)
        decode = choose_decode(model, args.decode, args.knn)
        knn, calibrator = load_decoders(model, tokenizer, args.model, decode, progress=progress, precision=precision,
                                        log=lambda s: print(s, file=sys.stderr), knn_cache=args.knn_cache)

        def lines():  # document by document, sentence by sentence: memory bounded by a batch (tag_sentences)
            from tqdm import tqdm
            for text, doc in zip(tqdm(texts, desc="predict", unit="doc", disable=not progress), ids):
                sentences = tag_sentences(model, tokenizer, text, decode, knn, calibrator, max_length, stride,
                                          precision=precision)
                yield from (conll_lines(sentences) if args.format == "conll" else
                            entity_lines(doc, text, sentences, "lenient" if args.lenient else "strict"))
        if args.output == "-":
            for line in lines():
                sys.stdout.write(line)
        else:
            write_with(args.output, lambda f: [f.write(line.encode("utf-8")) for line in lines()])
    except Exception as e:  # one line naming the file or option (bertlab.errors); BERTLAB_DEBUG=1 the traceback
        return fail("predict", e, also=(ValueError,))
    return 0
