"""CoNLL / IOB column files: ``token<TAB>tag`` per line, a blank line between sentences,
``-DOCSTART-`` lines between documents. Works on users' own files as well as the bundled ones.

Whitespace-separated columns are accepted too; the token is the first column and the tag the last,
and every line of a file must have the same number of columns (so ``token POS chunk tag`` files work).
"""
from __future__ import annotations

from pathlib import Path

from bertlab.datasets.corpus import Corpus, DataError, Document, Sentence
from bertlab.datasets.tags import convert_tags, spans_from_tags, split_tag, tag_problems, tags_from_spans


def read_text(path: Path) -> str:
    """The file decoded as UTF-8; DataError naming the line of the first undecodable byte."""
    return decode_utf8(Path(path).read_bytes(), str(path))


def decode_utf8(data: bytes, name: str, error=DataError) -> str:
    """``data`` as UTF-8 text; ``error`` (DataError by default) naming ``name``, the line and the
    byte offset of the first undecodable byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise error(f"{name}:{line}: cannot decode byte {data[e.start]:#04x} at byte offset {e.start}; "
                    f"expected UTF-8 text") from None


def _column_documents(path: Path, text: str, scheme: str) -> tuple[list, bool]:
    """The sentences of a column file grouped into documents, ``([[(tokens, tags, line numbers),
    ...] per document], has -DOCSTART- markers)``, each tag checked against ``scheme``; without
    markers, one document holds every sentence. Errors name the file and line."""
    documents: list[list[tuple[list[str], list[str], list[int]]]] = []  # per doc: (tokens, tags, line numbers)
    doc_lines: list[int] = []  # line of each -DOCSTART- marker, for empty-document errors
    has_markers = False
    n_columns = None
    tokens, tags, lines = [], [], []

    def end_sentence():
        nonlocal tokens, tags, lines
        if tokens:
            if not documents:
                documents.append([])
                doc_lines.append(lines[0])
            documents[-1].append((tokens, tags, lines))
        tokens, tags, lines = [], [], []

    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            end_sentence()
            continue
        columns = line.split("\t") if "\t" in line else line.split()
        if columns[0] == "-DOCSTART-":
            end_sentence()
            has_markers = True
            documents.append([])
            doc_lines.append(lineno)
            continue
        if n_columns is None:
            n_columns = len(columns)
            if n_columns < 2:
                raise DataError(f"{path}:{lineno}: expected at least 2 columns (token<TAB>tag), "
                                f"got 1: {line!r}")
        if len(columns) != n_columns:
            raise DataError(f"{path}:{lineno}: expected {n_columns} columns like the first token line, "
                            f"got {len(columns)}: {line!r}")
        token, tag = columns[0], columns[-1].strip()
        try:
            split_tag(tag, scheme)
        except ValueError as e:
            raise DataError(f"{path}:{lineno}: {e}") from None
        tokens.append(token)
        tags.append(tag)
        lines.append(lineno)
    end_sentence()

    if not documents:
        raise DataError(f"{path}: no sentences found; expected token<TAB>tag lines")
    for doc, lineno in zip(documents, doc_lines):
        if not doc:
            raise DataError(f"{path}:{lineno}: empty document: -DOCSTART- is followed by no sentence")
    return documents, has_markers


def read_conll(path, *, split: str = "train", name: str | None = None, scheme: str = "IOB2",
               repair: bool = False, doc_ids: list[str] | None = None) -> Corpus:
    """Read one CoNLL/IOB column file into a :class:`Corpus` with IOB2 tags.

    ``scheme`` is the scheme of the file (IOB1, IOB2, IOBES, BILOU); tags are converted to IOB2.
    Invalid sequences (e.g. ``I-X`` after ``O`` in IOB2) raise :class:`DataError` naming the file and
    line, unless ``repair=True``: then they are read the forgiving way (an orphan ``I-X`` starts a
    mention) and every change is listed in ``corpus.notes["repairs"]``.
    Without ``-DOCSTART-`` lines each sentence is its own document ``"<split>-<index>"``; with them,
    documents are ``"<split>-<k>"`` or the given ``doc_ids`` in file order.
    """
    path = Path(path)
    documents, has_markers = _column_documents(path, read_text(path), scheme)

    if has_markers:
        if doc_ids is not None and len(doc_ids) != len(documents):
            raise DataError(f"{path}: {len(documents)} documents but {len(doc_ids)} doc_ids given")
        ids = doc_ids if doc_ids is not None else [f"{split}-{k}" for k in range(len(documents))]
    else:
        documents = [[sentence] for sentence in documents[0]]  # no markers: one document per sentence
        ids = [f"{split}-{k}" for k in range(len(documents))]

    out, repairs = [], []
    for doc_id, doc in zip(ids, documents):
        sentences = []
        for tokens, tags, lines in doc:
            problems = tag_problems(tags, scheme)
            if problems and not repair:
                i, message = problems[0]
                raise DataError(f"{path}:{lines[i]}: {message} (strict {scheme.upper()}; "
                                f"to read such tags the forgiving way and list each change, set [data] repair = true, "
                                f"e.g. --set data.repair=true; repair=True in read_conll)")
            if problems:
                fixed = tags_from_spans(spans_from_tags(tags, scheme), len(tags), scheme)
                repairs += [f"{path}:{lines[i]}: {tags[i]} -> {fixed[i]}"
                            for i in range(len(tags)) if fixed[i] != tags[i]]
                tags = fixed
            if scheme.upper() != "IOB2":
                tags = convert_tags(tags, scheme, "IOB2")
            sentences.append(Sentence(tokens=tokens, tags=tags, doc_id=doc_id, offsets=None))
        out.append(Document(doc_id=doc_id, sentences=sentences))
    notes = {"source": str(path)}
    if not has_markers:  # no -DOCSTART- lines: the documents are sentences (cross-validation refuses them)
        notes["sentence_documents"] = True
    if repair:
        notes["repairs"] = repairs
    return Corpus(name=name or path.stem, split=split, documents=out, notes=notes)


def write_conll(corpus: Corpus, path, scheme: str = "IOB2", doc_markers: bool = True) -> None:
    """Write ``corpus`` as ``token<TAB>tag`` lines in ``scheme`` (``-DOCSTART-`` between documents)."""
    out = []
    for doc in corpus.documents:
        if doc_markers:
            out.append("-DOCSTART-\tO\n")
        for s in doc.sentences:
            tags = convert_tags(s.tags, "IOB2", scheme) if scheme.upper() != "IOB2" else s.tags
            out.append("".join(f"{t}\t{g}\n" for t, g in zip(s.tokens, tags)) + "\n")
    Path(path).write_text("".join(out), encoding="utf-8")
