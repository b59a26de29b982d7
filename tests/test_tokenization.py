"""Words -> subwords equal transformers' fast tokenizer on real corpus sentences; windows own
every word exactly once; word_predictions inverts the windows."""
import json
import random
import shutil

import numpy as np
import pytest
import transformers

from conftest import BUNDLED
from bertlab.tokenization import IGNORE_INDEX, Tokenizer, word_predictions


def maccrobat_sentences(limit_files=40):
    """MACCROBAT case reports: every non-empty line of the brat .txt files, split on whitespace."""
    files = sorted((BUNDLED / "maccrobat" / "brat").glob("*.txt"))[:limit_files]
    return [line.split() for f in files for line in f.read_text(encoding="utf-8").splitlines() if line.split()]


def ncbi_sentences(limit=400):
    """NCBI-disease train.tsv (token<TAB>tag, blank line between sentences): the first `limit`
    sentences plus every sentence with a non-ASCII token."""
    sents, cur = [], []
    for line in (BUNDLED / "ncbi_disease" / "train.tsv").read_text(encoding="utf-8").splitlines():
        if line.strip():
            cur.append(line.split("\t")[0])
        elif cur:
            sents.append(cur)
            cur = []
    sents += [cur] if cur else []
    return sents[:limit] + [s for s in sents[limit:] if not all(w.isascii() for w in s)]


@pytest.fixture(scope="module")
def tok(minilm_path):
    return Tokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="module")
def hf_tok(minilm_path):
    return transformers.AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="module")
def real_sentences():
    sents = maccrobat_sentences() + ncbi_sentences()
    assert len(sents) > 500 and sum(not all(w.isascii() for w in s) for s in sents) > 20
    return sents


def hf_subwords(hf_tok, sentences):
    enc = hf_tok(sentences, is_split_into_words=True, add_special_tokens=False)
    return [(enc["input_ids"][i], enc.word_ids(i)) for i in range(len(sentences))]


def test_attributes(tok, hf_tok):
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.vocab_size, tok.model_max_length,
            tok.do_lower_case) == (hf_tok.pad_token_id, hf_tok.cls_token_id, hf_tok.sep_token_id, len(hf_tok),
                                   hf_tok.model_max_length, True)


def test_subwords_match_transformers_on_real_sentences(tok, hf_tok, real_sentences):
    want = hf_subwords(hf_tok, real_sentences)
    differing = 0
    for words, (ids, wids) in zip(real_sentences, want):
        got_ids, got_wids = tok.subwords(words)
        if len(set(wids)) < len(words):  # transformers drops words the normaliser erases entirely
            differing += 1
            kept = [t for t, w in enumerate(got_wids) if not (got_ids[t] == tok.unk_token_id and w not in wids)]
            got_ids, got_wids = [got_ids[t] for t in kept], [got_wids[t] for t in kept]
        assert (got_ids, got_wids) == (ids, wids), words
    assert differing < len(real_sentences) / 100


def test_windows_match_transformers_with_special_tokens(tok, hf_tok, real_sentences):
    """A sentence that fits is one window equal to tokenizer(words, is_split_into_words=True)."""
    fits = [s for s in real_sentences if len(hf_tok(s, is_split_into_words=True)["input_ids"]) <= 512][:300]
    enc = hf_tok(fits, is_split_into_words=True)
    for i, words in enumerate(fits):
        (w,) = tok.encode_words(words)
        assert (w.input_ids, w.token_type_ids, w.word_ids) == (enc["input_ids"][i], enc["token_type_ids"][i],
                                                                enc.word_ids(i))
    assert [ws[0].input_ids for ws in tok.batch_encode(fits)] == enc["input_ids"]


def test_pair_inputs_match_transformers(tok, hf_tok, real_sentences):
    feature = "Family history of MI OR Family history of myocardial infarction".split()
    for words in real_sentences[:50]:
        want = hf_tok(feature, words, is_split_into_words=True)
        (w,) = tok.encode_words(words, labels=[1] * len(words), pair_words=feature)
        assert w.input_ids == want["input_ids"] and w.token_type_ids == want["token_type_ids"]
        n_pair = len(tok.subwords(feature)[0])
        assert w.word_ids[: n_pair + 2] == [None] * (n_pair + 2)  # the pair is never labelled
        assert sum(l != IGNORE_INDEX for l in w.labels) == len(words)


def test_tokenizer_from_vocab_txt(minilm_path, tmp_path, real_sentences):
    """vocab.txt + tokenizer_config.json builds the same pipeline as tokenizer.json, uncased and cased."""
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_path / name, tmp_path / name)
    from_vocab = Tokenizer.from_pretrained(tmp_path)
    from_json = Tokenizer.from_pretrained(minilm_path)
    sents = real_sentences[::5]
    assert [from_vocab.subwords(s) for s in sents] == [from_json.subwords(s) for s in sents]

    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg["do_lower_case"] = False
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    cased = Tokenizer.from_pretrained(tmp_path)
    hf_cased = transformers.AutoTokenizer.from_pretrained(tmp_path)  # builds from vocab.txt too
    assert not cased.do_lower_case
    for words, (ids, wids) in zip(sents, hf_subwords(hf_cased, sents)):
        if len(set(wids)) == len(words):
            assert cased.subwords(words) == (ids, wids), words
    assert cased.subwords(["Crohn"]) != from_vocab.subwords(["Crohn"])


def test_save_loads_in_transformers(tok, tmp_path, real_sentences):
    tok.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    again = Tokenizer.from_pretrained(tmp_path)
    sents = real_sentences[:100]
    assert [s[0] for s in hf_subwords(hf, sents)] == [tok.subwords(s)[0] for s in sents]
    assert [again.subwords(s) for s in sents] == [tok.subwords(s) for s in sents]
    assert hf.model_max_length == 512 and again.do_lower_case


def test_erased_word_becomes_unk(tok):
    words = ["fever", "\u200b", "and", "\u00ad", "cough"]
    ids, wids = tok.subwords(words)
    assert wids == [0, 1, 2, 3, 4] and ids[1] == ids[3] == tok.unk_token_id
    (w,) = tok.encode_words(words, labels=[1, 2, 3, 4, 5])
    assert [l for l in w.labels if l != IGNORE_INDEX] == [1, 2, 3, 4, 5]


# ---- sliding windows ------------------------------------------------------------------------

def test_worked_example_in_module_docstring(tok):
    ws = tok.encode_words(["hepatic", "steatosis", "was", "seen"], labels=[1, 2, 0, 0], max_length=6, stride=2)
    assert [" ".join(tok.convert_ids_to_tokens(w.input_ids)) for w in ws] == [
        "[CLS] he ##pati ##c [SEP]", "[CLS] ste ##ato ##sis was [SEP]", "[CLS] was seen [SEP]"]
    assert [w.labels for w in ws] == [[-100, 1, -100, -100, -100], [-100, 2, -100, -100, 0, -100],
                                      [-100, -100, 0, -100]]


def check_windows(windows, words, labels, tok, max_length, stride):
    """Every invariant of encode_words' windows, against the unwindowed subwords."""
    ids, wids = tok.subwords(words)
    owners = [0] * len(words)
    for w in windows:
        assert len(w) <= max_length and w.n_words == len(words)
        assert w.input_ids[0] == tok.cls_token_id and w.input_ids[-1] == tok.sep_token_id
        body = slice(1, len(w) - 1)
        assert w.input_ids[body] == ids[w.start: w.start + len(w) - 2]  # a contiguous run of subwords
        assert w.word_ids[body] == wids[w.start: w.start + len(w) - 2]
        for t, (o, lab, wid) in enumerate(zip(w.owned, w.labels, w.word_ids)):
            if o:
                owners[wid] += 1
                assert w.word_ids[t - 1] != wid  # the word's first subword in the sentence
                assert lab == labels[wid]
            else:
                assert lab == IGNORE_INDEX
    assert owners == [1] * len(words)  # each word owned by exactly one window
    for a, b in zip(windows, windows[1:]):  # consecutive windows overlap by about `stride`
        overlap = a.start + len(a) - 2 - b.start
        assert b.start > a.start and 0 <= overlap <= stride


def test_windows_property_random(tok):
    rng = random.Random(0)
    vocab = ["fever", "the", "hepatosplenomegaly", "of", "pneumonoultramicroscopic", "IL-2", "μg", "x", ".",
             "cholangiocarcinoma", "(", "left-sided", "3.5"]
    for case in range(60):
        words = [rng.choice(vocab) for _ in range(rng.randint(1, 120))]
        labels = [rng.randint(0, 4) for _ in words]
        max_length = rng.randint(12, 64)
        stride = rng.randint(0, max_length - 3)
        windows = tok.encode_words(words, labels, max_length=max_length, stride=stride)
        check_windows(windows, words, labels, tok, max_length, stride)
        n_sub = len(tok.subwords(words)[0])
        assert (len(windows) == 1) == (n_sub <= max_length - 2)
        # word_predictions reads each word at its first subword in its owning window: give every
        # position the logits (word id, offset within the word) and expect (w, 0) for word w
        per_window = []
        for w in windows:
            rows = [[-1.0, -1.0] if wid is None else [wid, t - w.word_ids.index(wid)]
                    for t, wid in enumerate(w.word_ids)]
            per_window.append(np.array(rows + [[9.0, 9.0]] * 3, dtype=np.float32))  # + batch padding
        pred = word_predictions(windows, per_window)
        assert pred.shape == (len(words), 2) and pred.dtype == np.float32
        first = np.array([[i, 0] for i in range(len(words))], dtype=np.float32)
        # a word cut at a window's start has its first subword elsewhere: never read there
        assert np.array_equal(pred, first)


def test_long_real_sentence_windows_and_single_window_equivalence(tok, real_sentences):
    import torch
    from bertlab.checkpoint import build_model
    longest = max(real_sentences, key=len)
    labels = [i % 5 for i in range(len(longest))]
    windows = tok.encode_words(longest, labels, max_length=32, stride=8)
    assert len(windows) > 3
    check_windows(windows, longest, labels, tok, 32, 8)

    torch.manual_seed(0)
    model = build_model("tinybert", ["O", "B-X", "I-X"], num_hidden_layers=1, hidden_size=24,
                        num_attention_heads=2, intermediate_size=48).eval()
    words = longest[:20]
    (single,) = tok.encode_words(words)
    with torch.no_grad():
        logits = model(torch.tensor([single.input_ids]))[0]
    pred = word_predictions([single], [logits])
    first = [t for t, o in enumerate(single.owned) if o]
    assert len(first) == len(words) and np.allclose(pred, logits[first].numpy())
    # and the windows of a sentence that fits are that single window
    assert tok.encode_words(words, max_length=512, stride=128)[0].input_ids == single.input_ids


def test_truncation_and_bad_arguments(tok):
    words = ["fever"] * 50
    (w,) = tok.encode_words(words, max_length=12, stride=None)
    assert len(w) == 12
    pred = word_predictions([w], [np.zeros((12, 3))])
    assert not np.isnan(pred[:10]).any() and np.isnan(pred[10:]).all()
    with pytest.raises(ValueError, match="stride=10 must be >= 0 and < 10"):
        tok.encode_words(words, max_length=12, stride=10)
    with pytest.raises(ValueError, match="50 words but 3 labels"):
        tok.encode_words(words, labels=[0, 1, 2])
    with pytest.raises(ValueError, match="no room"):
        tok.encode_words(words, max_length=5, pair_words=["a", "b", "c"])
    with pytest.raises(FileNotFoundError, match="no tokenizer.json or vocab.txt"):
        Tokenizer.from_pretrained(BUNDLED)
