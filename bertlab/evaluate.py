"""``bertlab evaluate``: re-score a saved model on a bundled corpus, a CoNLL file or a brat folder.

    --data NAME|FILE|DIR --load_eval_data--> Corpus --word_logits--> a decode (--decode)
         --bertlab.inference.evaluate--> strict entity scores, token scores, confusion matrices

The model, its window settings, its precision and its decoders are found as ``bertlab predict``
finds them (``bertlab.predict``: ``load_model``, ``window_settings``, ``scoring_precision``,
``choose_decode``, ``load_decoders``), so both commands read a model folder the same way.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bertlab.errors import fail
from bertlab.files import write_text
from bertlab.metrics import strict_entities
from bertlab.predict import (UsageError, add_decode_options, add_window_options, check_not_input, check_writable,
                             choose_decode, load_decoders, load_model, scoring_precision, show_progress,
                             window_settings)

def load_eval_data(data: str, split: str | None = None, scheme: str | None = None):
    """A bundled corpus split (``data`` a name from ``bertlab data list``; ``split`` default test),
    a CoNLL file (``scheme`` its tag scheme, default IOB2) or a brat folder (``<id>.txt`` +
    ``<id>.ann`` pairs), the last two read whole by ``bertlab.datasets.read_corpus``."""
    from bertlab.datasets import list_corpora, load, read_corpus
    if data in list_corpora():
        if scheme is not None:
            raise UsageError(f"--scheme applies to CoNLL files; {data} is a bundled corpus")
        return load(data, split or "test")
    path = Path(data)
    if not path.exists():
        raise UsageError(f"{data}: no such file, nor a bundled corpus ({', '.join(list_corpora())})")
    if split is not None:
        raise UsageError(f"--split applies to bundled corpora; {data} is a {'folder' if path.is_dir() else 'file'} "
                         f"(evaluated whole)")
    if path.is_dir() and scheme is not None:
        raise UsageError(f"--scheme applies to CoNLL files; {data} is a brat folder")
    return read_corpus(path, "test", scheme=scheme or "IOB2")


def label_coverage(model_labels: list[str], corpus) -> dict:
    """Gold mentions of ``corpus`` whose type the model cannot predict: ``{"types": {type: count},
    "mentions", "total"}`` (empty ``types`` when the model knows every type)."""
    known = {l[2:] for l in model_labels if l != "O"}
    counts: dict[str, int] = {}
    for s in corpus.sentences:
        for typ, _, _ in strict_entities(s.tags):
            counts[typ] = counts.get(typ, 0) + 1
    missing = {t: n for t, n in sorted(counts.items(), key=lambda x: -x[1]) if t not in known}
    return {"types": missing, "mentions": sum(missing.values()), "total": sum(counts.values())}


def evaluate_model(model_dir, data: str, split: str | None = None, knn: bool = False, max_documents: int = 0,
                   max_length: int | None = None, stride: int | None = None, scheme: str | None = None,
                   progress: bool = False, log=lambda s: None, precision: str | None = None,
                   device: str = "cpu", decode: str | None = None,
                   knn_cache: str | os.PathLike | None = None) -> dict:
    """Re-score a saved model on a bundled corpus, a CoNLL file or a brat folder (``load_eval_data``):
    ``bertlab.inference.evaluate``'s
    dict plus the entity- and token-level confusion matrices, the window settings
    (``max_length``, ``stride``, ``window_source``) and ``warnings`` (gold types the model lacks).
    ``decode`` as ``choose_decode`` (``knn=True`` is ``decode="knn"``)."""
    from bertlab.inference import evaluate, word_logits
    from bertlab.metrics import confusion_matrix
    if max_documents < 0:  # a slice [:-1] would silently score all but the last document
        raise ValueError(f"--max-documents {max_documents}: expected 0 (all documents) or a number of documents")
    model, tokenizer = load_model(model_dir, device)
    corpus = load_eval_data(data, split, scheme)
    if max_documents:
        corpus = corpus.subset(max_documents)
    max_length, stride, where = window_settings(model_dir, max_length, stride)
    warnings = []
    lacking = label_coverage(model.labels, corpus)
    if lacking["types"]:
        shown = ", ".join(f"{t} ({n})" for t, n in list(lacking["types"].items())[:5])
        warnings.append(f"{len(lacking['types'])} gold entity types, {lacking['mentions']} of "
                        f"{lacking['total']} mentions, are not among the model's labels and can never be "
                        f"found: {shown}{', ...' if len(lacking['types']) > 5 else ''}")
    for w in warnings:
        log(f"warning: {w}")
    precision, precision_source = scoring_precision(model_dir, precision)
    decode = choose_decode(model, decode, knn)
    knn_model, calibrator = load_decoders(model, tokenizer, model_dir, decode, log=log, progress=progress,
                                          precision=precision, knn_cache=knn_cache)
    logits = word_logits(model, tokenizer, corpus.sentences, max_length, stride, precision=precision,
                         progress=progress)
    result = evaluate(model, tokenizer, corpus, decode=decode, knn=knn_model, logits=logits, calibrator=calibrator)
    gold = [p["tags"] for p in result["predictions"]]
    pred = [p["pred"] for p in result["predictions"]]
    result["confusion_entity"] = confusion_matrix(gold, pred, level="entity")
    result["confusion_token"] = confusion_matrix(gold, pred, level="token", collapse=True)
    result.update(data=corpus.name, split=corpus.split, documents=len(corpus.documents),
                  sentences=len(corpus.sentences), max_length=max_length, stride=stride,
                  window_source=where, warnings=warnings, precision=precision, precision_source=precision_source)
    return result


def format_evaluation(r: dict, title: str, details: bool = False) -> str:
    """The text ``bertlab evaluate`` prints: a summary (micro, macro and weighted averages of the
    strict entity scores, conlleval micro F1, token accuracy, unweighted accuracy); with
    ``details`` also the per-type tables and both confusion matrices."""
    from bertlab.metrics import format_report
    averages = ("micro avg", "macro avg", "weighted avg")
    entity = r["entity_report"] if details else {k: v for k, v in r["entity_report"].items() if k in averages}
    lines = [title, "",
             "Entities (strict IOB2, seqeval's strict mode):",
             format_report(entity).replace("\n\n\n", "\n\n"),  # no per-type rows: one blank line
             f"Entity micro F1, conlleval (tolerant) reading: {r['micro_f1_conlleval']:.4f}",
             f"Token accuracy: {r['token']['accuracy']:.4f}",
             f"Unweighted accuracy (mean per-tag recall): {r['unweighted_accuracy']:.4f}"]
    lines += [f"warning: {w}" for w in r.get("warnings", [])]
    if details:
        lines += ["", "Tokens:", format_report(r["token"]),
                  f"Entity confusion (gold rows, predicted columns):\n{r['confusion_entity']}", "",
                  f"Token confusion by type:\n{r['confusion_token']}"]
    else:
        lines += ["", "(--details: per-type tables and confusion matrices; --output FILE: everything as JSON)"]
    return "\n".join(lines) + "\n"


def evaluation_json(r: dict) -> dict:
    """``evaluate_model``'s dict as plain JSON (confusion matrices as rows, cols, matrix)."""
    out = {k: v for k, v in r.items() if not k.startswith("confusion")}
    for k in ("confusion_entity", "confusion_token"):
        out[k] = {"rows": r[k].rows, "cols": r[k].cols, "matrix": r[k].matrix.tolist()}
    return out


def main(argv: list[str] | None = None) -> int:
    """Re-score a saved model on a bundled corpus, a CoNLL file or a brat folder: a summary of the
    strict entity scores, with --details the per-type tables and confusion matrices."""
    ap = argparse.ArgumentParser(prog="bertlab evaluate", description=main.__doc__)
    ap.add_argument("--model", required=True, metavar="DIR", help="a saved model folder, e.g. runs/btl_focal/<run>/best")
    ap.add_argument("--data", required=True, metavar="NAME|FILE|DIR",
                    help="a bundled corpus (`bertlab data list`), a CoNLL file (token<TAB>tag lines) or a brat "
                         "folder (<id>.txt + <id>.ann pairs, read as MACCROBAT is)")
    ap.add_argument("--split", choices=("train", "dev", "test"),
                    help="split of a bundled corpus (default: test)")
    ap.add_argument("--scheme", choices=("IOB1", "IOB2", "IOBES", "BILOU"),
                    help="tag scheme of a CoNLL file, converted to IOB2 (default: IOB2)")
    add_decode_options(ap)
    ap.add_argument("--max-documents", type=int, default=0, metavar="N",
                    help="only the first N documents (default: 0, all)")
    add_window_options(ap)
    ap.add_argument("--details", action="store_true",
                    help="also print the per-type tables and the entity and token confusion matrices")
    ap.add_argument("--output", metavar="FILE",
                    help="also write every number, the confusion matrices and the predictions to this JSON file")
    ap.add_argument("--json", dest="output", help=argparse.SUPPRESS)  # its old name
    args = ap.parse_args(argv)
    try:
        if args.output:
            check_writable(args.output)
            check_not_input(args.output, [args.data])
        r = evaluate_model(args.model, args.data, args.split, args.knn, args.max_documents, args.max_length,
                           args.stride, args.scheme, progress=show_progress(),
                           log=lambda s: print(s, file=sys.stderr), precision=args.precision,
                           device=args.device, decode=args.decode, knn_cache=args.knn_cache)
        data = f"{args.data} {r['split']}" if args.data == r["data"] else args.data
        docs = f"{r['documents']} document{'s' * (r['documents'] != 1)}"
        title = (f"{args.model} on {data} ({docs}, {r['sentences']} sentences), "
                 f"decode {r['decode']}\nwindows of {r['max_length']} subwords, stride {r['stride']} "
                 f"({r['window_source']})\nprecision {r['precision']} ({r['precision_source']})")
        sys.stdout.write(format_evaluation(r, title, args.details))
        if args.output:
            write_text(args.output, json.dumps(evaluation_json(r), indent=1) + "\n")
    except Exception as e:  # one line naming the file or option (bertlab.errors); BERTLAB_DEBUG=1 the traceback
        return fail("evaluate", e, also=(ValueError,))
    return 0
