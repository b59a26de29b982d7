"""bertlab predict / evaluate against references: the tags come out as transformers' own
BertForTokenClassification would give them on the same saved folder, offsets index the input
text, KNN decoding equals the KNN classifier's vote, and the CLI reads text, JSONL and stdin."""
import io
import json

import numpy as np
import pytest
import torch

from conftest import TINY_STUDY, write_study

from bertlab.datasets import entity_types, label_list
from bertlab.metrics import strict_entities
from bertlab.predict import evaluate_main, load_knn, load_model, main, predict_text, split_words

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


def reference_entities(folder, text):
    """transformers on the same folder: first-subword logits per word, argmax, strict entities."""
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
        tags = [labels[int(logits[first[w]].argmax())] for w in range(len(words))]
        for typ, a, b in strict_entities(tags):
            out.append((typ, offsets[a][0], offsets[b - 1][1]))
    return out


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
    assert "bad.jsonl:1: expected a JSON object with a \"text\" field" in capsys.readouterr().err


def test_evaluate_prints_full_report(model_dir, capsys, tmp_path):
    assert evaluate_main(["--model", str(model_dir), "--data", "maccrobat", "--split", "test",
                          "--max-documents", "1", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    for piece in ("micro avg", "Tokens:", "Unweighted accuracy", "Entity confusion", "missed", "Token confusion"):
        assert piece in out
    r = json.loads((tmp_path / "r.json").read_text())
    from bertlab.metrics import entity_report
    gold = [p["tags"] for p in r["predictions"]]
    pred = [p["pred"] for p in r["predictions"]]
    assert r["entity_report"]["micro avg"]["f1-score"] == pytest.approx(
        entity_report(gold, pred, zero_division=0)["micro avg"]["f1-score"])
    assert evaluate_main(["--model", str(tmp_path), "--data", "maccrobat"]) == 2


def test_knn_refit_reproduces_training_time_knn(tmp_path):
    """evaluate --knn on a trained run's best/ refits the KNN from the run's config and gives the
    same test predictions as the KNN decode written at training time."""
    from bertlab.experiment import run_experiment
    from bertlab.predict import evaluate_model
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
    r = evaluate_model(best, "maccrobat", "test", knn=True, max_documents=2, max_length=48, stride=8)
    assert (best / "knn.npz").exists()  # cached for the next call
    assert [p["pred"] for p in r["predictions"]] == [p["pred"] for p in trained]
    z_saved, z_refit = np.load(io.BytesIO(saved)), np.load(best / "knn.npz")
    np.testing.assert_allclose(z_refit["X"], z_saved["X"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(z_refit["y"], z_saved["y"])
