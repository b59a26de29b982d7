"""Baselines: the word tokenizer's windows, the shared softmax/CRF head (BERT and BiLSTM), the
BiLSTM encoder's padding, and that the BiLSTM(-CRF) and feature CRF learn a toy corpus."""
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bertlab.baselines import BiLSTMTagger, FeatureCRFTagger, WordTokenizer
from bertlab.baselines import bilstm
from bertlab.baselines.features import FeatureIndex, short_shape, token_features, word_shape
from bertlab.models.crf import CRF
from bertlab.models.heads import TokenClassifier

LABELS = ["O", "B-Dis", "I-Dis", "B-Drug", "I-Drug"]


# ---- a small standalone BiLSTM loop, for the toy-corpus test below (runs use bertlab.train) ----------

def _pad(windows, pad_id: int = 0) -> dict:
    """Windows -> the ``collate`` batch dict (right padding, labels -100 on padding)."""
    T = max(1, max(len(w) for w in windows))  # at least one step, even for empty sentences
    batch = {"input_ids": torch.full((len(windows), T), pad_id), "attention_mask": torch.zeros(len(windows), T, dtype=torch.long),
             "labels": torch.full((len(windows), T), -100)}
    for b, w in enumerate(windows):
        n = len(w)
        batch["input_ids"][b, :n] = torch.tensor(w.input_ids)
        batch["attention_mask"][b, :n] = 1
        batch["labels"][b, :n] = torch.tensor(w.labels)
    return batch


def bilstm_fit(model: BiLSTMTagger, tokenizer: WordTokenizer, sentences_tokens: list[list[str]],
        sentences_tags: list[list[str]], epochs: int = 10, lr: float = 1e-3, batch_size: int = 32,
        clip: float = 5.0, seed: int = 0) -> list[float]:
    """Adam on the training sentences; returns the mean loss of each epoch.

    Loss: token-mean cross-entropy (softmax head) or token-mean CRF nll (CRF head).
    """
    torch.manual_seed(seed)
    rng = random.Random(seed)
    label_id = {l: i for i, l in enumerate(model.labels)}
    windows = [w for tokens, tags in zip(sentences_tokens, sentences_tags)
               for w in tokenizer.encode_words(tokens, [label_id[t] for t in tags])]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in range(epochs):
        model.train()
        rng.shuffle(windows)
        total, n = 0.0, 0
        for i in range(0, len(windows), batch_size):
            batch = _pad(windows[i:i + batch_size], tokenizer.pad_token_id)
            logits = model(batch["input_ids"], batch["attention_mask"])
            if model.head == "crf":
                loss = model.crf_loss(logits, batch["labels"])
            else:
                loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            total, n = total + loss.item(), n + 1
        history.append(total / max(n, 1))
    return history


@torch.no_grad()
def bilstm_predict(model: BiLSTMTagger, tokenizer: WordTokenizer, sentences_tokens: list[list[str]],
            batch_size: int = 128) -> list[list[str]]:
    """Tags (IOB2 strings) per sentence via ``model.decode`` on whole sentences (one window each)."""
    model.eval()
    out = []
    for i in range(0, len(sentences_tokens), batch_size):
        chunk = sentences_tokens[i:i + batch_size]
        windows = [tokenizer.encode_words(t, max_length=max(len(t), 1), stride=None)[0] for t in chunk]
        batch = _pad(windows, tokenizer.pad_token_id)
        logits = model(batch["input_ids"], batch["attention_mask"])
        paths = model.decode(logits, batch["attention_mask"].bool())
        out.extend([model.labels[j] for j in p] for p in paths)
    return out


def toy_corpus(n_sentences, seed):
    """Filler words, disease words (-itis / -oma, sometimes + "syndrome") and drug names."""
    rng = random.Random(seed)
    fillers = ["the", "patient", "had", "a", "history", "of", "and", "was", "given", "for", "with"]
    stems, drugs = ["gastr", "arthr", "derm", "mening", "hepat", "nephr"], ["aspirin", "heparin", "warfarin"]
    out = []
    for _ in range(n_sentences):
        tokens, tags = [], []
        for _ in range(rng.randint(4, 9)):
            r = rng.random()
            if r < 0.2:
                tokens.append(rng.choice(stems) + rng.choice(["itis", "oma"]))
                tags.append("B-Dis")
                if rng.random() < 0.5:
                    tokens.append("syndrome")
                    tags.append("I-Dis")
            elif r < 0.3:
                tokens.append(rng.choice(drugs))
                tags.append("B-Drug")
            else:
                tokens.append(rng.choice(fillers))
                tags.append("O")
        out.append((tokens, tags))
    return [t for t, _ in out], [g for _, g in out]


@pytest.fixture
def one_thread():
    """Tiny models train faster on one thread; two threads on a shared, busy machine spin for
    tens of seconds (measured: 3 s vs 30 s for the BiLSTM test). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def token_accuracy(gold, pred):
    pairs = [(a, b) for g, p in zip(gold, pred) for a, b in zip(g, p)]
    assert len(pairs) == sum(len(g) for g in gold)
    return sum(a == b for a, b in pairs) / len(pairs)


# -- WordTokenizer ---------------------------------------------------------------------------

def test_word_tokenizer_ids_and_normalisation(tmp_path):
    tok = WordTokenizer.build([["Breast", "cancer", "p53"], ["cancer", "risk", "p54"]], min_freq=1)
    assert tok.words[:3] == ["[PAD]", "[UNK]", "cancer"]  # most frequent first
    ids = tok.convert_tokens_to_ids(["BREAST", "p99", "unseen"])
    assert ids[0] == tok.ids["breast"] and ids[1] == tok.ids["p00"] and ids[2] == tok.unk_token_id
    w = tok.encode_words(["breast", "cancer"], labels=[1, 2])
    assert len(w) == 1 and w[0].labels == [1, 2] and w[0].word_ids == [0, 1] and w[0].owned == [True, True]
    tok.save(tmp_path)
    assert WordTokenizer.from_pretrained(tmp_path).words == tok.words


@pytest.mark.parametrize("n,max_length,stride", [(23, 8, 3), (10, 4, 0), (9, 9, 2), (30, 7, 6)])
def test_word_windows_own_every_word_exactly_once(n, max_length, stride):
    tok = WordTokenizer.build([[f"w{i}" for i in range(n)]])
    words = [f"w{i}" for i in range(n)]
    windows = tok.encode_words(words, labels=list(range(n)), max_length=max_length, stride=stride)
    owners = {}
    for k, w in enumerate(windows):
        assert len(w) <= max_length
        assert w.input_ids == tok.convert_tokens_to_ids(words[w.start:w.start + len(w)])
        for t, o in enumerate(w.owned):
            assert w.labels[t] == (w.word_ids[t] if o else -100)
            if o:
                assert w.word_ids[t] not in owners
                owners[w.word_ids[t]] = k
    assert sorted(owners) == list(range(n))
    # consecutive windows overlap by `stride` words
    for a, b in zip(windows, windows[1:]):
        assert a.start + len(a) - b.start == stride


# -- the shared head: softmax / CRF on TokenClassifier ------------------------------------

def tiny_bert(head):
    from bertlab.models.bert import BertModel
    from conftest import tiny_bert_config
    torch.manual_seed(0)
    return TokenClassifier(BertModel(tiny_bert_config(vocab_size=50)), LABELS, head=head)


def test_softmax_head_unchanged_and_decode_is_argmax():
    torch.manual_seed(0)
    model = tiny_bert("softmax")
    assert not hasattr(model, "crf")
    assert {k for k in model.state_dict() if not k.startswith("encoder.")} == {"classifier.weight", "classifier.bias"}
    logits = torch.randn(2, 6, 5)
    mask = torch.tensor([[0, 1, 1, 0, 1, 0], [0, 1, 0, 0, 0, 0]]).bool()
    out = model.decode(logits, mask)
    assert out == [logits[0, [1, 2, 4]].argmax(-1).tolist(), logits[1, [1]].argmax(-1).tolist()]
    with pytest.raises(ValueError, match="head='crf'"):
        model.crf_loss(logits, torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="head must be"):
        TokenClassifier(model.encoder, LABELS, head="crff")


def test_crf_head_runs_over_the_labelled_positions_only():
    """crf_loss / decode on scattered first-subword labels == the CRF on those positions gathered by hand."""
    model = tiny_bert("crf").double()
    with torch.no_grad():
        model.crf.transitions.normal_()
        model.crf.start_transitions.normal_()
    input_ids = torch.randint(1, 50, (2, 7))
    attention = torch.ones(2, 7, dtype=torch.long)
    attention[1, 5:] = 0
    labels = torch.tensor([[-100, 1, -100, 2, 0, 3, -100],       # [CLS] B ## I O B [SEP]
                           [-100, 0, 1, -100, -100, -100, -100]])
    logits = model(input_ids, attention).double()
    loss = model.crf_loss(logits, labels, reduction="none")
    for b, pos in enumerate([[1, 3, 4, 5], [1, 2]]):
        ref = model.crf.nll(logits[b:b + 1, pos], labels[b:b + 1, pos], reduction="none")
        torch.testing.assert_close(loss[b], ref[0])
        assert model.decode(logits, labels != -100)[b] == model.crf.decode(logits[b:b + 1, pos])[0]
    token_mean = model.crf_loss(logits, labels)
    torch.testing.assert_close(token_mean, loss.sum() / 6)
    token_mean.backward()
    assert model.crf.transitions.grad.abs().sum() > 0 and model.classifier.weight.grad.abs().sum() > 0


# -- BiLSTM ------------------------------------------------------------------------------

def test_bilstm_padding_does_not_change_logits():
    """Packing: a sentence's logits are the same alone and padded in a batch with a longer one."""
    torch.manual_seed(0)
    model = BiLSTMTagger(30, LABELS, embedding_dim=8, lstm_hidden_size=6, head="crf").eval()
    short = torch.tensor([[3, 4, 5]])
    batch = torch.tensor([[3, 4, 5, 0, 0], [6, 7, 8, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    alone = model(short, torch.ones_like(short))
    together = model(batch, mask)
    assert together.shape == (2, 5, 5)
    torch.testing.assert_close(together[0, :3], alone[0])
    # without packing the backward LSTM would read the padding first and differ
    unpacked = model(batch)
    assert not torch.allclose(unpacked[0, :3], alone[0])
    assert model.encoder.hidden_size == 12 and model.labels == LABELS


@pytest.mark.parametrize("head", ["softmax", "crf"])
def test_bilstm_learns_toy_corpus(head, one_thread):
    tokens, tags = toy_corpus(200, seed=1)
    tok = WordTokenizer.build(tokens)
    model = BiLSTMTagger(tok.vocab_size, LABELS, embedding_dim=16, lstm_hidden_size=16, dropout=0.1, head=head)
    history = bilstm_fit(model, tok, tokens, tags, epochs=6, lr=0.01, batch_size=16)
    assert history[-1] < history[0] / 3
    test_tokens, test_tags = toy_corpus(50, seed=2)
    pred = bilstm_predict(model, tok, test_tokens + [[]])
    assert pred[-1] == []
    assert token_accuracy(test_tags, pred[:-1]) > 0.95


def test_init_embeddings_from_bert():
    class FakeBertTokenizer:  # "cancer" -> [5], "breast" -> [6, 7]
        def subwords(self, words):
            return {"cancer": [5], "breast": [6, 7]}.get(words[0], []), None

    tok = WordTokenizer.build([["cancer", "breast", "zzz"]])
    model = BiLSTMTagger(tok.vocab_size, LABELS, embedding_dim=4)
    table = torch.randn(10, 4)
    n = bilstm.init_embeddings_from_bert(model.encoder, tok, FakeBertTokenizer(), table)
    assert n == 2
    E = model.encoder.word_embeddings.weight
    torch.testing.assert_close(E[tok.ids["cancer"]], table[5])
    torch.testing.assert_close(E[tok.ids["breast"]], table[6:8].mean(0))
    with pytest.raises(ValueError, match="embedding_dim=8"):
        bilstm.init_embeddings_from_bert(model.encoder, tok, FakeBertTokenizer(), torch.randn(10, 8))


# -- feature CRF -------------------------------------------------------------------------

def test_features():
    assert word_shape("Wnt-12") == "Xxx-dd" and short_shape("Wnt-12") == "Xx-d"
    f = token_features(["the", "APC", "gene"], 1)
    assert {"bias", "w=apc", "upper", "p1=a", "s3=apc", "-1:w=the", "+1:w=gene", "-1:sshape=x"} <= set(f)
    assert "BOS" in token_features(["a", "b"], 0) and "EOS" in token_features(["a", "b"], 1)
    index = FeatureIndex(min_count=2).fit([["a", "b"], ["a", "c"]])
    assert "w=a" in index.ids and "w=b" not in index.ids
    assert all(index.ids["bias"] in bag for bag in index.transform(["zz", "yy"]))


def test_feature_crf_learns_toy_corpus(one_thread):
    tokens, tags = toy_corpus(150, seed=3)
    tagger = FeatureCRFTagger(c2=0.1, max_iter=30).fit(tokens, tags)
    assert tagger.labels[0] == "O" and set(tagger.labels) >= {"B-Dis", "I-Dis", "B-Drug"}
    assert tagger.losses[-1] < tagger.losses[0] / 5
    test_tokens, test_tags = toy_corpus(50, seed=4)
    pred = tagger.predict(test_tokens)
    assert token_accuracy(test_tags, pred) > 0.97
    # an unseen disease word: its suffix features carry it
    assert tagger.predict([["the", "patient", "had", "pancreatitis", "syndrome"]])[0][3:] == ["B-Dis", "I-Dis"]


def test_feature_crf_adam_also_learns(one_thread):
    tokens, tags = toy_corpus(100, seed=5)
    tagger = FeatureCRFTagger(optimizer="adam", epochs=5, lr=0.1, c2=0.1).fit(tokens, tags)
    test_tokens, test_tags = toy_corpus(30, seed=6)
    assert token_accuracy(test_tags, tagger.predict(test_tokens)) > 0.9
