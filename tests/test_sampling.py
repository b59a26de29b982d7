"""bertlab.batching (collate, ATL length bucketing), bertlab.losses.btl (BTL targets by brute force,
fused == naive BTL) and bertlab.sampling (sentence resampling)."""
import dataclasses
import random
from collections.abc import Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bertlab.batching import CUDA_PAD_MULTIPLE, collate, length_bucketed_batches, pad_multiple
from bertlab.losses import (BTL_MODES, LossConfig, binary_token_label_batches, btl_columns, btl_fused_loss,
                            btl_naive_loss, btl_targets, build_loss, entity_types)
from bertlab.models import BertModel, TokenClassifier
from bertlab.sampling import RESAMPLING_METHODS, entity_type_rarity, resampling_scores, sentence_repeats
from conftest import tiny_bert_config

# types A, B (IOB2) and C, which has only B- (to check a 2-column "binary" copy)
# ---- test-only helpers: a token-budget batcher and padding statistics, which the tests below
# compare length bucketing against (nothing in bertlab uses them) --------------------------------

def token_budget_batches(lengths: Sequence[int], max_tokens: int, shuffle: bool = True, seed: int = 0,
                         bucket_size: int = 10_000) -> list[list[int]]:
    """Batches whose padded size ``len(batch) * max length in batch`` stays <= ``max_tokens``.

    Same bucketing as ``bertlab.batching.length_bucketed_batches`` (shuffle, sort inside buckets of ``bucket_size``
    items, shuffle batches), but the batch size varies: many short rows or few long ones. A row
    longer than max_tokens gets a batch of its own.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    rng = np.random.default_rng(seed)
    n = len(lengths)
    order = rng.permutation(n) if shuffle else np.arange(n)
    lengths_arr = np.asarray(lengths)
    batches = []
    for start in range(0, n, bucket_size):
        chunk = order[start:start + bucket_size]
        if shuffle:
            chunk = chunk[np.argsort(lengths_arr[chunk], kind="stable")]
        current, longest = [], 0
        for i in chunk.tolist():
            new_longest = max(longest, int(lengths_arr[i]))
            if current and (len(current) + 1) * new_longest > max_tokens:
                batches.append(current)
                current, new_longest = [], int(lengths_arr[i])
            current.append(i)
            longest = new_longest
        if current:
            batches.append(current)
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def padding_stats(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> dict:
    """How many token slots dynamic padding wastes for these batches.

    Each batch is padded to its longest row, so it costs ``len(batch) * max(lengths)`` slots.
    Returns ``{"real_tokens", "padded_tokens" (all slots), "padding_tokens" (wasted slots),
    "padding_fraction" (padding_tokens / padded_tokens, 0..1), "num_batches"}``.
    """
    real = padded = 0
    for batch in batches:
        row_lengths = [int(lengths[i]) for i in batch]
        real += sum(row_lengths)
        padded += len(row_lengths) * max(row_lengths, default=0)
    return {"real_tokens": real, "padded_tokens": padded, "padding_tokens": padded - real,
            "padding_fraction": (padded - real) / padded if padded else 0.0, "num_batches": len(batches)}


LABELS = ["O", "B-A", "I-A", "B-B", "I-B", "B-C"]
COUNTS = torch.tensor([300, 20, 25, 8, 6, 3])
LOSS_CONFIGS = [LossConfig("ce"), LossConfig("weighted_ce", weight_scheme="inverse"),
                LossConfig("focal", gamma=2.0, alpha="weights", normalize="mean"),
                # the class-imbalance losses (#40): per-class offsets, margins and weights looked up by column
                LossConfig("logit_adjusted", tau=0.7, label_smoothing=0.1), LossConfig("balanced_softmax"),
                LossConfig("ldam", scale=2.0, drw_epoch=0), LossConfig("dice", alpha=0.5, gamma=0.5),
                LossConfig("ce", label_smoothing=0.2),
                LossConfig("weighted_ce", weight_scheme="inverse", label_smoothing=0.1)]


@dataclasses.dataclass
class FakeWindow:  # the attributes of bertlab.tokenization.Window that collate reads
    input_ids: list
    labels: list | None = None
    token_type_ids: list | None = None


# --- collate -----------------------------------------------------------------------------------

def test_collate_pads_to_longest_row_from_objects_and_dicts():
    items = [FakeWindow([101, 7, 8, 102], [-100, 1, 2, -100], [0, 0, 1, 1]),
             {"input_ids": [101, 9, 102], "labels": [-100, 0, -100]},
             FakeWindow([101, 102])]
    batch = collate(items, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[101, 7, 8, 102], [101, 9, 102, 0], [101, 102, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 1, 2, -100], [-100, 0, -100, -100], [-100] * 4]
    assert all(t.dtype == torch.long for t in batch.values())
    with pytest.raises(ValueError, match="item 0 has 2 input_ids but 1 labels"):
        collate([{"input_ids": [1, 2], "labels": [0]}])


@pytest.mark.parametrize("seed", range(5))
def test_collate_pad_to_multiple_rounds_the_width_up_and_keeps_every_row(seed):
    rng = random.Random(seed)
    items = [FakeWindow([rng.randint(1, 99) for _ in range(n)], [rng.randint(-1, 4) for _ in range(n)])
             for n in (rng.randint(1, 40) for _ in range(rng.randint(1, 6)))]
    plain = collate(items, pad_token_id=5)
    for multiple in (1, 3, 8, 32):
        batch = collate(items, pad_token_id=5, pad_to_multiple_of=multiple)
        width, longest = batch["input_ids"].shape[1], plain["input_ids"].shape[1]
        assert width % multiple == 0 and longest <= width < longest + multiple
        for key, fill in (("input_ids", 5), ("attention_mask", 0), ("token_type_ids", 0), ("labels", -100)):
            assert torch.equal(batch[key][:, :longest], plain[key])
            assert (batch[key][:, longest:] == fill).all()
    with pytest.raises(ValueError, match="pad_to_multiple_of must be >= 1"):
        collate(items, pad_to_multiple_of=0)


def test_pad_multiple_is_the_setting_or_the_devices_choice():
    assert pad_multiple("cpu") == 1 and pad_multiple(torch.device("cpu"), 0) == 1
    assert pad_multiple("cuda") == pad_multiple(torch.device("cuda", 1)) == CUDA_PAD_MULTIPLE == 8
    assert pad_multiple("cpu", 16) == pad_multiple("cuda", 16) == 16
    with pytest.raises(ValueError, match="pad_to_multiple_of must be >= 0"):
        pad_multiple("cpu", -1)


# --- ATL batches -------------------------------------------------------------------------------

def random_lengths(n, seed=0):
    rng = random.Random(seed)
    return [rng.randint(3, 200) for _ in range(n)]


@pytest.mark.parametrize("n,batch_size,drop_last", [(1000, 16, False), (1003, 16, False), (1003, 16, True),
                                                    (5, 8, False), (0, 4, False)])
def test_length_bucketed_batches_cover_every_item_once(n, batch_size, drop_last):
    lengths = random_lengths(n)
    batches = length_bucketed_batches(lengths, batch_size, seed=3, bucket_size_multiplier=10, drop_last=drop_last)
    flat = [i for b in batches for i in b]
    expected = n - (n % batch_size if drop_last else 0)
    assert len(flat) == len(set(flat)) == expected
    assert sum(len(b) < batch_size for b in batches) <= (0 if drop_last else 1)


def test_length_bucketed_batches_deterministic_and_plain_order():
    lengths = random_lengths(500)
    a = length_bucketed_batches(lengths, 8, seed=1)
    assert a == length_bucketed_batches(lengths, 8, seed=1)
    assert a != length_bucketed_batches(lengths, 8, seed=2)
    assert length_bucketed_batches(lengths[:10], 4, shuffle=False) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_bucketing_wastes_less_padding_than_random_batches():
    lengths = random_lengths(2000, seed=5)
    bucketed = padding_stats(length_bucketed_batches(lengths, 16, seed=0), lengths)
    order = list(range(2000))
    random.Random(0).shuffle(order)
    unbucketed = padding_stats([order[i:i + 16] for i in range(0, 2000, 16)], lengths)
    assert bucketed["real_tokens"] == unbucketed["real_tokens"] == sum(lengths)
    assert bucketed["padding_fraction"] < 0.05 < 0.3 < unbucketed["padding_fraction"]


def test_padding_stats_brute_force():
    lengths = [3, 5, 2, 7]
    stats = padding_stats([[0, 1], [2, 3]], lengths)
    # batch 1 pads to 5: 2*5 slots, 8 real; batch 2 pads to 7: 14 slots, 9 real
    assert stats == {"real_tokens": 17, "padded_tokens": 24, "padding_tokens": 7,
                     "padding_fraction": 7 / 24, "num_batches": 2}


def test_token_budget_batches_respect_budget():
    lengths = random_lengths(800, seed=2)
    batches = token_budget_batches(lengths, max_tokens=1024, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(800))
    assert all(len(b) * max(lengths[i] for i in b) <= 1024 for b in batches)
    assert token_budget_batches(lengths, 1024, seed=0) == batches


# --- BTL targets -------------------------------------------------------------------------------

def test_entity_types_and_columns():
    assert entity_types(LABELS) == ["A", "B", "C"]
    assert btl_columns(0, LABELS) == [0, 1, 2]
    assert btl_columns("B", LABELS) == [0, 3, 4]
    assert btl_columns("C", LABELS) == [0, 5]  # only B-C exists
    with pytest.raises(ValueError, match="'D' is not in the label list"):
        btl_columns("D", LABELS)


def test_btl_targets_hand_made_example():
    """The 5-token batch of docs/btl.md: O, B-Drug, I-Drug, O, B-Dose."""
    labels_list = ["O", "B-Dose", "I-Dose", "B-Drug", "I-Drug"]
    y = torch.tensor([0, 3, 4, 0, 1])
    expected = {
        ("Drug", "other_to_o"): [0, 3, 4, 0, 0], ("Dose", "other_to_o"): [0, 0, 0, 0, 1],
        ("Drug", "ignore"): [0, 3, 4, 0, -100], ("Dose", "ignore"): [0, -100, -100, 0, 1],
        ("Drug", "binary"): [0, 1, 2, 0, 0], ("Dose", "binary"): [0, 0, 0, 0, 1],
    }
    for (c, mode), targets in expected.items():
        assert btl_targets(y, c, labels_list, mode).tolist() == targets, (c, mode)
    assert btl_columns("Drug", labels_list) == [0, 3, 4]


def brute_force_btl_targets(y, c, label_list, mode):
    """One token at a time, straight from the definition."""
    type_of = lambda label: None if label == "O" else label.split("-", 1)[1]
    keep = entity_types(label_list)[c]
    columns = [label_list.index("O")] + [i for i, l in enumerate(label_list) if type_of(l) == keep]
    out = []
    for label_id in y:
        if label_id == -100:
            out.append(-100)
            continue
        t = type_of(label_list[label_id])
        if t is None or t == keep:
            new = label_id
        elif mode == "ignore":
            out.append(-100)
            continue
        else:
            new = label_list.index("O")
        out.append(columns.index(new) if mode == "binary" else new)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_btl_targets_brute_force(seed):
    rng = random.Random(seed)
    types = [f"T{i}" for i in range(rng.randint(1, 5))]
    label_list = ["O"] + [f"{p}-{t}" for t in types for p in (("B", "I") if rng.random() < 0.7 else ("B",))]
    y = [rng.choice([-100] + list(range(len(label_list)))) for _ in range(40)]
    for c in range(len(types)):
        for mode in BTL_MODES:
            got = btl_targets(torch.tensor(y).reshape(4, 10), c, label_list, mode).reshape(-1).tolist()
            assert got == brute_force_btl_targets(y, c, label_list, mode), (label_list, c, mode)


def test_copies_are_built_per_present_type():
    batch = {"labels": torch.tensor([[0, 1, 2, -100], [0, 5, 0, -100]])}
    copies = binary_token_label_batches(batch, LABELS, "other_to_o", "present")
    assert [name for name, _, _ in copies] == ["A", "C"]
    assert copies[1][1]["labels"].tolist() == [[0, 0, 0, -100], [0, 5, 0, -100]]
    assert [name for name, _, _ in binary_token_label_batches(batch, LABELS, "binary", "all")] == ["A", "B", "C"]


# --- fused == naive ----------------------------------------------------------------------------

def tiny_model(labels=LABELS, dtype=torch.float64, **config):
    torch.manual_seed(0)
    # a 3000-word vocabulary (ids below 3000 only) keeps the float64 embedding gradients cheap
    return TokenClassifier(BertModel(tiny_bert_config(vocab_size=3000, **config)), labels).to(dtype)


def example_batch():
    labels = torch.tensor([[-100, 0, 1, 2, 0, 3, 4, -100],
                           [-100, 5, 0, 0, 1, -100, -100, -100],
                           [-100, 0, 0, 3, 0, 0, 0, -100]])
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(1000, 3000, labels.shape, generator=g),
            "attention_mask": torch.tensor([[1] * 8, [1] * 5 + [0] * 3, [1] * 8]),
            "token_type_ids": torch.zeros_like(labels), "labels": labels}


def loss_and_grads(model, compute):
    model.zero_grad(set_to_none=True)
    loss, info = compute()
    loss.backward()
    return loss.detach(), info, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def fused(model, batch, loss_fn, **options):
    logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    return btl_fused_loss(logits, batch["labels"], model.labels, loss_fn, **options)


def assert_same_gradients(a, b, rel=1e-6):
    assert a.keys() == b.keys()
    flat_a, flat_b = torch.cat([g.flatten() for g in a.values()]), torch.cat([b[n].flatten() for n in a])
    assert (flat_a - flat_b).norm() <= rel * flat_a.norm()
    scale = flat_a.abs().max()  # some entries are 0 in exact arithmetic (e.g. key biases): compare at scale
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rel, atol=rel * scale, msg=name)


def assert_fused_equals_naive(model, batch, loss_fn, options: dict):
    """Fused BTL's copy losses, loss and gradients equal naive BTL's (float64, no dropout) for
    ``model`` on ``batch``, wherever both live (tests/test_cuda.py runs it on the GPU); returns
    the fused ``(loss, grads)``."""
    naive_loss, naive_info, naive_grads = loss_and_grads(
        model, lambda: btl_naive_loss(model, batch, LABELS, loss_fn, **options))
    fused_loss, fused_info, fused_grads = loss_and_grads(model, lambda: fused(model, batch, loss_fn, **options))
    assert naive_info["classes"] == fused_info["classes"] == ["A", "B", "C"]
    torch.testing.assert_close(fused_info["copy_losses"], naive_info["copy_losses"], rtol=1e-12, atol=0)
    torch.testing.assert_close(fused_loss, naive_loss, rtol=1e-12, atol=0)
    assert_same_gradients(naive_grads, fused_grads)
    return fused_loss, fused_grads


@pytest.mark.parametrize("cfg", LOSS_CONFIGS, ids=lambda c: c.name)
@pytest.mark.parametrize("mode", BTL_MODES)
def test_fused_equals_naive_without_dropout(cfg, mode):
    model = tiny_model().eval()
    batch = example_batch()
    loss_fn = build_loss(cfg, COUNTS)
    for combine in ("mean", "sum"):
        assert_fused_equals_naive(model, batch, loss_fn, dict(mode=mode, classes="present", combine=combine))


def test_fused_equals_naive_float32_all_classes():
    model = tiny_model(dtype=torch.float32).eval()
    batch = example_batch()
    loss_fn = build_loss(LossConfig("focal", gamma=0.5, alpha="weights"), COUNTS)
    options = dict(mode="binary", classes="all", combine="mean")
    naive_loss, naive_info, naive_grads = loss_and_grads(
        model, lambda: btl_naive_loss(model, batch, LABELS, loss_fn, **options))
    fused_loss, _, fused_grads = loss_and_grads(model, lambda: fused(model, batch, loss_fn, **options))
    torch.testing.assert_close(fused_loss, naive_loss, rtol=1e-6, atol=0)
    assert_same_gradients(naive_grads, fused_grads, rel=1e-5)


def test_fused_vectorised_equals_per_copy_loop():
    """The vectorised copies equal a literal loop over ``binary_token_label_batches``, each copy
    scored with the public loss (``__call__``) on its own targets and (binary) sliced columns,
    with per-class weights restricted to those columns by hand."""
    import dataclasses
    torch.manual_seed(3)
    logits = torch.randn(3, 8, len(LABELS), dtype=torch.float64)
    batch = example_batch()
    labels = batch["labels"]
    for cfg in LOSS_CONFIGS:
        token_loss = dataclasses.replace(build_loss(cfg, COUNTS), reduction="sum")
        for mode in BTL_MODES:
            vectorised, _ = btl_fused_loss(logits, labels, LABELS, token_loss, mode, "all", "sum")
            looped = 0.0
            for _, copy, columns in binary_token_label_batches(batch, LABELS, mode, "all"):
                z, loss = logits, token_loss
                if columns is not None:
                    z = logits[..., columns]
                    for field in ("alpha", "offset", "margins"):  # per-class vectors, by hand
                        if isinstance(getattr(token_loss, field, None), torch.Tensor):
                            loss = dataclasses.replace(loss, **{field: getattr(token_loss, field)[columns]})
                looped = looped + loss(z, copy["labels"])
            torch.testing.assert_close(vectorised, looped, rtol=1e-12, atol=0)


@pytest.mark.parametrize("mode", BTL_MODES)
def test_fused_weighted_mean_equals_pytorch_weighted_ce_of_each_literal_copy(mode):
    """With reduction="weighted_mean" each copy is divided by Σ w_t over *its own* targets: a token
    that a copy scores as O (other_to_o) weighs w_O there, not the weight of its real label.
    Reference: each literal copy scored by F.cross_entropy(weight=w), PyTorch's weighted mean."""
    torch.manual_seed(3)
    logits = torch.randn(3, 8, len(LABELS), dtype=torch.float64)
    labels = example_batch()["labels"]
    loss_fn = build_loss(LossConfig("weighted_ce", weight_scheme="inverse", reduction="weighted_mean"), COUNTS)
    w = loss_fn.alpha.double()
    fused_loss, info = btl_fused_loss(logits, labels, LABELS, loss_fn, mode, "present", "mean")
    expected = []
    for _, copy, columns in binary_token_label_batches({"labels": labels}, LABELS, mode, "present"):
        columns = list(range(len(LABELS))) if columns is None else columns
        expected.append(F.cross_entropy(logits[..., columns].reshape(-1, len(columns)), copy["labels"].reshape(-1),
                                        weight=w[columns]))
    torch.testing.assert_close(info["copy_losses"], torch.stack(expected), rtol=1e-12, atol=0)
    torch.testing.assert_close(fused_loss, torch.stack(expected).mean(), rtol=1e-12, atol=0)


def test_dropout_makes_fused_and_naive_differ_and_dropout_zero_does_not():
    batch = example_batch()
    loss_fn = build_loss(LossConfig("ce"))
    model = tiny_model().train()  # hidden and attention dropout 0.1
    torch.manual_seed(0)
    naive_loss, _ = btl_naive_loss(model, batch, LABELS, loss_fn)
    torch.manual_seed(0)
    fused_loss, _ = fused(model, batch, loss_fn)
    assert abs(naive_loss.item() - fused_loss.item()) > 1e-6  # each naive copy drew its own dropout masks
    model = tiny_model(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    torch.testing.assert_close(btl_naive_loss(model, batch, LABELS, loss_fn)[0], fused(model, batch, loss_fn)[0])


@pytest.mark.parametrize("cfg", LOSS_CONFIGS, ids=lambda c: c.name)
def test_btl_with_one_entity_type_is_atl(cfg):
    labels_list = ["O", "B-Drug", "I-Drug"]
    model = tiny_model(labels_list).eval()
    batch = example_batch()
    batch["labels"] = batch["labels"].clamp(max=2)
    loss_fn = build_loss(cfg, COUNTS[:3])
    logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    atl = loss_fn(logits, batch["labels"])
    for combine in ("mean", "sum"):
        torch.testing.assert_close(btl_fused_loss(logits, batch["labels"], labels_list, loss_fn,
                                                  "other_to_o", "present", combine)[0], atl)
        torch.testing.assert_close(btl_naive_loss(model, batch, labels_list, loss_fn,
                                                  "other_to_o", "present", combine)[0], atl)


def test_batch_without_entities_is_scored_as_atl():
    model = tiny_model().eval()
    batch = example_batch()
    batch["labels"] = torch.where(batch["labels"] > 0, torch.zeros_like(batch["labels"]), batch["labels"])
    loss_fn = build_loss(LossConfig("weighted_ce"), COUNTS)
    logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    atl = loss_fn(logits, batch["labels"])
    for mode in BTL_MODES:
        loss, info = btl_fused_loss(logits, batch["labels"], LABELS, loss_fn, mode)
        torch.testing.assert_close(loss, atl)
        assert info["classes"] == [""]
        torch.testing.assert_close(btl_naive_loss(model, batch, LABELS, loss_fn, mode)[0], atl)


def test_fused_reference_by_hand():
    """other_to_o, CE, mean over copies, on 4 tokens: the copy losses written out with F.cross_entropy."""
    logits = torch.randn(4, len(LABELS), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 3, 0, -100])  # B-A, B-B, O, ignored
    loss, info = btl_fused_loss(logits, labels, LABELS, build_loss(LossConfig("ce")))
    copy_a = F.cross_entropy(logits, torch.tensor([1, 0, 0, -100]))
    copy_b = F.cross_entropy(logits, torch.tensor([0, 3, 0, -100]))
    torch.testing.assert_close(info["copy_losses"], torch.stack([copy_a, copy_b]))
    torch.testing.assert_close(loss, (copy_a + copy_b) / 2)
    binary, _ = btl_fused_loss(logits, labels, LABELS, build_loss(LossConfig("ce")), "binary", combine="sum")
    torch.testing.assert_close(binary, F.cross_entropy(logits[:, [0, 1, 2]], torch.tensor([1, 0, 0, -100]))
                               + F.cross_entropy(logits[:, [0, 3, 4]], torch.tensor([0, 1, 0, -100])))


def test_bad_options_raise():
    logits, labels = torch.zeros(4, len(LABELS)), torch.tensor([1, 0, 0, 0])
    loss_fn = build_loss(LossConfig("ce"))
    with pytest.raises(ValueError, match="mode"):
        btl_fused_loss(logits, labels, LABELS, loss_fn, mode="other")
    with pytest.raises(ValueError, match="classes"):
        btl_fused_loss(logits, labels, LABELS, loss_fn, classes="some")
    with pytest.raises(ValueError, match="combine"):
        btl_fused_loss(logits, labels, LABELS, loss_fn, combine="max")
    with pytest.raises(ValueError, match="logits have 6 classes, the label list 3"):
        btl_fused_loss(logits, labels, LABELS[:3], loss_fn)


def test_other_to_o_mean_of_ce_copies_is_atl_with_soft_targets():
    """docs/btl.md § "What the copies add up to": with CE, classes="all", combine="mean", the fused
    other_to_o loss is CE against a soft target: O tokens -> O; a token of type c -> its own label with
    weight 1/K and O with weight (K-1)/K."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(20, len(LABELS), dtype=torch.float64, generator=g)
    labels = torch.randint(0, len(LABELS), (20,), generator=g)
    labels[:3] = -100
    num_types = 3
    loss, _ = btl_fused_loss(logits, labels, LABELS, build_loss(LossConfig("ce")), "other_to_o", "all", "mean")
    kept = labels != -100
    soft = F.one_hot(labels[kept], len(LABELS)).double()
    is_entity = labels[kept] != 0
    soft[is_entity] /= num_types
    soft[is_entity, 0] = (num_types - 1) / num_types
    torch.testing.assert_close(loss, F.cross_entropy(logits[kept], soft))


# ---- sentence-level resampling (Wang & Wang 2022) ------------------------------------------------

# 16 words: 4 of type A (f = 1/4, r = 2 bits), 1 of type B (f = 1/16, r = 4 bits)
RESAMPLING_CORPUS = [
    ["B-A", "I-A", "O", "O"],                    # c_A = 2,            l = 4
    ["B-A", "O", "B-B", "O"],                    # c_A = 1, c_B = 1,   l = 4
    ["O", "O", "O", "O", "O", "O", "O"],         # no entity,          l = 7
    ["B-A"],                                     # c_A = 1,            l = 1
]
# by hand:          sC            sCR                 sCRD              nsCRD
#  sentence 1   1+2 = 3       √(1+2·2) = 2.24     (1+4)/2 = 2.5     (1+2√2)/2 = 1.91
#  sentence 2   1+1+1 = 3     √(1+2+4) = 2.65     (1+2+4)/2 = 3.5   (1+2+4)/2 = 3.5
#  sentence 3   1             1                   1/√7 -> 1         1/√7 -> 1
#  sentence 4   1+1 = 2       √(1+2) = 1.73       (1+2)/1 = 3       (1+2)/1 = 3
RESAMPLING_TABLE = {"sC": [3, 3, 1, 2], "sCR": [3, 3, 1, 2], "sCRD": [3, 4, 1, 3], "nsCRD": [2, 4, 1, 3]}


def test_entity_type_rarity_is_minus_log2_of_the_token_share():
    assert entity_type_rarity(RESAMPLING_CORPUS) == {"A": 2.0, "B": 4.0}


@pytest.mark.parametrize("method", RESAMPLING_METHODS)
def test_resampling_repeats_equal_the_hand_computed_table(method):
    assert sentence_repeats(RESAMPLING_CORPUS, method) == RESAMPLING_TABLE[method]
    expected = {"sC": [3, 3, 1, 2], "sCR": [5 ** 0.5, 7 ** 0.5, 1.0, 3 ** 0.5],
                "sCRD": [2.5, 3.5, 1 / 7 ** 0.5, 3.0], "nsCRD": [(1 + 2 * 2 ** 0.5) / 2, 3.5, 1 / 7 ** 0.5, 3.0]}
    assert resampling_scores(RESAMPLING_CORPUS, method) == pytest.approx(expected[method], rel=1e-12)


def test_resampling_is_deterministic_and_keeps_every_sentence():
    g = np.random.default_rng(0)
    tags = [[str(g.choice(["O", "O", "O", "B-X", "I-X", "B-Y"])) for _ in range(int(g.integers(1, 20)))]
            for _ in range(200)]
    for method in RESAMPLING_METHODS:
        repeats = sentence_repeats(tags, method)
        assert repeats == sentence_repeats(tags, method)
        assert all(r >= 1 for r in repeats)
        assert all(r == 1 for t, r in zip(tags, repeats) if set(t) == {"O"})
    with pytest.raises(ValueError, match="method='sCRDX'"):
        sentence_repeats(tags, "sCRDX")


def test_resampling_ceiling_is_not_fooled_by_float_error(monkeypatch):
    import bertlab.sampling
    tags = [["B-A", "O"], ["B-A"], ["O"]]
    monkeypatch.setattr(bertlab.sampling, "resampling_scores", lambda t, m: [3.0000000000000004, 2.0000001, 0.3])
    assert sentence_repeats(tags, "sC") == [3, 3, 1]


def test_resampling_example_in_docs():
    """docs/losses.md § "Sentence-level resampling": its table's tags and final counts."""
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "docs" / "losses.md").read_text(encoding="utf-8")
    block = text.split("<!-- resampling-example:start -->")[1].split("<!-- resampling-example:end -->")[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block.splitlines()
            if line.startswith("| ") and line[2].isdigit()]
    tags = [r[1].split() for r in rows]
    assert tags == RESAMPLING_CORPUS
    for k, method in enumerate(("sC", "sCR", "sCRD", "nsCRD")):
        shown = [int(r[2 + k].rsplit("→", 1)[1]) for r in rows]
        assert shown == sentence_repeats(tags, method) == RESAMPLING_TABLE[method], method


def test_the_btl_snippet_of_the_docs_runs_as_written():
    """docs/btl.md's Python block, executed as a reader pastes it (labels as a plain list): each
    `# -> value` comment is what the line returns."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "btl.md").read_text(encoding="utf-8")
    block = re.search(r"```python\n(from bertlab.losses import btl_targets.*?)```", text, re.S).group(1)
    scope: dict = {}
    checked = 0
    for line in block.splitlines():
        code, _, expected = line.partition("# ->")
        if expected:
            assert eval(code.strip(), scope) == eval(expected.strip()), line
            checked += 1
        else:
            exec(code, scope)
    assert checked == 2
