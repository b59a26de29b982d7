"""Using what was trained: ``bertlab predict`` tags new text, ``bertlab evaluate`` re-scores a
saved model on a bundled corpus.

    text --sentence_spans / word_tokenize--> words with character offsets
         --word_logits (sliding windows, one row per word)--> argmax | viterbi | knn --> IOB2 tags
         --strict_entities--> {doc, type, text, start, end, score}

Offsets are character offsets into the input text (``text[start:end] == entity["text"]``). The
score of an entity is the mean, over its words, of the softmax probability of the predicted tag
(for a CRF head, of its emissions; for KNN, the share of the k neighbours that voted for it).
Entities are read in strict IOB2 (an ``I-X`` with no ``B-X`` before it is no entity), the reading
``bertlab evaluate`` and the study reports score.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from bertlab.metrics import strict_entities



def load_model(model_dir: str | os.PathLike):
    """``(model, tokenizer)`` from a Hugging Face folder saved by training (e.g. ``<run>/best``)."""
    from bertlab.checkpoint import load_pretrained
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir}: no config.json; --model takes a saved model folder, "
                                f"e.g. runs/btl_focal/<run>/best")
    model, tokenizer = load_pretrained(model_dir)
    if tokenizer is None:
        raise FileNotFoundError(f"{model_dir}: no tokenizer files (tokenizer.json or vocab.txt)")
    model.eval()
    return model, tokenizer


def run_config(model_dir: Path) -> dict | None:
    """The training config of the run that saved ``model_dir`` (its parent's metrics.json or
    config.toml), or None when the folder is not inside a run folder."""
    import tomllib
    run = Path(model_dir).resolve().parent
    if (run / "metrics.json").exists():
        cfg = json.loads((run / "metrics.json").read_text(encoding="utf-8")).get("config")
        if cfg:
            return cfg
    if (run / "config.toml").exists():
        return tomllib.loads((run / "config.toml").read_text(encoding="utf-8"))
    return None


def load_knn(model, tokenizer, model_dir: str | os.PathLike, log=print):
    """The KNN decoder of a saved model: ``model_dir/knn.npz`` (training-word logits ``X``,
    labels ``y``, ``k``, ``metric``; training writes it into ``best/`` when ``[eval] decode`` has
    "knn") if present; otherwise refitted on the training split named by the run's config (the
    logits of every training word, as at training time) and cached there."""
    from bertlab.knn import KNN_FILE, KNNClassifier
    model_dir = Path(model_dir)
    cached = model_dir / KNN_FILE
    if cached.exists():
        return KNNClassifier.load(cached)
    cfg = run_config(model_dir)
    if cfg is None:
        raise FileNotFoundError(
            f"{model_dir}: --knn needs the training words' logits: {cached} is missing and the folder "
            f"is not inside a run folder (no ../metrics.json or ../config.toml naming the training data)")
    from bertlab.inference import word_logits
    from bertlab.train import config_from_dict, load_splits
    tc = config_from_dict({k: v for k, v in cfg.items() if k in ("data", "eval")})
    train = load_splits(tc.data).train
    log(f"fitting KNN (k={tc.eval.knn_k}, {tc.eval.knn_metric}) on {train.name} train "
        f"({len(train.sentences)} sentences); cached in {cached}")
    logits = word_logits(model, tokenizer, train.sentences, tc.data.max_length, tc.data.stride)
    label2id = {l: i for i, l in enumerate(model.labels)}
    X = np.concatenate([l for l in logits if len(l)], axis=0)
    y = np.array([label2id[t] for s in train.sentences for t in s.tags], dtype=np.int64)
    knn = KNNClassifier(k=tc.eval.knn_k, metric=tc.eval.knn_metric).fit(X, y)
    knn.save(cached)
    return knn


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


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def predict_text(model, tokenizer, texts: list[str], doc_ids: list[str] | None = None, knn=None,
                 max_length: int = 128, stride: int = 32, batch_size: int = 64) -> list[dict]:
    """Entities of each text: a list of ``{doc, type, text, start, end, score}`` dicts, offsets
    into that text. Decoding: KNN when ``knn`` is given, Viterbi for a CRF head, else argmax."""
    from bertlab.inference import decode_argmax, decode_viterbi, word_logits
    doc_ids = [str(i) for i in range(len(texts))] if doc_ids is None else list(doc_ids)
    entities = []
    for doc, text in zip(doc_ids, texts):
        sents = split_words(text)
        if not sents:
            continue
        logits = word_logits(model, tokenizer, [w for w, _ in sents], max_length, stride, batch_size)
        if knn is not None:
            flat = np.concatenate(logits, axis=0)
            proba = np.asarray(knn.predict_proba(flat))
            ids = np.asarray(knn.classes_)[proba.argmax(-1)]
            conf, k = proba.max(-1), 0
            tags, probs = [], []
            for l in logits:
                tags.append([model.labels[i] for i in ids[k:k + len(l)]])
                probs.append(conf[k:k + len(l)])
                k += len(l)
        else:
            tags = (decode_viterbi(model, logits) if getattr(model, "crf", None) is not None
                    else decode_argmax(logits, model.labels))
            label2id = {l: i for i, l in enumerate(model.labels)}
            probs = [_softmax(l)[np.arange(len(t)), [label2id[x] for x in t]] for l, t in zip(logits, tags)]
        for (words, offsets), sent_tags, p in zip(sents, tags, probs):
            for typ, a, b in strict_entities(sent_tags):
                start, end = offsets[a][0], offsets[b - 1][1]
                entities.append({"doc": doc, "type": typ, "text": text[start:end], "start": start,
                                 "end": end, "score": round(float(np.mean(p[a:b])), 4)})
    return entities


def read_inputs(paths: list[str]) -> tuple[list[str], list[str]]:
    """``(doc ids, texts)`` from files (or ``-`` for stdin): a ``.jsonl`` file (or JSONL on stdin)
    holds one document a line with a ``text`` field (``id``/``doc_id`` optional); any other file is
    one plain-text document named after the file."""
    ids, texts = [], []
    for path in paths:
        raw = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
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
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{name}:{n}: expected a JSON object with a \"text\" field") from None
            ids.append(str(obj.get("id", obj.get("doc_id", f"{name}:{n}"))))
            texts.append(text)
    return ids, texts


def main(argv: list[str] | None = None) -> int:
    """``bertlab predict --model DIR [--knn] --input FILE|- [...]``: entities as JSONL on stdout."""
    ap = argparse.ArgumentParser(prog="bertlab predict", description=main.__doc__)
    ap.add_argument("--model", required=True, help="a saved model folder, e.g. runs/btl_focal/<run>/best")
    ap.add_argument("--input", required=True, nargs="+", help="text files (one document each), "
                    ".jsonl files (a \"text\" field per line), or - for stdin")
    ap.add_argument("--knn", action="store_true", help="KNN decoding over the training words' logits")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--stride", type=int, default=32)
    ap.add_argument("--output", default="-", help="JSONL output file (default: stdout)")
    args = ap.parse_args(argv)
    try:
        model, tokenizer = load_model(args.model)
        knn = load_knn(model, tokenizer, args.model, log=lambda s: print(s, file=sys.stderr)) if args.knn else None
        ids, texts = read_inputs(args.input)
    except (FileNotFoundError, ValueError) as e:
        print(f"bertlab predict: {e}", file=sys.stderr)
        return 2
    ents = predict_text(model, tokenizer, texts, ids, knn, args.max_length, args.stride)
    lines = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in ents)
    if args.output == "-":
        sys.stdout.write(lines)
    else:
        Path(args.output).write_text(lines, encoding="utf-8")
    return 0


def evaluate_model(model_dir, data: str, split: str = "test", knn: bool = False, max_documents: int = 0,
                   max_length: int = 128, stride: int = 32) -> dict:
    """Re-score a saved model on a bundled corpus: ``bertlab.inference.evaluate``'s dict plus the
    entity- and token-level confusion matrices."""
    from bertlab.datasets import load
    from bertlab.inference import evaluate
    from bertlab.metrics import confusion_matrix
    model, tokenizer = load_model(model_dir)
    corpus = load(data, split)
    if max_documents:
        corpus = corpus.subset(max_documents)
    knn_model = load_knn(model, tokenizer, model_dir, log=lambda s: print(s, file=sys.stderr)) if knn else None
    decode = "knn" if knn else ("viterbi" if getattr(model, "crf", None) is not None else "argmax")
    result = evaluate(model, tokenizer, corpus, decode=decode, knn=knn_model, max_length=max_length,
                      stride=stride)
    gold = [p["tags"] if "tags" in p else p["gold"] for p in result["predictions"]]
    pred = [p["pred"] for p in result["predictions"]]
    result["confusion_entity"] = confusion_matrix(gold, pred, level="entity")
    result["confusion_token"] = confusion_matrix(gold, pred, level="token", collapse=True)
    return result


def evaluate_main(argv: list[str] | None = None) -> int:
    """``bertlab evaluate --model DIR --data NAME [--split test] [--knn]``: the full report."""
    from bertlab.metrics import format_report
    ap = argparse.ArgumentParser(prog="bertlab evaluate", description=evaluate_main.__doc__)
    ap.add_argument("--model", required=True, help="a saved model folder, e.g. runs/btl_focal/<run>/best")
    ap.add_argument("--data", required=True, help="a bundled corpus (bertlab data lists them)")
    ap.add_argument("--split", default="test", choices=("train", "dev", "test"))
    ap.add_argument("--knn", action="store_true", help="KNN decoding (see bertlab predict --knn)")
    ap.add_argument("--max-documents", type=int, default=0, help="only the first N documents")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--stride", type=int, default=32)
    ap.add_argument("--json", help="also write the numbers (and predictions) to this JSON file")
    args = ap.parse_args(argv)
    try:
        r = evaluate_model(args.model, args.data, args.split, args.knn, args.max_documents,
                           args.max_length, args.stride)
    except (FileNotFoundError, ValueError) as e:
        print(f"bertlab evaluate: {e}", file=sys.stderr)
        return 2
    print(f"{args.model} on {args.data} {args.split}, decode {r['decode']}\n")
    print("Entities (strict IOB2, seqeval's strict mode):\n" + format_report(r["entity_report"] if "entity_report" in r else r["entity"]))
    print(f"Entity micro F1, conlleval (tolerant) reading: {r['micro_f1_conlleval']:.4f}\n")
    print("Tokens:\n" + format_report(r["token"]))
    print(f"Unweighted accuracy (mean per-tag recall): {r['unweighted_accuracy']:.4f}\n")
    print(f"Entity confusion (gold rows, predicted columns):\n{r['confusion_entity']}\n")
    print(f"Token confusion by type:\n{r['confusion_token']}")
    if args.json:
        out = {k: v for k, v in r.items() if not k.startswith("confusion")}
        for k in ("confusion_entity", "confusion_token"):
            out[k] = {"rows": r[k].rows, "cols": r[k].cols, "matrix": r[k].matrix.tolist()}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0
