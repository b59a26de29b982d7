"""From corpora to training windows: the splits of one run, its label list, the encoded windows.

    load_splits(DataConfig) -> Splits(train, dev, test, labels)      a bundled corpus, or one's own data:
                                                                     CoNLL files or brat folders (read_corpus)
    encode_corpus(tokenizer, corpus, labels, max_length, stride)     -> Windows with label ids
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bertlab.config import DataConfig


@dataclass
class Splits:
    """The corpora of one run and the label list (``labels[0] == "O"``); dev/test may be None
    for CoNLL-file runs without them."""
    train: object
    dev: object | None
    test: object | None
    labels: list[str]


def read_corpus(path, split: str = "test", name: str | None = None, scheme: str = "IOB2",
                repair: bool = False, **policies):
    """One's own data as a Corpus: a brat folder (``<id>.txt`` + ``<id>.ann`` pairs, read by
    ``read_brat`` with its default policies or ``policies``, as MACCROBAT is) or a CoNLL file
    (``read_conll`` with ``scheme`` and ``repair``). ``name`` defaults to the folder's name or the
    file's stem. A DataError names the file and line or annotation id at fault; a folder that holds
    no .txt files but subfolders that do says which to pass."""
    from bertlab.datasets import read_brat, read_conll
    from bertlab.datasets.corpus import DataError
    path = Path(path)
    if not path.is_dir():
        if policies:
            raise DataError(f"{path}: is a CoNLL file; the brat policies ({', '.join(policies)}) apply to brat "
                            f"folders")
        return read_conll(path, split=split, name=name or path.stem, scheme=scheme, repair=repair)
    if scheme != "IOB2" or repair:
        raise DataError(f"{path}: is a brat folder; {'scheme' if scheme != 'IOB2' else 'repair'} applies to "
                        f"CoNLL files (brat mentions become IOB2 tags directly)")
    if not any(path.glob("*.txt")):
        inner = sorted(p.name for p in path.iterdir() if p.is_dir() and any(p.glob("*.txt")))
        if inner:
            raise DataError(f"{path}: no .txt files in it, but its subfolder(s) {', '.join(inner)} hold brat "
                            f"documents; pass one folder per split, e.g. {path / inner[0]}")
    return read_brat(path, split=split, name=name or path.name, **policies)


def corpus_types(corpus) -> set[str]:
    """The entity types a corpus's labels must cover: those in its tags and, for brat data, every
    annotated type (``notes["mentions"]``, before any flattening policy), so a type whose every
    mention a policy drops still gets labels, as for the bundled corpora (``entity_types``)."""
    return set(corpus.entity_types) | set(corpus.notes.get("mentions", {}))


def load_splits(cfg: DataConfig) -> Splits:
    """Read the three splits (a bundled corpus, or one's own CoNLL files or brat folders) and build
    the label list.

    A bundled corpus takes its label list from all of its splits (``entity_types(name)``), so a
    type that is rare in train still gets a label; one's own data from the union of the given
    files and folders (``corpus_types``). ``train_file``, ``dev_file`` and ``test_file`` each name a
    CoNLL file or a brat folder (``read_corpus``). ``max_documents`` keeps the first N documents of
    each split (after the labels are fixed). With ``folds`` = K the splits are pooled and cut again by
    ``cross_validation_split`` (fold ``fold``, seed ``fold_seed``); ``max_documents`` then keeps the
    first N pooled documents.
    """
    from bertlab.datasets import entity_types, label_list, load
    if cfg.train_file:
        name = Path(cfg.train_file).name if Path(cfg.train_file).is_dir() else Path(cfg.train_file).stem

        def read(path, split):
            return read_corpus(path, split, name, cfg.scheme, cfg.repair) if path else None
        train, dev, test = read(cfg.train_file, "train"), read(cfg.dev_file, "dev"), read(cfg.test_file, "test")
        types = set().union(*(corpus_types(c) for c in (train, dev, test) if c is not None))
    else:  # the first max_documents of each split are all that either cut below keeps
        train, dev, test = (load(cfg.name, split, cfg.max_documents or None) for split in ("train", "dev", "test"))
        types = entity_types(cfg.name)
    if cfg.folds:
        train, dev, test = cross_validation_corpora(cfg, [c for c in (train, dev, test) if c is not None])
    elif cfg.max_documents:
        train, dev, test = (c.subset(cfg.max_documents) if c is not None else None for c in (train, dev, test))
    if cfg.random_labels:
        train = permute_mention_types(train, cfg.random_labels_seed)
    return Splits(train, dev, test, label_list(types))


def pooled_documents(cfg: DataConfig, corpora) -> list:
    """The documents cross-validation deals into folds: every split of the corpus, in split order,
    the first ``max_documents`` of them when that is set. A corpus whose documents are sentences (CoNLL
    files without ``-DOCSTART-`` lines) is refused: folds of sentences would put sentences of one
    document in training and test."""
    from bertlab.datasets.corpus import DataError
    name = cfg.train_file or cfg.name
    if any(c.notes.get("sentence_documents") for c in corpora):
        raise DataError(f"[data] folds = {cfg.folds}: {name} has no document boundaries (no -DOCSTART- lines, so "
                        f"each sentence is its own document); cross-validation splits documents")
    documents = [d for c in corpora for d in c.documents]
    return documents[:cfg.max_documents] if cfg.max_documents else documents


def cross_validation_corpora(cfg: DataConfig, corpora) -> tuple:
    """``(train, dev, test)`` corpora of fold ``cfg.fold`` of ``cfg.folds`` (``cross_validation_split``
    over ``pooled_documents``), each in pooled order; ``notes["fold"]`` says which documents."""
    from bertlab.datasets.corpus import Corpus, DataError
    from bertlab.datasets.splits import cross_validation_split
    documents = pooled_documents(cfg, corpora)
    try:
        split = cross_validation_split(documents, cfg.folds, cfg.fold, cfg.fold_seed)
    except ValueError as e:
        what = f"{cfg.train_file or cfg.name}" + (f" (max_documents = {cfg.max_documents})" if cfg.max_documents else "")
        raise DataError(f"[data] folds = {cfg.folds}: {what}: {e}") from None
    note = {"folds": cfg.folds, "fold": cfg.fold, "fold_seed": cfg.fold_seed,
            "documents": {k: len(v) for k, v in split.items()}}
    name = corpora[0].name
    part_of = {d: part for part, ids in split.items() for d in ids}
    return tuple(Corpus(name, part, [d for d in documents if part_of[d.doc_id] == part], {"fold": note})
                 for part in ("train", "dev", "test"))


def permute_mention_types(corpus, seed: int = 0):
    """The corpus with the entity types of its mentions shuffled among them (strict IOB2 mentions;
    ``random.Random(seed)``): every mention keeps its span, every type keeps its number of
    mentions, but which mention has which type is random. The random-label experiment of the BTL
    paper: what a model learns from the label frequencies alone. ``notes["random_labels"]`` says so."""
    import copy
    import random

    from bertlab.datasets.corpus import Corpus, Document, Sentence
    from bertlab.metrics import strict_entities
    mentions = [(d, s, start, end, typ) for d, doc in enumerate(corpus.documents)
                for s, sent in enumerate(doc.sentences) for typ, start, end in strict_entities(sent.tags)]
    types = [m[4] for m in mentions]
    random.Random(seed).shuffle(types)
    tags = {(d, s): list(sent.tags) for d, doc in enumerate(corpus.documents) for s, sent in enumerate(doc.sentences)}
    for (d, s, start, end, _), typ in zip(mentions, types):
        tags[(d, s)][start:end] = [f"B-{typ}"] + [f"I-{typ}"] * (end - start - 1)
    documents = [Document(doc.doc_id, [Sentence(sent.tokens, tags[(d, s)], sent.doc_id, sent.offsets)
                                       for s, sent in enumerate(doc.sentences)], doc.text)
                 for d, doc in enumerate(corpus.documents)]
    notes = copy.deepcopy(corpus.notes)
    notes["random_labels"] = f"entity types of the {len(mentions)} mentions shuffled among them (seed {seed})"
    return Corpus(corpus.name, corpus.split, documents, notes)


def encode_corpus(tokenizer, corpus, labels: list[str], max_length: int, stride: int) -> list:
    """All training windows of a corpus: ``Window`` objects with label ids on first subwords."""
    label2id = {l: i for i, l in enumerate(labels)}
    sentences = [s for s in corpus.sentences if s.tokens]
    ids = [[label2id[t] for t in s.tags] for s in sentences]
    per_sentence = tokenizer.batch_encode([s.tokens for s in sentences], ids, max_length, stride)
    return [w for ws in per_sentence for w in ws]


def mention_counts(sentences) -> dict[str, int]:
    """Gold entity mentions per type (strict IOB2): how frequent each class is in training."""
    from bertlab.metrics import strict_entities
    counts: dict[str, int] = {}
    for s in sentences:
        for typ, _, _ in strict_entities(s.tags):
            counts[typ] = counts.get(typ, 0) + 1
    return dict(sorted(counts.items()))


def untrained_types(splits: Splits) -> dict[str, dict[str, int]]:
    """``{split: {type: mentions}}``: the types with dev or test mentions and none in training. The
    model has a label for each but never sees it trained, so each scores 0 there and pulls macro F1
    down; training warns about them, as ``bertlab evaluate`` does about types the model lacks."""
    trained = mention_counts(splits.train.sentences)
    out = {}
    for split, corpus in (("dev", splits.dev), ("test", splits.test)):
        if corpus is not None:
            missing = {t: n for t, n in mention_counts(corpus.sentences).items() if t not in trained}
            if missing:
                out[split] = missing
    return out


def data_repairs(splits: Splits) -> list[str]:
    """Every tag ``[data] repair = true`` changed while reading the CoNLL files, one
    ``"file:line: old -> new"`` a change, train then dev then test (empty without repair)."""
    return [r for c in (splits.train, splits.dev, splits.test) if c is not None for r in c.notes.get("repairs", [])]


def tag_counts(sentences) -> dict[str, int]:
    """Words per tag (``O``, ``B-X``, ``I-X``): the token-level label frequencies a token
    classifier is trained on."""
    counts: dict[str, int] = {}
    for s in sentences:
        for tag in s.tags:
            counts[tag] = counts.get(tag, 0) + 1
    return dict(sorted(counts.items()))
