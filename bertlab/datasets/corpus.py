"""The data contract every later step reads: Corpus -> Document -> Sentence, plus the label order.

Tags are always IOB2 strings ("O", "B-Type", "I-Type"), whatever scheme the file on disk used.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from bertlab.errors import BertlabError


class DataError(BertlabError, ValueError):
    """Bad input data. The message names the file, the line (or annotation id) and what was expected."""


@dataclass
class Sentence:
    """One sentence: word tokens, their IOB2 tags and (for text-based corpora) character offsets.

    ``offsets[i] = (start, end)`` indexes ``Document.text`` (end exclusive); ``None`` for CoNLL files,
    which carry no text.
    """
    tokens: list[str]
    tags: list[str]
    doc_id: str
    offsets: list[tuple[int, int]] | None = None


@dataclass
class Document:
    """One document (an abstract, a case report); ``text`` is the raw text when the source has it."""
    doc_id: str
    sentences: list[Sentence]
    text: str | None = None


@dataclass
class Corpus:
    """One split of one corpus.

    ``notes`` records what a reader did to the data beyond a plain parse, so nothing changes silently:
    for brat, ``notes["mentions"]`` (per type, before any policy) and ``notes["dropped"]``
    (``{reason: {type: count}}``); for a lenient CoNLL read, ``notes["repairs"]`` (one line each).
    """
    name: str
    split: str
    documents: list[Document]
    notes: dict = field(default_factory=dict)

    @property
    def sentences(self) -> list[Sentence]:
        """All sentences of all documents, in document order."""
        return [s for d in self.documents for s in d.sentences]

    @property
    def entity_types(self) -> list[str]:
        """The entity types that occur in this split's tags, sorted.

        Use :func:`bertlab.datasets.entity_types` (all splits) to build a model's label list.
        """
        return sorted({t[2:] for s in self.sentences for t in s.tags if t != "O"})

    def subset(self, n_documents: int) -> "Corpus":
        """The first ``n_documents`` documents, for smoke runs (same name, split and notes)."""
        return Corpus(self.name, self.split, self.documents[:n_documents], dict(self.notes))

    def __repr__(self) -> str:
        n_sent = sum(len(d.sentences) for d in self.documents)
        return f"Corpus({self.name!r}, split={self.split!r}, documents={len(self.documents)}, sentences={n_sent})"


def label_list(types) -> list[str]:
    """The one canonical label order: ``["O", "B-T1", "I-T1", "B-T2", "I-T2", ...]``, types sorted.

    Label id 0 is always ``O``. ``types`` may be any iterable of type names (duplicates ignored).
    """
    labels = ["O"]
    for t in sorted(set(types)):
        labels += [f"B-{t}", f"I-{t}"]
    return labels
