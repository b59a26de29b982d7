"""NBME "Score Clinical Patient Notes" layout -> (feature text, note) pairs for binary presence tagging.

The layout (as on Kaggle): ``patient_notes.csv`` (``pn_num, case_num, pn_history``), ``features.csv``
(``feature_num, case_num, feature_text``) and ``train.csv`` (``id, case_num, pn_num, feature_num,
annotation, location``), where ``location`` lists character spans into the note, e.g.
``"['696 724;733 739', '802 808']"`` (one string per annotation, ``;`` between fragments) and
``annotation`` the matching texts (fragments joined by one space). ``"[]"`` means the feature is absent.

Each row becomes one :class:`FeaturePair`: the feature text's words (segment A), the note's words with
offsets (segment B) and IOB2 tags marking the words that express the feature, e.g. ``B-FEATURE``.
The real data has its own licence and is not shipped; ``tests/data/nbme_sample/`` is a hand-made sample.
"""
from __future__ import annotations

import ast
import csv
import io
from dataclasses import dataclass
from pathlib import Path

from bertlab.datasets.brat import word_tokenize
from bertlab.datasets.conll import read_text
from bertlab.datasets.corpus import DataError
from bertlab.datasets.tags import tags_from_spans


@dataclass
class FeaturePair:
    """One (feature, note) pair. ``tags`` are IOB2 over ``tokens`` (the note's words)."""
    id: str
    case_num: str
    pn_num: str
    feature_num: str
    feature_text: str
    feature_tokens: list[str]
    note_text: str
    tokens: list[str]
    offsets: list[tuple[int, int]]
    tags: list[str]
    locations: list[list[tuple[int, int]]]  # per annotation, its fragments (character offsets)


def _rows(path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict]]:
    """(line number, row dict) for each record of a CSV file that must have ``columns``. A record
    with fewer fields than the header, or malformed CSV, is a DataError naming the file and line."""
    if not path.exists():
        raise DataError(f"{path}: file not found; expected the NBME layout (patient_notes.csv, "
                        f"features.csv, train.csv)")
    text = read_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    limit = csv.field_size_limit()
    # a field may be as long as the file (a note over csv's default 131,072 characters is a note);
    # the limit is the csv module's global, so it is put back at once
    csv.field_size_limit(max(limit, len(text) + 1))
    out, line = [], 2
    try:
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}:1: header lacks column(s) {missing}; expected {', '.join(columns)}")
        for row in reader:
            short = [c for c in columns if row.get(c) is None]  # DictReader fills a short record with None
            if short:
                given = sum(v is not None for k, v in row.items() if k is not None)
                raise DataError(f"{path}:{line}: {given} field(s), the header has {len(reader.fieldnames)}: "
                                f"no value for {', '.join(short)}")
            out.append((line, row))
            line = reader.line_num + 1  # line_num counts physical lines, notes span several
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None
    finally:
        csv.field_size_limit(limit)
    return out


def parse_location(value: str, where: str) -> list[list[tuple[int, int]]]:
    """``"['696 724;733 739']"`` -> ``[[(696, 724), (733, 739)]]``; DataError naming ``where``."""
    try:
        items = ast.literal_eval(value)
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError
        out = []
        for item in items:
            fragments = [tuple(int(x) for x in f.split()) for f in item.split(";")]
            if any(len(f) != 2 for f in fragments):
                raise ValueError
            out.append(fragments)
        return out
    except (ValueError, SyntaxError):
        raise DataError(f"{where}: location {value!r} is not a list of 'start end[;start end...]' "
                        f"strings, e.g. \"['696 724;733 739']\"") from None


def read_nbme(directory, *, annotations: str = "train.csv", label: str = "FEATURE",
              check_text: bool = True) -> list[FeaturePair]:
    """Read an NBME-layout folder into one :class:`FeaturePair` per row of ``annotations``.

    Words touched by a location become ``B-<label>``/``I-<label>``; each annotation (and each of its
    fragments) is its own mention, overlapping ones are merged. With ``check_text`` every annotation
    text must equal the note text at its location (fragments joined by one space).
    """
    directory = Path(directory)
    notes = {row["pn_num"]: row for _, row in
             _rows(directory / "patient_notes.csv", ("pn_num", "case_num", "pn_history"))}
    features = {row["feature_num"]: row for _, row in
                _rows(directory / "features.csv", ("feature_num", "case_num", "feature_text"))}
    path = directory / annotations
    pairs = []
    for line, row in _rows(path, ("id", "case_num", "pn_num", "feature_num", "annotation", "location")):
        where = f"{path}:{line}: id {row['id']}"
        if row["pn_num"] not in notes:
            raise DataError(f"{where}: pn_num {row['pn_num']} is not in patient_notes.csv")
        if row["feature_num"] not in features:
            raise DataError(f"{where}: feature_num {row['feature_num']} is not in features.csv")
        text = notes[row["pn_num"]]["pn_history"]
        locations = parse_location(row["location"], where)
        for fragments in locations:
            for start, end in fragments:
                if not 0 <= start < end <= len(text):
                    raise DataError(f"{where}: location {start} {end} outside note {row['pn_num']} "
                                    f"({len(text)} characters)")
        if check_text:
            texts = parse_annotation(row["annotation"], where)
            if len(texts) != len(locations):
                raise DataError(f"{where}: {len(texts)} annotation texts but {len(locations)} locations")
            for given, fragments in zip(texts, locations):
                actual = " ".join(text[s:e] for s, e in fragments)
                if given != actual:
                    raise DataError(f"{where}: annotation {given!r} does not match the note text at "
                                    f"its location, which is {actual!r}")
        words = word_tokenize(text)
        offsets = [o for _, o in words]
        spans = []
        for fragments in locations:
            for start, end in fragments:
                touched = [i for i, (s, e) in enumerate(offsets) if s < end and start < e]
                if touched:
                    spans.append([touched[0], touched[-1] + 1])
        merged = []  # overlapping annotations (the same words marked twice) become one mention
        for span in sorted(spans):
            if merged and span[0] < merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], span[1])
            else:
                merged.append(span)
        feature_text = features[row["feature_num"]]["feature_text"]
        pairs.append(FeaturePair(
            id=row["id"], case_num=row["case_num"], pn_num=row["pn_num"], feature_num=row["feature_num"],
            feature_text=feature_text, feature_tokens=[w for w, _ in word_tokenize(feature_text)],
            note_text=text, tokens=[w for w, _ in words], offsets=offsets,
            tags=tags_from_spans([(s, e, label) for s, e in merged], len(words)), locations=locations))
    return pairs


def parse_annotation(value: str, where: str) -> list[str]:
    """``"['chest pain', 'dyspnea']"`` -> the list of annotation texts; DataError naming ``where``."""
    try:
        items = ast.literal_eval(value)
        if isinstance(items, list) and all(isinstance(i, str) for i in items):
            return items
    except (ValueError, SyntaxError):
        pass
    raise DataError(f"{where}: annotation {value!r} is not a list of strings, e.g. \"['chest pain']\"")
