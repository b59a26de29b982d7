"""Our BERT / DistilBERT token classifiers are the same function as transformers'.

Each case: transformers builds a tiny random model from a config (all parameters perturbed so
biases and LayerNorms are not at their trivial init), saves it, bertlab loads the folder, and
logits on random padded batches with ragged masks agree to 1e-5; so do gradients (dropout off).
The real all-MiniLM-L6-v2 checkpoint is checked the same way, once per session.
"""
import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from bertlab.checkpoint import build_model, load_pretrained, save_pretrained
from bertlab.models import BertConfig, BertModel, DistilBertConfig, DistilBertModel, TokenClassifier
from bertlab.models.distilbert import sinusoidal_table

LABELS = ["O", "B-Disease", "I-Disease", "B-Drug", "I-Drug"]
TOL = 1e-5

# name -> (transformers config class, config fields): all tiny, so each case takes milliseconds
CASES = {
    "bert-2l": (transformers.BertConfig, dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=2, intermediate_size=64,
                                              max_position_embeddings=128)),
    "bert-3l": (transformers.BertConfig, dict(vocab_size=500, hidden_size=48, num_hidden_layers=3,
                                              num_attention_heads=4, intermediate_size=96,
                                              max_position_embeddings=96, layer_norm_eps=1e-7,
                                              classifier_dropout=0.3)),
    "bert-cased": (transformers.BertConfig, dict(vocab_size=28996, hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=4, intermediate_size=64,
                                                 max_position_embeddings=128)),
    # TinyBERT's shape (4 layers, 12 heads, FFN = 3.85 x hidden) scaled down to hidden 36
    "tinybert-small": (transformers.BertConfig, dict(vocab_size=30522, hidden_size=36, num_hidden_layers=4,
                                                     num_attention_heads=12, intermediate_size=138,
                                                     max_position_embeddings=64)),
    "distilbert": (transformers.DistilBertConfig, dict(vocab_size=30522, dim=32, n_layers=2, n_heads=2,
                                                       hidden_dim=64, max_position_embeddings=128)),
    "distilbert-sinusoidal": (transformers.DistilBertConfig, dict(vocab_size=1000, dim=32, n_layers=3,
                                                                  n_heads=4, hidden_dim=80,
                                                                  max_position_embeddings=64,
                                                                  sinusoidal_pos_embds=True)),
}


def hf_model(case: str, seed: int = 0):
    """A transformers *ForTokenClassification with every parameter perturbed, in eval mode."""
    config_cls, fields = CASES[case]
    torch.manual_seed(seed)
    cfg = config_cls(**fields, id2label=dict(enumerate(LABELS)), label2id={l: i for i, l in enumerate(LABELS)})
    cfg._attn_implementation = "eager"  # the plain softmax(QK^T/sqrt(d) + mask) V reference
    model = transformers.AutoModelForTokenClassification.from_config(cfg, attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "position_embeddings" in name and fields.get("sinusoidal_pos_embds"):
                continue  # keep the fixed table: it is part of what is tested
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def random_batch(vocab_size: int, seed: int, with_types: bool = True, max_len: int = 40):
    """(input_ids, attention_mask, token_type_ids) [B, T]: ragged lengths, one row full, one length 1."""
    g = torch.Generator().manual_seed(seed)
    B = int(torch.randint(2, 5, (1,), generator=g))
    T = int(torch.randint(8, max_len, (1,), generator=g))
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0], lengths[-1] = T, 1
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    ids = torch.randint(1, vocab_size, (B, T), generator=g) * mask  # 0 = [PAD] at padding
    types = torch.randint(0, 2, (B, T), generator=g) * mask if with_types else None
    return ids, mask, types


def hf_logits(model, ids, mask, types):
    kw = {} if types is None or model.config.model_type == "distilbert" else {"token_type_ids": types}
    return model(input_ids=ids, attention_mask=mask, **kw).logits


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """case -> (transformers model, its saved folder), built once for the module."""
    out = {}
    for case in CASES:
        model = hf_model(case, seed=len(out))
        d = tmp_path_factory.mktemp(case)
        model.save_pretrained(d)
        out[case] = (model, d)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(saved, case):
    ref, path = saved[case]
    ours, _ = load_pretrained(path)
    assert not ours.training and ours.labels == LABELS
    vocab = ref.config.vocab_size
    for seed in range(4):
        ids, mask, types = random_batch(vocab, seed, with_types=(seed % 2 == 0))
        with torch.no_grad():
            want = hf_logits(ref, ids, mask, types)
            got = ours(ids, mask, types)
        assert got.shape == want.shape == (*ids.shape, len(LABELS))
        err = (got - want).abs().max().item()
        assert err <= TOL, f"{case} seed {seed}: max |logits - transformers| = {err:.2e}"
    # no mask at all means attend everywhere, as in transformers
    with torch.no_grad():
        assert (ours(ids) - ref(input_ids=ids).logits).abs().max().item() <= TOL


@pytest.mark.parametrize("case", ["bert-2l", "tinybert-small", "distilbert", "distilbert-sinusoidal"])
def test_gradients_match_transformers(saved, case):
    ref, path = saved[case]
    ours, _ = load_pretrained(path)
    prefix = ref.base_model_prefix + "."
    ref_params = dict(ref.named_parameters())
    for seed in (11, 12):
        ids, mask, types = random_batch(ref.config.vocab_size, seed)
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(*ids.shape, len(LABELS), generator=g)  # a generic scalar of the logits
        ref.zero_grad(), ours.zero_grad()
        (hf_logits(ref, ids, mask, types) * w * mask[..., None]).sum().backward()
        (ours(ids, mask, types) * w * mask[..., None]).sum().backward()
        # relative to each parameter's largest gradient, floored at 1e-3 of the model's largest:
        # the key bias's true gradient is exactly 0 (softmax ignores a per-row constant), so both
        # sides hold rounding noise there that no relative measure can compare
        top = max(p.grad.abs().max().item() for p in ref.parameters() if p.grad is not None)
        n = 0
        for name, p in ours.named_parameters():
            if not p.requires_grad:  # the fixed sinusoidal table
                continue
            hf_name = prefix + name[len("encoder."):] if name.startswith("encoder.") else name
            want = ref_params[hf_name].grad
            scale = max(want.abs().max().item(), 1e-3 * top)
            err = (p.grad - want).abs().max().item() / scale
            assert err <= TOL, f"{case}: grad of {name} differs by {err:.2e} (relative to max |grad|)"
            n += 1
        assert n == len([p for p in ours.parameters() if p.requires_grad]) > 10


def test_gradients_wrt_input_embeddings(saved):
    """d loss / d (word embedding rows actually used): the input-side gradient, row by row."""
    ref, path = saved["bert-3l"]
    ours, _ = load_pretrained(path)
    ids, mask, types = random_batch(ref.config.vocab_size, 5)
    for m, logits in ((ref, lambda: hf_logits(ref, ids, mask, types)), (ours, lambda: ours(ids, mask, types))):
        m.zero_grad()
        logits().logsumexp(-1).mul(mask).sum().backward()
    used = ids.unique()
    want = ref.bert.embeddings.word_embeddings.weight.grad[used]
    got = ours.encoder.embeddings.word_embeddings.weight.grad[used]
    assert want.abs().max() > 0
    assert ((got - want).abs().max() / want.abs().max()).item() <= TOL


def test_legacy_names_prefixes_and_dropped_heads(saved, tmp_path, caplog):
    """gamma/beta names, a persisted position_ids buffer, pooler/MLM/NSP heads, and no prefix at all."""
    ref, path = saved["bert-2l"]
    state = load_file(str(path / "model.safetensors"))
    legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
              for k, v in state.items()}
    H, V = ref.config.hidden_size, ref.config.vocab_size
    legacy.update({
        "bert.embeddings.position_ids": torch.arange(128)[None],
        "bert.pooler.dense.weight": torch.randn(H, H), "bert.pooler.dense.bias": torch.randn(H),
        "cls.predictions.bias": torch.randn(V), "cls.predictions.transform.dense.weight": torch.randn(H, H),
        "cls.predictions.transform.LayerNorm.gamma": torch.randn(H),
        "cls.seq_relationship.weight": torch.randn(2, H), "cls.seq_relationship.bias": torch.randn(2),
        "fit_denses.0.weight": torch.randn(768, H), "fit_denses.0.bias": torch.randn(768),  # TinyBERT
    })
    assert sum("gamma" in k for k in legacy) == 2 * 2 + 2  # 2 per layer, embeddings, MLM transform
    cfg = json.loads((path / "config.json").read_text())
    for variant, tensors in (("prefixed", legacy),
                             ("bare", {k.removeprefix("bert."): v for k, v in legacy.items()})):
        d = tmp_path / variant
        d.mkdir()
        save_file(tensors, str(d / "model.safetensors"))
        (d / "config.json").write_text(json.dumps(cfg))
        with caplog.at_level("DEBUG", logger="bertlab.checkpoint"):
            ours, tok = load_pretrained(d)
        assert tok is None
        for dropped in ("cls.seq_relationship.weight", "pooler.dense.bias", "fit_denses.0.weight",
                        "embeddings.position_ids"):
            assert dropped in caplog.text
        ids, mask, types = random_batch(V, 3)
        with torch.no_grad():
            err = (ours(ids, mask, types) - hf_logits(ref, ids, mask, types)).abs().max().item()
        assert err <= TOL, variant


def test_sinusoidal_table_matches_transformers():
    from transformers.models.distilbert.modeling_distilbert import _create_sinusoidal_embeddings
    for n, dim in ((64, 32), (512, 768), (7, 10)):
        want = _create_sinusoidal_embeddings(n, dim, torch.empty(n, dim))
        assert (sinusoidal_table(n, dim) - want).abs().max().item() <= 1e-6
    enc = DistilBertModel(DistilBertConfig(dim=16, n_heads=2, n_layers=1, hidden_dim=32,
                                           max_position_embeddings=20, sinusoidal_pos_embds=True))
    assert not enc.embeddings.position_embeddings.weight.requires_grad
    assert torch.equal(enc.embeddings.position_embeddings.weight, sinusoidal_table(20, 16))


def test_random_init_models_match_transformers_after_export(tmp_path):
    """build_model's random models load into transformers through save_pretrained with equal logits."""
    for arch, over in (("tinybert", dict(num_hidden_layers=1, vocab_size=300)),
                       ("distilbert", dict(n_layers=1, dim=48, n_heads=4, hidden_dim=96, vocab_size=300))):
        model = build_model(arch, LABELS, **over).eval()
        assert isinstance(model, TokenClassifier) and model.labels == LABELS
        ids, mask, types = random_batch(300, 7)
        out = save_pretrained(model, None, tmp_path / arch)
        ref = transformers.AutoModelForTokenClassification.from_pretrained(out, attn_implementation="eager").eval()
        with torch.no_grad():
            assert (model(ids, mask, types) - hf_logits(ref, ids, mask, types)).abs().max().item() <= TOL


def test_encoder_interface_and_head_dropout():
    bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, hidden_dropout_prob=0.15))
    distil = DistilBertModel(DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32,
                                              dropout=0.25))
    ids = torch.randint(0, 50, (2, 6))
    for enc, p in ((bert, 0.15), (distil, 0.25)):
        clf = TokenClassifier(enc, LABELS)
        assert enc(ids, torch.ones_like(ids)).shape == (2, 6, 16) and enc.hidden_size == 16
        assert clf(ids).shape == (2, 6, len(LABELS)) and clf.dropout.p == p
    # DistilBERT ignores token types (it has none)
    distil.eval()
    assert torch.equal(distil(ids, None, torch.ones_like(ids)), distil(ids))
    assert distil.config.hidden_size == 16 and distil.config.num_hidden_layers == 1


# ---- the real all-MiniLM-L6-v2 checkpoint --------------------------------------------------

@pytest.fixture(scope="module")
def minilm(minilm_path):
    ours, tok = load_pretrained(minilm_path, labels=LABELS)
    ref = transformers.AutoModel.from_pretrained(minilm_path, attn_implementation="eager").eval()
    return ours, tok, ref


def test_minilm_hidden_states_match_transformers(minilm):
    ours, tok, ref = minilm
    assert ours.config.num_hidden_layers == 6 and ours.config.hidden_size == 384
    sentences = ["The patient was admitted with acute pancreatitis and hyperglycemia .".split(),
                 "No evidence of metastatic disease ; CA 19-9 was 37 U/mL .".split(),
                 "Fever".split()]
    encs = [tok.encode_words(s)[0] for s in sentences]
    T = max(len(e) for e in encs)
    ids = torch.tensor([e.input_ids + [0] * (T - len(e)) for e in encs])
    mask = torch.tensor([[1] * len(e) + [0] * (T - len(e)) for e in encs])
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours.encoder(ids, mask)
    assert (got - want).abs().max().item() <= TOL
    ids, mask, types = random_batch(30522, 100, max_len=32)  # and random ids with token types
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        assert (ours.encoder(ids, mask, types) - want).abs().max().item() <= TOL


@pytest.mark.parametrize("grads", [False, True], ids=["inference", "gradients"])
def test_minilm_bf16_autocast_is_as_close_to_fp32_as_transformers(minilm, grads):
    """The bf16 tolerance, stated: under CPU bf16 autocast, our error against our float32 result
    (hidden states; or the gradients of a random scalar of them, dropout off) is at most 2x the error
    of transformers under the same autocast against float32, and under 5% of the result's scale
    (25% for gradients).
    Our inference fusions round the residual sum to bf16 once (transformers keeps it in float32)."""
    ours, _, ref = minilm
    ids, mask, types = random_batch(30522, 200, max_len=48)
    w = torch.randn(*ids.shape, 384, generator=torch.Generator().manual_seed(3))

    def run(model, call, bf16):
        model.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(grads), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            h = call().float()
        if not grads:
            return {"hidden": h.detach()}
        (h * w * mask[..., None]).sum().backward()
        return {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}

    ours_call = lambda: ours.encoder(ids, mask, types)  # noqa: E731
    ref_call = lambda: ref(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state  # noqa: E731
    fp32 = run(ours.encoder, ours_call, False)
    # relative to each result's largest value, floored at 1e-3 of the largest over all (the key
    # bias's true gradient is 0: both sides hold rounding noise there)
    top = max(b.abs().max().item() for b in fp32.values())
    errs = {}
    for name, model, call in (("ours", ours.encoder, ours_call), ("transformers", ref, ref_call)):
        got = run(model, call, True)
        assert got.keys() == fp32.keys()
        errs[name] = max((got[k] - b).abs().max().item() / max(b.abs().max().item(), 1e-3 * top)
                         for k, b in fp32.items())
    cap = 0.25 if grads else 0.05  # a small parameter's bf16 gradient is ~10% off for both (measured)
    assert errs["ours"] <= max(2 * errs["transformers"], 1e-3) and errs["ours"] < cap, errs


def test_minilm_round_trip_through_transformers(minilm, tmp_path):
    ours, tok, _ = minilm
    out = save_pretrained(ours, tok, tmp_path / "export")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["BertForTokenClassification"] and cfg["id2label"]["1"] == "B-Disease"
    ref = transformers.AutoModelForTokenClassification.from_pretrained(out, attn_implementation="eager").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    words = "Hepatic steatosis ( 12 mm ) and café-au-lait spots were seen .".split()
    win = tok.encode_words(words)[0]
    assert hf_tok(words, is_split_into_words=True)["input_ids"] == win.input_ids
    ids = torch.tensor([win.input_ids])
    with torch.no_grad():
        assert (ours(ids) - ref(input_ids=ids).logits).abs().max().item() <= TOL
        again, tok2 = load_pretrained(out)
        assert again.labels == LABELS and torch.equal(again(ids), ours(ids))
    assert tok2.encode_words(words)[0].input_ids == win.input_ids
