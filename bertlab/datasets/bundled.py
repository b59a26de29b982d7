"""The corpora shipped inside the package (``bertlab/datasets/data/<name>/``) and how each is read.

Every folder keeps the upstream files byte-identical (``MANIFEST.tsv`` lists their git blob SHA-1s),
the licence text(s), the upstream ``README.md`` with its statistics, and an ``ATTRIBUTION.md``.
"""
from __future__ import annotations

import functools
import pickle
import re
from pathlib import Path

from bertlab.datasets.brat import read_brat
from bertlab.datasets.conll import read_conll
from bertlab.datasets.corpus import Corpus
from bertlab.datasets.splits import read_split

DATA = Path(__file__).parent / "data"
SPLIT_ALIASES = {"train": "train", "dev": "dev", "devel": "dev", "test": "test"}

# name -> one line shown by `bertlab data list`
CORPORA = {
    "maccrobat": "MACCROBAT 2020 clinical case reports, brat, 41 types, 200 docs split 160/20/20 (seed 0)",
    "ncbi_disease": "NCBI Disease abstracts, IOB2 CoNLL, 1 type (Disease), official train/devel/test",
    "bionlp13cg": "BioNLP-ST 2013 Cancer Genetics, IOB2 CoNLL, 16 types, official train/devel/test",
    "jnlpba": "JNLPBA 2004 (GENIA), 5 types; train = standoff minus devel docs, devel/test = CoNLL",
    "bc5cdr": "BioCreative V CDR, IOB2 CoNLL, 2 types (Chemical, Disease), official train/devel/test",
    "anatem": "AnatEM anatomy mentions, IOB2 CoNLL, 1 type (Anatomy), official train/devel/test",
}


def list_corpora() -> list[str]:
    """Names of the bundled corpora, for :func:`load`."""
    return list(CORPORA)


def corpus_dir(name: str) -> Path:
    """The folder of a bundled corpus; ValueError naming the choices for an unknown name."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; bundled corpora: {', '.join(CORPORA)}")
    return DATA / name


def _split_name(split: str) -> str:
    try:
        return SPLIT_ALIASES[split]
    except KeyError:
        raise ValueError(f"unknown split {split!r}; expected 'train', 'dev' (or 'devel') or 'test'") from None


def jnlpba_devel_ids() -> list[str]:
    """The 200 standoff/train document ids that make up JNLPBA's CoNLL devel file, in file order."""
    return (DATA / "jnlpba" / "conll_devel_doc_ids.txt").read_text(encoding="ascii").split()


# (folder, name, split, options) -> the pickled Corpus without its documents, and each document
# pickled on its own: each bundled split is parsed once per process (a study's runs each load all
# three splits; MACCROBAT's 160 brat documents take ~0.7 s to parse), every call gets its own copy,
# so a caller that edits its corpus changes no one else's, and a call for the first N documents
# unpickles only those (a smoke run of a few documents does not copy JNLPBA's 1,800)
_PARSED: dict[tuple, tuple[bytes, list[bytes]]] = {}


def load(name: str, split: str = "train", max_documents: int | None = None, **options) -> Corpus:
    """Load one split (``"train"``, ``"dev"``/``"devel"``, ``"test"``) of a bundled corpus;
    ``max_documents``: only its first N documents (``load(...).subset(N)``, notes of the whole split).

    Options by corpus:

    - ``maccrobat``: the brat policies of :func:`bertlab.datasets.brat.read_brat_document`
      (``overlap="longest"``, ``discontinuous="span"``, ``inside_token="expand"``,
      ``sentences="lines"``); the split comes from the shipped ``data/maccrobat/split.json``.
    - ``jnlpba``: ``test_source="conll"`` (official tokens) or ``"standoff"`` (re-tokenised text);
      train is always ``standoff/train`` minus the 200 devel documents, cut into sentences with
      ``sentences="simple"`` (never inside a mention) and ``inside_token="split"`` (the PubMed text
      glues a few mentions to neighbours, e.g. ``p70I kappa B``; JNLPBA's own tokens split there).
    - CoNLL corpora (``ncbi_disease``, ``bionlp13cg``, ``bc5cdr``, ``anatem``, jnlpba dev/test):
      ``drop_duplicates=False``; when true, exact repeats (same tokens and tags) of an earlier
      sentence of the split are removed and counted in ``notes["duplicates_dropped"]``. NCBI-disease's
      train file contains PMID 8528200 twice; it is kept by default so counts match the README.

    Each split is parsed once per process; every call returns a fresh copy.
    """
    split = _split_name(split)
    folder = corpus_dir(name)
    key = (str(folder), name, split, repr(sorted(options.items())))
    if key not in _PARSED:
        corpus = _parse(name, split, folder, dict(options))
        documents, corpus.documents = corpus.documents, []
        _PARSED[key] = (pickle.dumps(corpus, protocol=pickle.HIGHEST_PROTOCOL),
                        [pickle.dumps(d, protocol=pickle.HIGHEST_PROTOCOL) for d in documents])
    header, documents = _PARSED[key]
    corpus = pickle.loads(header)
    corpus.documents = [pickle.loads(d) for d in documents[:max_documents]]
    return corpus


def _parse(name: str, split: str, folder: Path, options: dict) -> Corpus:
    """Read one split of a bundled corpus from its files (``load``'s options)."""
    if name == "maccrobat":
        ids = read_split(folder / "split.json")[split]
        return read_brat(folder / "brat", ids, split=split, name=name, **options)
    if name == "jnlpba":
        test_source = options.pop("test_source", "conll")
        if split == "train" or (split == "test" and test_source == "standoff"):
            directory = folder / "standoff" / split
            devel = set(jnlpba_devel_ids())
            ids = sorted(p.stem for p in directory.glob("*.txt") if p.stem not in devel)
            policies = {"sentences": "simple", "inside_token": "split", **options}
            policies.pop("drop_duplicates", None)
            return read_brat(directory, ids, split=split, name=name, **policies)
        if test_source not in ("conll", "standoff"):
            raise ValueError(f"test_source must be 'conll' or 'standoff', got {test_source!r}")
        doc_ids = jnlpba_devel_ids() if split == "dev" else None
        return _conll(folder / "conll" / ("devel.tsv" if split == "dev" else "test.tsv"),
                      name, split, doc_ids=doc_ids, **options)
    return _conll(folder / ("devel.tsv" if split == "dev" else f"{split}.tsv"), name, split, **options)


def _conll(path: Path, name: str, split: str, doc_ids=None, drop_duplicates: bool = False) -> Corpus:
    corpus = read_conll(path, split=split, name=name, doc_ids=doc_ids)
    if drop_duplicates:
        seen, dropped = set(), 0
        for doc in corpus.documents:
            keep = []
            for s in doc.sentences:
                key = (tuple(s.tokens), tuple(s.tags))
                if key in seen:
                    dropped += 1
                else:
                    seen.add(key)
                    keep.append(s)
            doc.sentences = keep
        # a document left without sentences was entirely a repeat
        corpus.documents = [d for d in corpus.documents if d.sentences]
        corpus.notes["duplicates_dropped"] = dropped
    return corpus


BRAT_TYPE = re.compile(r"^T[^\t]*\t(\S+) ", re.M)  # the type of a T line
CONLL_TYPE = re.compile(r"[\t ][BI]-(\S+)$", re.M)  # the type in a B-/I- tag column


def _types_in(files, pattern) -> set[str]:
    return {t for f in files for t in pattern.findall(f.read_text(encoding="utf-8"))}


@functools.lru_cache(maxsize=None)
def _entity_types(name: str) -> tuple[str, ...]:
    # read the types straight from the files (tag column, brat T lines): cheap, and independent of
    # any flattening policy, so a type whose every mention a policy drops still gets labels
    folder = corpus_dir(name)
    if name == "maccrobat":
        types = _types_in((folder / "brat").glob("*.ann"), BRAT_TYPE)
    elif name == "jnlpba":
        types = (_types_in((folder / "standoff" / "train").glob("*.ann"), BRAT_TYPE)
                 | _types_in((folder / "conll").glob("*.tsv"), CONLL_TYPE))
    else:
        types = _types_in(folder.glob("*.tsv"), CONLL_TYPE)
    return tuple(sorted(types))


def entity_types(name: str) -> list[str]:
    """All entity types of a bundled corpus across its splits, sorted (so rare types absent from
    train still get labels). Feed it to :func:`label_list`."""
    return list(_entity_types(name))
