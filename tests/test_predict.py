"""bertlab predict / evaluate against references: the tags come out as transformers' own
BertForTokenClassification would give them on the same saved folder, offsets index the input
text, KNN decoding equals the KNN classifier's vote, and the CLI reads text, JSONL and stdin."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_STUDY, write_study

from bertlab.datasets import entity_types, label_list
from bertlab.metrics import strict_entities
from bertlab.evaluate import main as evaluate_main
from bertlab.predict import load_knn, load_model, main, predict_text, split_words

TEXT = ("A 54-year-old man presented with fever and chest pain. Troponin was 2.3 ng/mL.\n"
        "He received aspirin 300 mg and was discharged on day 4.")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, minilm_path):
    """A tiny random-init BERT with MiniLM's vocabulary and MACCROBAT's labels, saved as a
    Hugging Face folder; the head is scaled up so argmax picks many different labels."""
    from bertlab.checkpoint import build_model, save_pretrained
    from bertlab.tokenization import Tokenizer
    torch.manual_seed(0)
    labels = label_list(entity_types("maccrobat"))
    model = build_model("minilm", labels, num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                        intermediate_size=64)
    with torch.no_grad():
        model.classifier.weight.mul_(50)
    out = tmp_path_factory.mktemp("predict") / "best"
    save_pretrained(model, Tokenizer.from_pretrained(minilm_path), out)
    return out


def reference_tags(folder, text):
    """transformers on the same folder: first-subword logits per word, argmax; one tag list a sentence."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForTokenClassification.from_pretrained(folder).eval()
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    out = []
    for words, offsets in split_words(text):
        enc = tok(words, is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits[0]
        first = {}
        for pos, w in enumerate(enc.word_ids()):
            if w is not None and w not in first:
                first[w] = pos
        out.append([labels[int(logits[first[w]].argmax())] for w in range(len(words))])
    return out


def reference_entities(folder, text):
    """The strict IOB2 entities of ``reference_tags`` as ``(type, start, end)`` character spans."""
    return [(typ, offsets[a][0], offsets[b - 1][1])
            for (words, offsets), tags in zip(split_words(text), reference_tags(folder, text))
            for typ, a, b in strict_entities(tags)]


def test_predict_matches_transformers_and_offsets(model_dir):
    model, tokenizer = load_model(model_dir)
    ents = predict_text(model, tokenizer, [TEXT], ["d1"])
    assert ents, "the scaled random head should tag something"
    assert [(e["type"], e["start"], e["end"]) for e in ents] == reference_entities(model_dir, TEXT)
    for e in ents:
        assert e["doc"] == "d1" and TEXT[e["start"]:e["end"]] == e["text"] and 0 < e["score"] <= 1


def test_split_words_offsets():
    sents = split_words(TEXT)
    assert len(sents) == 3  # two sentences on the first line, one on the second
    for words, offsets in sents:
        assert [TEXT[a:b] for a, b in offsets] == words


def test_long_document_sliding_windows(model_dir):
    """A sentence far longer than max_length is tagged through overlapping windows: every word
    gets one prediction, and entity offsets still index the text."""
    model, tokenizer = load_model(model_dir)
    long_text = " ".join(["The patient had fever , cough and 3 mg aspirin"] * 30)
    ents = predict_text(model, tokenizer, [long_text], max_length=32, stride=8)
    assert ents and all(long_text[e["start"]:e["end"]] == e["text"] for e in ents)
    from bertlab.inference import word_logits
    words = split_words(long_text)[0][0]
    logits = word_logits(model, tokenizer, [words], max_length=32, stride=8)[0]
    assert logits.shape[0] == len(words) and not np.isnan(logits).any()


def test_knn_decoding_is_the_classifiers_vote(model_dir, tmp_path):
    from bertlab.inference import word_logits
    from bertlab.knn import KNNClassifier
    model, tokenizer = load_model(model_dir)
    rng = np.random.default_rng(0)
    C = len(model.labels)
    X = rng.normal(size=(200, C)).astype(np.float32)
    y = rng.integers(0, C, size=200)
    np.savez(model_dir / "knn.npz", X=X, y=y, k=np.int64(5), metric=np.str_("euclidean"))
    try:
        knn = load_knn(model, tokenizer, model_dir)
        ents = predict_text(model, tokenizer, [TEXT], knn=knn)
        ref = KNNClassifier(k=5).fit(X, y)
        expected = []
        for words, offsets in split_words(TEXT):
            tags = [model.labels[i] for i in ref.predict(word_logits(model, tokenizer, [words])[0])]
            expected += [(t, offsets[a][0], offsets[b - 1][1]) for t, a, b in strict_entities(tags)]
        assert [(e["type"], e["start"], e["end"]) for e in ents] == expected
    finally:
        (model_dir / "knn.npz").unlink()


def test_knn_without_training_data_says_how(model_dir):
    model, tokenizer = load_model(model_dir)
    with pytest.raises(FileNotFoundError, match="--knn needs the training words' logits"):
        load_knn(model, tokenizer, model_dir)


def test_cli_reads_text_jsonl_and_stdin(model_dir, tmp_path, monkeypatch, capsys):
    (tmp_path / "note.txt").write_text(TEXT)
    (tmp_path / "docs.jsonl").write_text(json.dumps({"id": "a", "text": TEXT}) + "\n"
                                         + json.dumps({"text": "Fever."}) + "\n")
    out = tmp_path / "ents.jsonl"
    assert main(["--model", str(model_dir), "--input", str(tmp_path / "note.txt"), str(tmp_path / "docs.jsonl"),
                 "--output", str(out)]) == 0
    ents = [json.loads(l) for l in out.read_text().splitlines()]
    assert {e["doc"] for e in ents} <= {"note.txt", "a", "docs.jsonl:2"}
    by_doc = {d: [e for e in ents if e["doc"] == d] for d in ("note.txt", "a")}
    assert [(e["type"], e["start"]) for e in by_doc["note.txt"]] == [(e["type"], e["start"]) for e in by_doc["a"]]
    monkeypatch.setattr("sys.stdin", io.StringIO(TEXT))
    assert main(["--model", str(model_dir), "--input", "-"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(l)["start"] for l in lines] == [e["start"] for e in by_doc["a"]]
    (tmp_path / "bad.jsonl").write_text('{"txt": 1}\n')
    assert main(["--model", str(model_dir), "--input", str(tmp_path / "bad.jsonl")]) == 2
    assert capsys.readouterr().err == 'bertlab predict: bad.jsonl:1: expected a JSON object with a "text" string field\n'


def test_evaluate_prints_a_summary_and_details_on_request(model_dir, capsys, tmp_path):
    args = ["--model", str(model_dir), "--data", "maccrobat", "--split", "test", "--max-documents", "1"]
    assert evaluate_main(args + ["--output", str(tmp_path / "r.json")]) == 0
    summary = capsys.readouterr().out
    for piece in ("micro avg", "macro avg", "weighted avg", "conlleval", "Token accuracy", "Unweighted accuracy"):
        assert piece in summary
    for piece in ("Activity", "Entity confusion", "Token confusion"):  # no per-type rows, no matrices
        assert piece not in summary
    assert len(summary.splitlines()) < 20 and max(map(len, summary.splitlines())) < 200
    assert evaluate_main(args + ["--details"]) == 0
    details = capsys.readouterr().out
    for piece in ("Tokens:", "Entity confusion", "missed", "Token confusion"):
        assert piece in details
    r = json.loads((tmp_path / "r.json").read_text())
    from bertlab.metrics import entity_report
    gold = [p["tags"] for p in r["predictions"]]
    pred = [p["pred"] for p in r["predictions"]]
    assert r["entity_report"]["micro avg"]["f1-score"] == pytest.approx(
        entity_report(gold, pred, zero_division=0)["micro avg"]["f1-score"])
    assert r["confusion_entity"]["rows"][-1] == "spurious" and r["confusion_token"]["matrix"]


def test_evaluate_on_a_conll_file_equals_the_bundled_corpus(model_dir, tmp_path):
    """A CoNLL file written from a bundled split scores exactly as the split, in any tag scheme."""
    from bertlab.datasets import load, write_conll
    from bertlab.evaluate import evaluate_model
    corpus = load("maccrobat", "test").subset(2)
    write_conll(corpus, tmp_path / "test.conll")
    write_conll(corpus, tmp_path / "test.iobes", scheme="IOBES")
    bundled = evaluate_model(model_dir, "maccrobat", "test", max_documents=2)
    for path, scheme in ((tmp_path / "test.conll", None), (tmp_path / "test.iobes", "IOBES")):
        r = evaluate_model(model_dir, str(path), scheme=scheme)
        assert r["documents"] == 2 and r["sentences"] == len(corpus.sentences)
        for key in ("micro_f1", "micro_f1_conlleval", "entity_report", "token", "unweighted_accuracy"):
            assert r[key] == bundled[key], key
        assert [p["pred"] for p in r["predictions"]] == [p["pred"] for p in bundled["predictions"]]


def damaged_copies(model_dir, tmp_path) -> tuple[Path, Path]:
    """Two copies of the model: one whose vocab.txt lacks [CLS] (and no tokenizer.json), one with a
    NaN in a weight (a diverged run's)."""
    import shutil

    from safetensors.torch import load_file, save_file
    no_cls = tmp_path / "no_cls"
    shutil.copytree(model_dir, no_cls)
    (no_cls / "tokenizer.json").unlink()
    vocab = (no_cls / "vocab.txt").read_text().split("\n")
    (no_cls / "vocab.txt").write_text("\n".join(t for t in vocab if t != "[CLS]"))
    nan = tmp_path / "nan"
    shutil.copytree(model_dir, nan)
    weights = load_file(str(nan / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, str(nan / "model.safetensors"), metadata={"format": "pt"})
    return no_cls, nan


def test_expected_failures_are_one_line_with_status_2(model_dir, tmp_path, capsys, monkeypatch):
    """Missing files, bad folders, non-UTF-8 input, unknown corpora, wrong flag combinations,
    unwritable outputs: one line on stderr, exit status 2; an unwritable output fails first."""
    (tmp_path / "latin1.txt").write_bytes("Fever.\nCaf\xe9 au lait spots.\n".encode("latin-1"))
    (tmp_path / "note.txt").write_text(TEXT)
    (tmp_path / "test.conll").write_text("Fever\tB-Sign_symptom\n")
    note, model = str(tmp_path / "note.txt"), str(model_dir)
    no_cls, nan = damaged_copies(model_dir, tmp_path)
    cases = [
        (main, ["--model", model, "--input", str(tmp_path / "latin1.txt")],
         f"{tmp_path / 'latin1.txt'}:2: cannot decode byte 0xe9"),
        (main, ["--model", model, "--input", str(tmp_path / "missing.txt")], f"{tmp_path / 'missing.txt'}: No such file"),
        (main, ["--model", model, "--input", str(tmp_path)], f"{tmp_path}: Is a directory"),
        (main, ["--model", str(tmp_path), "--input", note], "no config.json"),
        (main, ["--model", model, "--input", note, "--output", str(tmp_path / "no" / "e.jsonl")], "does not exist"),
        (evaluate_main, ["--model", str(tmp_path), "--data", "maccrobat"], "no config.json"),
        (evaluate_main, ["--model", model, "--data", "my_test.conll"], "my_test.conll: no such file, nor a bundled corpus"),
        # a folder is a brat folder since #41 item 8 (it said "is a folder"): its first text lacks its .ann
        (evaluate_main, ["--model", model, "--data", str(tmp_path)],
         f"{tmp_path / 'latin1.ann'}: missing annotation file for {tmp_path / 'latin1.txt'}"),
        (evaluate_main, ["--model", model, "--data", "maccrobat", "--scheme", "IOBES"], "--scheme applies to CoNLL files"),
        (evaluate_main, ["--model", model, "--data", str(tmp_path / "test.conll"), "--split", "dev"], "--split applies"),
        (evaluate_main, ["--model", model, "--data", "maccrobat", "--output", str(tmp_path / "no" / "r.json")],
         f"{tmp_path / 'no' / 'r.json'}: cannot write: folder {tmp_path / 'no'} does not exist"),
        (evaluate_main, ["--model", model, "--data", "maccrobat", "--output", str(tmp_path)], "is a folder"),
        (main, ["--model", model, "--input", note, "--max-length", "600", "--stride", "32"],
         "--max-length = 600 is more than the model's 512 positions (max_position_embeddings)"),
        (evaluate_main, ["--model", model, "--data", "maccrobat", "--max-length", "600", "--stride", "32"],
         "max_length = 600 is more than the model's 512 positions"),
        (main, ["--model", model, "--input", note, "--device", "banana"], "--device banana: expected cpu, cuda"),
        (evaluate_main, ["--model", model, "--data", "maccrobat", "--device", "banana"], "--device banana: expected"),
        # issue #41: tracebacks from the windowing, a KeyError '[CLS]'; NaN weights and an output
        # that is the input exited 0
        (main, ["--model", model, "--input", note, "--max-length", "0"], "--max-length 0: expected at least 3"),
        (main, ["--model", model, "--input", note, "--max-length", "2"], "--max-length 2: expected at least 3"),
        (main, ["--model", model, "--input", note, "--stride", "-1"],
         "--stride -1: expected 0 <= stride < max_length - 2 = 126"),
        (main, ["--model", model, "--input", note, "--max-length", "16", "--stride", "14"],
         "--stride 14: expected 0 <= stride < max_length - 2 = 14"),
        (evaluate_main, ["--model", model, "--data", "maccrobat", "--max-length", "16", "--stride", "20"],
         "--stride 20: expected 0 <= stride < max_length - 2 = 14"),
        (main, ["--model", str(no_cls), "--input", note],
         f"{no_cls / 'vocab.txt'}: the classification token '[CLS]' is not in the vocabulary"),
        (main, ["--model", str(nan), "--input", note], f"{nan}: 1 weight tensor(s) hold NaN or infinite values"),
        (evaluate_main, ["--model", str(nan), "--data", "maccrobat"], "hold NaN or infinite values"),
        (main, ["--model", model, "--input", note, "--output", note], f"--output {note}: is the input file {note}"),
        (evaluate_main, ["--model", model, "--data", str(tmp_path / "test.conll"), "--output", str(tmp_path / "test.conll")],
         "is the input file"),
    ]
    if not torch.cuda.is_available():
        cases.append((main, ["--model", model, "--input", note, "--device", "cuda"],
                      "--device cuda: CUDA is not available"))
    for func, argv, message in cases:
        assert func(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert (tmp_path / "note.txt").read_text() == TEXT and (tmp_path / "test.conll").read_text() == "Fever\tB-Sign_symptom\n"

    def fail(*a, **k):
        raise AssertionError("the model was loaded before the output was checked")
    monkeypatch.setattr("bertlab.predict.load_model", fail)
    monkeypatch.setattr("bertlab.evaluate.load_model", fail)
    assert evaluate_main(["--model", model, "--data", "maccrobat", "--json", str(tmp_path / "no" / "r.json")]) == 2
    assert main(["--model", model, "--input", note, "--output", str(tmp_path / "no" / "e.jsonl")]) == 2


def test_unexpected_errors_are_one_line_with_their_type(model_dir, tmp_path, capsys, monkeypatch):
    """predict and evaluate report through bertlab.errors.fail, as every command: a bug anywhere,
    tagging included (it used to escape as a traceback), is one line with its type and exit status
    2; BERTLAB_DEBUG=1 prints the traceback as well."""
    (tmp_path / "note.txt").write_text(TEXT)

    def bug(*args, **kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr("bertlab.predict.tag_sentences", bug)
    monkeypatch.setattr("bertlab.evaluate.evaluate_model", bug)
    for command, func, argv in (("predict", main, ["--input", str(tmp_path / "note.txt")]),
                                ("evaluate", evaluate_main, ["--data", "maccrobat"])):
        assert func(["--model", str(model_dir), *argv]) == 2
        err = capsys.readouterr().err
        assert err.endswith(f"bertlab {command}: RuntimeError: boom (BERTLAB_DEBUG=1 for the traceback)\n") and \
            "Traceback" not in err
        monkeypatch.setenv("BERTLAB_DEBUG", "1")
        assert func(["--model", str(model_dir), *argv]) == 2
        assert "Traceback" in capsys.readouterr().err
        monkeypatch.delenv("BERTLAB_DEBUG")


def test_evaluate_refuses_a_negative_max_documents(model_dir, capsys):
    """`--max-documents -1` used to score every document but the last (a [:-1] slice) and exit 0;
    it is refused like any bad option: one line, status 2, before the model is loaded."""
    for n in ("-1", "-20"):
        assert evaluate_main(["--model", str(model_dir), "--data", "maccrobat", "--max-documents", n]) == 2
        assert capsys.readouterr().err == (f"bertlab evaluate: --max-documents {n}: expected 0 (all documents) "
                                           f"or a number of documents\n")
    from bertlab.evaluate import evaluate_model
    assert evaluate_model(model_dir, "maccrobat", "test", max_documents=2)["documents"] == 2


def test_evaluate_warns_about_gold_types_the_model_lacks(model_dir, tmp_path, capsys):
    """A MACCROBAT model on NCBI-disease can never find a Disease: scores are zero, and it says so."""
    from bertlab.evaluate import evaluate_model
    messages = []
    r = evaluate_model(model_dir, "ncbi_disease", "test", max_documents=3, log=messages.append)
    gold = sum(1 for p in r["predictions"] for t in p["tags"] if t == "B-Disease")
    assert gold > 0 and r["micro_f1"] == 0
    expected = f"1 gold entity types, {gold} of {gold} mentions, are not among the model's labels and can never be found: Disease ({gold})"
    assert r["warnings"] == [expected] and messages == ["warning: " + expected]
    assert evaluate_main(["--model", str(model_dir), "--data", "ncbi_disease", "--max-documents", "3"]) == 0
    assert "warning: " + expected in capsys.readouterr().out
    assert evaluate_model(model_dir, "maccrobat", "test", max_documents=1)["warnings"] == []


def saved_run(model_dir, tmp_path, settings_file: str, config: dict):
    """A copy of the model as ``tmp_path/run/best`` with the run's config in ``settings_file``
    (``best/bertlab_train.json`` or ``metrics.json`` beside it)."""
    import shutil
    best = tmp_path / "run" / "best"
    shutil.copytree(model_dir, best)
    (tmp_path / "run" / settings_file).write_text(json.dumps({"config": config}))
    return best


@pytest.mark.parametrize("settings_file", ["best/bertlab_train.json", "metrics.json"])
def test_windows_are_cut_as_the_model_was_trained(model_dir, tmp_path, settings_file):
    """evaluate/predict read max_length and stride saved with the model (the lead's
    best/bertlab_train.json, or an older run's metrics.json), so they score as training did;
    explicit values win, and without saved settings it is 128 / 32 with a note."""
    from bertlab.evaluate import evaluate_model
    from bertlab.predict import window_settings
    best = saved_run(model_dir, tmp_path, settings_file, {"data": {"max_length": 24, "stride": 4}})
    assert window_settings(best)[:2] == (24, 4) and str(tmp_path / "run" / settings_file) in window_settings(best)[2]
    assert window_settings(best, 40, None)[:2] == (40, 4) and window_settings(best, 40, 8)[:2] == (40, 8)
    assert window_settings(model_dir)[:2] == (128, 32) and "bertlab's defaults" in window_settings(model_dir)[2]
    saved = evaluate_model(best, "maccrobat", "test", max_documents=1)
    explicit = evaluate_model(model_dir, "maccrobat", "test", max_documents=1, max_length=24, stride=4)
    default = evaluate_model(model_dir, "maccrobat", "test", max_documents=1)
    assert (saved["max_length"], saved["stride"]) == (24, 4)
    assert [p["pred"] for p in saved["predictions"]] == [p["pred"] for p in explicit["predictions"]]
    assert [p["pred"] for p in saved["predictions"]] != [p["pred"] for p in default["predictions"]]


def test_predict_uses_saved_windows_and_notes_the_default(model_dir, tmp_path, capsys):
    from bertlab.datasets import load
    text = " ".join(load("maccrobat", "test").sentences[0].tokens * 3)  # a sentence of many windows
    (tmp_path / "note.txt").write_text(text)
    best = saved_run(model_dir, tmp_path, "best/bertlab_train.json", {"data": {"max_length": 24, "stride": 4}})
    model, tokenizer = load_model(model_dir)
    for folder, extra, window in ((best, [], (24, 4)), (model_dir, ["--max-length", "24", "--stride", "4"], (24, 4)),
                                  (model_dir, [], (128, 32))):
        assert main(["--model", str(folder), "--input", str(tmp_path / "note.txt")] + extra) == 0
        out, err = capsys.readouterr()
        expected = predict_text(model, tokenizer, [text], ["note.txt"], max_length=window[0], stride=window[1])
        assert [json.loads(l) for l in out.splitlines()] == expected
        assert ("note: windows of 128 subwords, stride 32 (bertlab's defaults" in err) == (window == (128, 32))


def test_knn_refit_reproduces_training_time_knn(tmp_path):
    """evaluate --knn on a trained run's best/ refits the KNN from the run's config and gives the
    same test predictions as the KNN decode written at training time."""
    from bertlab.evaluate import evaluate_model
    from bertlab.study import run_experiment
    # the tiny study, trained once and scored with KNN only
    text = (TINY_STUDY.replace('decode = ["argmax"]', 'decode = ["knn"]\nknn_k = 3')
            .replace('decode = "argmax" }', 'decode = "knn" }')
            .replace('"loss.name" = ["ce", "focal"]', '"loss.name" = ["ce"]').replace('"train.seed" = [0, 1]', '"train.seed" = [0]'))
    d = write_study(tmp_path, text, name="k")
    sdir = run_experiment("k", out=tmp_path / "runs", experiments_dir=d, progress=lambda s: None, report=False)
    best = sdir / "loss=ce__seed=0" / "best"
    trained = [json.loads(l) for l in (sdir / "loss=ce__seed=0" / "predictions_test_knn.jsonl").read_text().splitlines()]
    saved = (best / "knn.npz").read_bytes()  # written at the end of training
    r = evaluate_model(best, "maccrobat", "test", knn=True, max_documents=2, max_length=48, stride=8)
    assert [p["pred"] for p in r["predictions"]] == [p["pred"] for p in trained]
    (best / "knn.npz").unlink()  # an older run folder: refit from the run's config
    r = evaluate_model(best, "maccrobat", "test", knn=True, max_documents=2, max_length=48, stride=8,
                       knn_cache=tmp_path / "cache")
    assert not (best / "knn.npz").exists()  # the model folder is only read
    cached = list((tmp_path / "cache").glob("knn-*.npz"))  # kept where --knn-cache says
    assert len(cached) == 1
    assert [p["pred"] for p in r["predictions"]] == [p["pred"] for p in trained]
    z_saved, z_refit = np.load(io.BytesIO(saved)), np.load(cached[0])
    np.testing.assert_allclose(z_refit["X"], z_saved["X"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(z_refit["y"], z_saved["y"])


def test_predict_knn_never_writes_the_model_folder(model_dir, tmp_path, capsys):
    """`predict --knn` on a folder without knn.npz refits in memory and leaves the (possibly
    read-only) model folder as it was; --knn-cache DIR keeps the refit there for the next call,
    under a name that changes with the model (a retrained model never reads a stale reference)."""
    (tmp_path / "note.txt").write_text(TEXT)
    best = saved_run(model_dir, tmp_path, "best/bertlab_train.json",
                     {"data": {"name": "maccrobat", "max_documents": 2, "max_length": 48, "stride": 8},
                      "eval": {"knn_k": 3}})
    before = {p.name: p.stat().st_mtime_ns for p in best.iterdir()}
    best.chmod(0o555)  # read-only (root ignores this; the listing below is the real check)
    try:
        assert main(["--model", str(best), "--input", str(tmp_path / "note.txt"), "--knn"]) == 0
        assert {p.name: p.stat().st_mtime_ns for p in best.iterdir()} == before  # was: knn.npz written there
        out, err = capsys.readouterr()
        assert "not cached (--knn-cache DIR keeps it)" in err and out
        from bertlab.predict import knn_cache_name, run_config
        cache = tmp_path / "cache"
        argv = ["--model", str(best), "--input", str(tmp_path / "note.txt"), "--knn", "--knn-cache", str(cache)]
        assert main(argv) == 0
        assert capsys.readouterr().out == out and [p.name for p in cache.iterdir()] == [
            knn_cache_name(best, run_config(best)[0], "fp32")]
        assert main(argv) == 0
        again, err = capsys.readouterr()
        assert again == out and "fitting KNN" not in err  # read from the cache
    finally:
        best.chmod(0o755)
    assert {p.name: p.stat().st_mtime_ns for p in best.iterdir()} == before
    (best / "model.safetensors").touch()  # "retrained": another cache entry
    assert knn_cache_name(best, run_config(best)[0], "fp32") not in [p.name for p in cache.iterdir()]


def test_lenient_reading_is_transformers_pipeline_first(model_dir):
    """--lenient reads the tags as pipeline(aggregation_strategy="first") groups them on the same
    folder (an orphan I-X starts an entity); the default strict reading finds fewer."""
    from transformers import pipeline
    pipe = pipeline("token-classification", model=str(model_dir), aggregation_strategy="first")
    model, tokenizer = load_model(model_dir)
    lenient = predict_text(model, tokenizer, [TEXT], reading="lenient")
    strict = predict_text(model, tokenizer, [TEXT])
    expected = []
    for words, offsets in split_words(TEXT):
        joined = " ".join(words)  # bertlab's words, so both sides see the same word boundaries
        starts = np.cumsum([0] + [len(w) + 1 for w in words[:-1]])
        for e in pipe(joined):
            a, b = int(np.searchsorted(starts, e["start"])), int(np.searchsorted(starts, e["end"]))
            expected.append((e["entity_group"], offsets[a][0], offsets[b - 1][1]))
    assert [(e["type"], e["start"], e["end"]) for e in lenient] == expected
    assert len(strict) < len(lenient)
    assert set((e["type"], e["start"], e["end"]) for e in strict) <= set(expected)
    with pytest.raises(ValueError, match="reading must be one of"):
        predict_text(model, tokenizer, [TEXT], reading="tolerant")


def test_predict_conll_format_and_empty_documents(model_dir, tmp_path, capsys):
    """--format conll is word<TAB>tag, the tags transformers gives; every input document appears in
    the output, one without entities as one null record (jsonl) or a -DOCSTART- with no words."""
    docs = [{"id": "note", "text": TEXT}, {"id": "blank", "text": " \n"}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    assert main(["--model", str(model_dir), "--input", str(tmp_path / "in.jsonl"), "--format", "conll"]) == 0
    blocks = capsys.readouterr().out.split("-DOCSTART-\tO\n")
    assert blocks[0] == "" and len(blocks) == 3 and blocks[2] == ""
    sentences = [[line.split("\t") for line in block.splitlines()] for block in blocks[1].split("\n\n") if block]
    assert [[w for w, _ in s] for s in sentences] == [words for words, _ in split_words(TEXT)]
    assert [[t for _, t in s] for s in sentences] == reference_tags(model_dir, TEXT)

    assert main(["--model", str(model_dir), "--input", str(tmp_path / "in.jsonl")]) == 0
    rows = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert rows[-1] == {"doc": "blank", "type": None, "text": None, "start": None, "end": None, "score": None}
    assert all(r["doc"] == "note" and r["type"] for r in rows[:-1]) and len(rows) > 1
    from bertlab.predict import format_entities
    all_o = [{"words": ["Fever", "."], "offsets": [(0, 5), (5, 6)], "tags": ["O", "I-Sign_symptom"],
              "scores": np.ones(2)}]
    assert format_entities(["d"], ["Fever."], [all_o]) == (
        '{"doc": "d", "type": null, "text": null, "start": null, "end": null, "score": null}\n')
    assert json.loads(format_entities(["d"], ["Fever."], [all_o], "lenient"))["text"] == "."


def test_knn_references_that_do_not_fit_the_model_are_one_line(model_dir, tmp_path, capsys):
    """A knn.npz of another model, or a refit on training data with labels the model lacks, is a
    ValueError naming the file or the data, and one line with status 2 from the CLI (no KeyError)."""
    from bertlab.knn import KNNClassifier
    (tmp_path / "note.txt").write_text(TEXT)
    best = saved_run(model_dir, tmp_path, "best/bertlab_train.json",
                     {"data": {"name": "ncbi_disease", "max_documents": 2}, "eval": {"knn_k": 3}})
    model, tokenizer = load_model(best)
    with pytest.raises(ValueError, match=r"ncbi_disease train .* 2 of its tags, \d+ words, are not among the model's 83 labels"):
        load_knn(model, tokenizer, best)
    assert main(["--model", str(best), "--input", str(tmp_path / "note.txt"), "--knn"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "B-Disease" in err and "KeyError" not in err
    KNNClassifier(k=1).fit(np.eye(3, dtype=np.float32), [0, 1, 2]).save(best / "knn.npz")
    with pytest.raises(ValueError, match=r"knn.npz: a KNN reference of 3-wide logits .* the model has 83 labels"):
        load_knn(model, tokenizer, best)
    assert evaluate_main(["--model", str(best), "--data", "maccrobat", "--knn"]) == 2
    assert "belongs to another model" in capsys.readouterr().err


def test_progress_bars_only_when_wanted(model_dir, tmp_path, capsys, monkeypatch):
    """tqdm bars for predict (documents) and evaluate (word logits) on a terminal; none under CI or
    when stderr is not a terminal."""
    from bertlab.predict import show_progress
    (tmp_path / "note.txt").write_text(TEXT)
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    monkeypatch.delenv("CI", raising=False)
    assert show_progress()
    monkeypatch.setenv("CI", "true")
    assert not show_progress()
    monkeypatch.setattr("bertlab.predict.show_progress", lambda: True)
    monkeypatch.setattr("bertlab.evaluate.show_progress", lambda: True)
    assert main(["--model", str(model_dir), "--input", str(tmp_path / "note.txt")]) == 0
    assert "predict: 100%" in capsys.readouterr().err
    assert evaluate_main(["--model", str(model_dir), "--data", "maccrobat", "--max-documents", "1"]) == 0
    assert "word logits" in capsys.readouterr().err
    from bertlab.knn import KNNClassifier
    rng = np.random.default_rng(0)
    X, y, Q = rng.normal(size=(300, 4)), rng.integers(0, 3, 300), rng.normal(size=(100, 4))
    quiet = KNNClassifier(k=5, chunk_size=10).fit(X, y).predict(Q)
    assert capsys.readouterr().err == ""
    for n_jobs in (1, 2):  # the bar counts chunks; the votes do not change
        shown = KNNClassifier(k=5, chunk_size=10, n_jobs=n_jobs, progress=True).fit(X, y).predict(Q)
        assert "knn" in capsys.readouterr().err and (shown == quiet).all()
    monkeypatch.setattr("bertlab.predict.show_progress", lambda: False)
    assert main(["--model", str(model_dir), "--input", str(tmp_path / "note.txt"), "--max-length", "128",
                 "--stride", "32"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_evaluate_reproduces_the_runs_own_test_predictions_in_its_precision(tmp_path, precision):
    """A run scores its test split in the precision it trained in (bf16 autocast for the studies);
    `bertlab evaluate` on its best/ folder uses that precision (from bertlab_train.json) and gives
    the same predictions, for argmax and for a KNN refitted from the run's config."""
    from _train_script import tiny_config

    from bertlab.config import load_config
    from bertlab.evaluate import evaluate_model
    from bertlab.predict import scoring_precision
    from bertlab.train import train
    cfg = tiny_config(tmp_path / "data", train={"precision": precision, "epochs": 1},
                      eval={"decode": ["argmax", "knn"], "knn_k": 3})
    run = tmp_path / "run"
    train(load_config(cfg), run, resume=False, log=lambda *a, **k: None)
    assert json.loads((run / "best" / "bertlab_train.json").read_text())["precision"] == precision
    assert scoring_precision(run / "best")[0] == precision
    assert scoring_precision(run / "best", "fp32") == ("fp32", "--precision")
    for decode, folder in (("argmax", "best"), ("knn", "best-knn")):
        (run / folder / "knn.npz").unlink(missing_ok=True)  # refit from the run's config, in its precision
        r = evaluate_model(run / folder, cfg["data"]["test_file"], knn=decode == "knn")
        assert r["precision"] == precision
        trained = [json.loads(l)["pred"] for l in (run / f"predictions_test_{decode}.jsonl").read_text().splitlines()]
        assert [p["pred"] for p in r["predictions"]] == trained


def test_decode_reproduces_each_decode_of_a_run_and_bio_tags_are_valid(tmp_path, capsys, monkeypatch):
    """`bertlab evaluate --decode D` on the best folder of decode D gives that run's own test
    predictions for every decode, the +bio and calibrated ones included (their knn.npz /
    calibration.json come from the folder); `bertlab predict --decode D` writes those decoders'
    tags, IOB2-valid for +bio; a decode the folder cannot serve is one line and status 2."""
    from _train_script import tiny_config

    from bertlab.checkpoint import best_folder
    from bertlab.datasets.tags import tag_problems
    from bertlab.config import load_config
    from bertlab.evaluate import evaluate_model
    from bertlab.train import train
    decodes = ["argmax", "argmax+bio", "knn+bio", "calibrated", "calibrated+bio"]
    cfg = tiny_config(tmp_path / "data", train={"epochs": 1}, eval={"decode": decodes, "knn_k": 3})
    run = tmp_path / "run"
    train(load_config(cfg), run, resume=False, log=lambda *a, **k: None)
    for decode in decodes:
        r = evaluate_model(best_folder(run, decode, decodes), cfg["data"]["test_file"], decode=decode)
        assert r["decode"] == decode
        trained = [json.loads(l)["pred"] for l in (run / f"predictions_test_{decode}.jsonl").read_text().splitlines()]
        assert [p["pred"] for p in r["predictions"]] == trained, decode
    monkeypatch.setattr("bertlab.predict.show_progress", lambda: False)
    (tmp_path / "note.txt").write_text(TEXT)
    for decode in ("calibrated", "calibrated+bio"):
        folder = best_folder(run, decode, decodes)
        assert main(["--model", str(folder), "--input", str(tmp_path / "note.txt"), "--decode", decode,
                     "--format", "conll"]) == 0
        tags = [line.split("\t")[1] for line in capsys.readouterr().out.splitlines()[1:] if line]
        assert tags and (decode == "calibrated" or not tag_problems(tags, "IOB2"))
    for argv, message in ((["--decode", "calibrated"], "calibration.json: missing"),
                          (["--decode", "viterbi"], "--decode viterbi needs a model with a CRF head"),
                          (["--decode", "argmax", "--knn"], "--knn is --decode knn")):
        assert main(["--model", str(run / "best"), "--input", str(tmp_path / "note.txt"), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("bertlab predict: ") and message in err and err.count("\n") == 1, err


def long_document(n_sentences: int, seed: int = 0) -> str:
    """A generated note: sentences of 1 to 40 words, every fifth of 60 to 150 words (several windows
    at max_length 32), lines of a few sentences, and a blank line now and then."""
    rng = np.random.default_rng(seed)
    vocab = ("the patient had fever , cough and 3 mg aspirin troponin was 2.3 ng / mL chest pain CT "
             "showed a mass in left lung biopsy").split()
    out = []
    for k in range(n_sentences):
        n = int(rng.integers(60, 150)) if k % 5 == 4 else int(rng.integers(1, 40))
        out.append(" ".join(rng.choice(vocab, n)).capitalize() + ".")
        out.append("\n\n" if rng.random() < 0.05 else "\n" if rng.random() < 0.3 else " ")
    return "".join(out)


def whole_document_tags(model, tokenizer, text, decode, knn=None, max_length=32, stride=8, batch_size=8):
    """The non-streaming path (bertlab predict before #41): the word logits of every sentence of the
    text at once (``word_logits``), decoded at once."""
    from bertlab.inference import decode_words, word_logits
    sents = split_words(text)
    logits = word_logits(model, tokenizer, [w for w, _ in sents], max_length, stride, batch_size)
    tags, probabilities = decode_words(decode, logits, model, knn)
    ids = [[model.labels.index(x) for x in t] for t in tags]
    return [{"words": w, "offsets": o, "tags": t, "scores": p[np.arange(len(t)), i]}
            for (w, o), t, p, i in zip(sents, tags, probabilities, ids)]


@pytest.mark.parametrize("decode", ["argmax+bio", "knn"])
def test_streamed_tagging_equals_the_whole_document_path(model_dir, decode):
    """#41 item 12: `bertlab predict` tags a long document batch by batch (tag_sentences) with the
    tags and scores, to the last bit, of the whole-document path: same batches, same decode."""
    from bertlab.knn import KNNClassifier
    from bertlab.predict import entity_lines, tag_sentences
    model, tokenizer = load_model(model_dir)
    text = long_document(120)
    rng = np.random.default_rng(1)
    knn = KNNClassifier(k=5).fit(rng.normal(size=(300, len(model.labels))).astype(np.float32),
                                 rng.integers(0, len(model.labels), 300)) if decode == "knn" else None
    expected = whole_document_tags(model, tokenizer, text, decode, knn)
    assert sum(len(s["words"]) > 30 for s in expected) >= 20, "long sentences take several windows"
    streamed = list(tag_sentences(model, tokenizer, text, decode, knn, max_length=32, stride=8, batch_size=8))
    assert [(s["words"], s["offsets"], s["tags"]) for s in streamed] == \
        [(s["words"], s["offsets"], s["tags"]) for s in expected]
    for s, e in zip(streamed, expected):
        assert s["scores"].dtype == e["scores"].dtype and np.array_equal(s["scores"], e["scores"])
    assert "".join(entity_lines("d", text, streamed)) == "".join(entity_lines("d", text, expected))


def test_streamed_tagging_encodes_a_batch_at_a_time(model_dir, monkeypatch):
    """#41 item 12: while tagging, the windows encoded at any time are those of one batch's sentences,
    never the document's, and each sentence comes out once, in order; the memory this bounds is
    measured by `bertlab bench --only predict`."""
    import bertlab.inference as inference
    from bertlab.predict import tag_sentences
    model, tokenizer = load_model(model_dir)
    text = long_document(40)
    real, asked = inference.iter_word_logits, []

    def watched(model, pad, lengths, windows_of, *args, **kwargs):
        def windows(ids):
            held = windows_of(ids)
            asked.append((len(ids), len(held)))
            return held
        yield from real(model, pad, lengths, windows, *args, **kwargs)
    monkeypatch.setattr(inference, "iter_word_logits", watched)
    tagged = list(tag_sentences(model, tokenizer, text, "argmax", max_length=32, stride=8, batch_size=4))
    assert [(s["words"], s["offsets"]) for s in tagged] == split_words(text)
    assert len(asked) > 20 and all(n <= 4 and held == n for n, held in asked)


def conll_to_brat(conll_file, folder):
    """The documents of a CoNLL file as brat files: one sentence a line, words joined by spaces, a
    T line per strict IOB2 mention; read back by ``read_brat``, they are the same sentences."""
    from bertlab.datasets import read_conll
    folder.mkdir(parents=True)
    for k, doc in enumerate(read_conll(conll_file).documents):
        text, ann = "", []
        for s in doc.sentences:
            starts = []
            for w in s.tokens:
                starts.append(len(text))
                text += w + " "
            for typ, a, b in strict_entities(s.tags):
                start, end = starts[a], starts[b - 1] + len(s.tokens[b - 1])
                ann.append(f"T{len(ann) + 1}\t{typ} {start} {end}\t{text[start:end]}\n")
            text = text[:-1] + "\n"
        (folder / f"doc{k:03d}.txt").write_text(text, encoding="utf-8")
        (folder / f"doc{k:03d}.ann").write_text("".join(ann), encoding="utf-8")
    return folder


def test_train_and_evaluate_on_brat_folders(tmp_path, capsys, monkeypatch):
    """#41 item 8: `[data] train_file` / `dev_file` / `test_file` take brat folders; the splits are
    those of the same documents as CoNLL files; a tiny run trains on them, and `bertlab evaluate
    --data DIR` re-scores its best model on the test folder with the run's own test predictions."""
    from _train_script import tiny_config

    from bertlab.config import ConfigError
    from bertlab.datasets.prepare import load_splits
    from bertlab.config import load_config
    from bertlab.evaluate import evaluate_model
    from bertlab.train import train
    conll = tiny_config(tmp_path / "conll", train={"epochs": 1})
    folders = {key: str(conll_to_brat(conll["data"][key], tmp_path / "brat" / key.split("_")[0]))
               for key in ("train_file", "dev_file", "test_file")}
    cfg = {**conll, "data": {**conll["data"], **folders}}
    own, reference = load_splits(load_config(cfg).data), load_splits(load_config(conll).data)
    assert own.labels == reference.labels and own.train.name == "train"
    for split in ("train", "dev", "test"):
        mine, theirs = getattr(own, split).sentences, getattr(reference, split).sentences
        assert [(s.tokens, s.tags) for s in mine] == [(s.tokens, s.tags) for s in theirs] and mine
    with pytest.raises(ConfigError, match=r"\[data\] scheme = 'BILOU': applies to CoNLL files, and train_file = "):
        load_config({**cfg, "data": {**cfg["data"], "scheme": "BILOU"}})
    run = tmp_path / "run"
    train(load_config(cfg), run, resume=False, log=lambda *a, **k: None)
    trained = [json.loads(l)["pred"] for l in (run / "predictions_test_argmax.jsonl").read_text().splitlines()]
    assert [p["pred"] for p in evaluate_model(run / "best", folders["test_file"])["predictions"]] == trained
    monkeypatch.setattr("bertlab.evaluate.show_progress", lambda: False)
    assert evaluate_main(["--model", str(run / "best"), "--data", folders["test_file"],
                          "--output", str(tmp_path / "eval.json")]) == 0
    assert f"on {folders['test_file']} (2 documents, 6 sentences)" in capsys.readouterr().out
    assert json.loads((tmp_path / "eval.json").read_text())["micro_f1"] == \
        json.loads((run / "metrics.json").read_text())["test"]["argmax"]["micro_f1"]
    for argv, message in ((["--scheme", "BILOU"], "--scheme applies to CoNLL files; "),
                          (["--split", "dev"], "--split applies to bundled corpora; ")):
        assert evaluate_main(["--model", str(run / "best"), "--data", folders["test_file"], *argv]) == 2
        assert capsys.readouterr().err.startswith(f"bertlab evaluate: {message}")
