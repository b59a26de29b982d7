"""Bundled corpora, readers, splits and statistics, checked against each corpus README's numbers."""
import hashlib
import json
import re
from collections import Counter

import pytest

from bertlab.datasets import (DataError, corpus_dir, corpus_stats, entity_types, label_list, list_corpora, load,
                              make_split, read_brat, read_conll, read_nbme, read_split, write_conll)
from bertlab.datasets.brat import overlap_pairs, parse_ann, word_tokenize
from bertlab.datasets.bundled import DATA, jnlpba_devel_ids
from bertlab.datasets.cli import main as data_main
from bertlab.datasets.tags import spans_from_tags

from conftest import REPO

NBME_SAMPLE = REPO / "tests" / "data" / "nbme_sample"
CONLL_CORPORA = ["ncbi_disease", "bionlp13cg", "bc5cdr", "anatem"]


def readme_table(name, first_header):
    """Rows of the Markdown table in a bundled README whose header starts with ``first_header``:
    ``{first cell: [other cells as int where they are numbers]}``."""
    lines = (corpus_dir(name) / "README.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith(f"| {first_header} |"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        rows[cells[0]] = [int(c.replace(",", "")) if re.fullmatch(r"[\d,]+", c) else c for c in cells[1:]]
    return rows


def mentions_per_type(corpus):
    return Counter(t for s in corpus.sentences for _, _, t in spans_from_tags(s.tags))


# ---------------------------------------------------------------------------------------- bundle
@pytest.mark.parametrize("name", ["maccrobat", "ncbi_disease", "bionlp13cg", "jnlpba", "bc5cdr", "anatem"])
def test_bundled_files_match_manifest_sha1(name):
    folder = corpus_dir(name)
    rows = (folder / "MANIFEST.tsv").read_text(encoding="utf-8").splitlines()
    header = rows[0].split("\t")
    assert header[:1] == ["local_path"] and "git_blob_sha1" in header
    checked = 0
    for row in rows[1:]:
        record = dict(zip(header, row.split("\t")))
        data = (folder / record["local_path"]).read_bytes()
        assert len(data) == int(record["bytes"]), record["local_path"]
        assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == record["git_blob_sha1"], record["local_path"]
        checked += 1
    assert checked == len(rows) - 1 > 0
    assert (folder / "README.md").exists() and (folder / "ATTRIBUTION.md").exists()
    assert any(p.name.upper().startswith(("LICENSE", "REPO_LICENSE")) for p in folder.iterdir())


def test_list_and_label_list():
    assert list_corpora() == ["maccrobat", "ncbi_disease", "bionlp13cg", "jnlpba", "bc5cdr", "anatem"]
    assert label_list(["Z", "A", "A"]) == ["O", "B-A", "I-A", "B-Z", "I-Z"]
    assert entity_types("bc5cdr") == ["Chemical", "Disease"]
    with pytest.raises(ValueError, match="unknown corpus 'nope'; bundled corpora: maccrobat"):
        load("nope")
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        load("ncbi_disease", "validation")


# ---------------------------------------------------------------------------------- CoNLL corpora
@pytest.mark.parametrize("name", CONLL_CORPORA)
def test_conll_corpus_stats_match_readme(name):
    splits = readme_table(name, "split")
    types = readme_table(name, "entity type")
    for column, (split, alias) in enumerate([("train", "train"), ("dev", "devel"), ("test", "test")]):
        corpus = load(name, alias)
        assert corpus.split == split
        stats = corpus_stats(corpus)
        _, _, sentences, tokens, mentions = splits[alias]
        assert (stats["sentences"], stats["tokens"], stats["total_mentions"]) == (sentences, tokens, mentions)
        assert stats["documents"] == sentences  # no document markers: one document per sentence
        expected = {t: row[column] for t, row in types.items() if t != "all" and row[column]}
        assert stats["mentions"] == expected
        assert abs(sum(stats["share"].values()) - 1) < 1e-9
        assert stats["imbalance_ratio"] == max(expected.values()) / min(expected.values())
        assert sum(stats["tag_counts"].values()) == tokens
        assert sum(n for tag, n in stats["tag_counts"].items() if tag.startswith("B-")) == mentions


def test_ncbi_duplicates_kept_by_default_and_droppable():
    kept = load("ncbi_disease", "train")
    dropped = load("ncbi_disease", "train", drop_duplicates=True)
    assert corpus_stats(kept)["total_mentions"] == 5145
    n_dropped = dropped.notes["duplicates_dropped"]
    # README: dup_within_train 32 counts token sequences; one repeated sentence ("Familial
    # Mediterranean fever ( FMF ) ...") is tagged differently, so 31 are exact (tokens and tags) repeats
    token_repeats = Counter(tuple(s.tokens) for s in kept.sentences)
    assert sum(n - 1 for n in token_repeats.values()) == 32
    assert n_dropped == 31
    assert len(dropped.sentences) == len(kept.sentences) - n_dropped
    assert corpus_stats(dropped)["total_mentions"] < 5145


# ------------------------------------------------------------------------------------------- JNLPBA
@pytest.fixture(scope="module")
def jnlpba_train():
    return load("jnlpba", "train")


def test_jnlpba_splits_match_readme(jnlpba_train):
    conll = readme_table("jnlpba", "split")  # the first "| split |" table is the CoNLL one
    types = ["protein", "DNA", "cell_type", "cell_line", "RNA"]
    lines = (corpus_dir("jnlpba") / "README.md").read_text(encoding="utf-8")
    train_row = re.search(r"\| standoff/train minus devel IDs \(= train\) \|([^\n]+)", lines).group(1)
    docs, _, _, mentions, *per_type = [int(c.replace(",", "")) for c in train_row.strip(" |").split("|")]
    header = re.search(r"\| split \| documents \| lines \|[^\n]+", lines).group().strip("|").split("|")
    header_types = [h.strip() for h in header[5:]]

    stats = corpus_stats(jnlpba_train)
    assert stats["documents"] == docs == 1800
    assert stats["total_mentions"] == mentions == 46750
    assert stats["mentions"] == dict(zip(header_types, per_type))
    assert sum(jnlpba_train.notes["mentions"].values()) == 46750 and not jnlpba_train.notes["dropped"]
    assert not {d.doc_id for d in jnlpba_train.documents} & set(jnlpba_devel_ids())
    # the PubMed text glues 19 mentions to a neighbour ("p70I kappa B"): tokens are cut there, counted
    assert sum(jnlpba_train.notes["changed"]["split_token"].values()) == 19

    for split, alias in (("dev", "devel"), ("test", "test")):
        corpus = load("jnlpba", split)
        s = corpus_stats(corpus)
        _, docs_, sentences, tokens, mentions = conll[alias]
        assert (s["documents"], s["sentences"], s["tokens"], s["total_mentions"]) == (docs_, sentences, tokens, mentions)
        column = 0 if split == "dev" else 1
        assert s["mentions"] == {t: r[column] for t, r in readme_table("jnlpba", "entity type").items() if t != "all"}
    assert [d.doc_id for d in load("jnlpba", "dev").documents] == jnlpba_devel_ids()
    assert set(types) == set(entity_types("jnlpba"))


def test_jnlpba_standoff_test_matches_conll_test_counts():
    standoff = load("jnlpba", "test", test_source="standoff")
    assert len(standoff.documents) == 404
    assert mentions_per_type(standoff) == mentions_per_type(load("jnlpba", "test"))


# ---------------------------------------------------------------------------------------- MACCROBAT
@pytest.fixture(scope="module")
def maccrobat_all():
    """All 200 documents, default policies, read in one go."""
    return read_brat(DATA / "maccrobat" / "brat", name="maccrobat")


def test_maccrobat_counts_match_readme(maccrobat_all):
    ((docs, (sentences, _, tokens, _, mentions, n_types)),) = readme_table("maccrobat", "documents").items()
    assert (int(docs), sentences, tokens, mentions, n_types) == (200, 4541, 107297, 25189, 41)
    readme_types = {t: row[0] for t, row in readme_table("maccrobat", "entity type").items() if t != "all"}
    corpus = maccrobat_all
    assert len(corpus.documents) == 200
    assert len(corpus.sentences) == sentences and sum(len(s.tokens) for s in corpus.sentences) == tokens
    assert dict(corpus.notes["mentions"]) == readme_types
    assert sum(readme_types.values()) == mentions and len(readme_types) == n_types
    assert entity_types("maccrobat") == sorted(readme_types)
    # every T line is either tagged or counted as dropped, per type
    dropped = Counter()
    for counts in corpus.notes["dropped"].values():
        dropped.update(counts)
    assert corpus.notes["kept"] + dropped == corpus.notes["mentions"]
    assert mentions_per_type(corpus) == corpus.notes["kept"]


def test_maccrobat_overlap_pairs_match_readme():
    # README: 364 nested pairs, 124 identical spans with two types, 1 crossing pair
    counts = Counter()
    for txt in sorted((DATA / "maccrobat" / "brat").glob("*.txt")):
        mentions = parse_ann(txt.with_suffix(".ann"), txt.read_text(encoding="utf-8"))
        counts += overlap_pairs([(m.fragments[0][0], m.fragments[-1][1], m.type) for m in mentions])
    assert counts == Counter(nested=364, identical=124, crossing=1)


def test_maccrobat_brat_to_bio_to_spans_recovers_kept_mentions(maccrobat_all):
    """Decoded tag spans are exactly the annotated spans (aligned to tokens) the policies keep."""
    for doc in maccrobat_all.documents:
        text = doc.text
        tokens = [o for _, o in word_tokenize(text)]
        annotated = Counter()
        for m in parse_ann(DATA / "maccrobat" / "brat" / f"{doc.doc_id}.ann", text):
            start, end = m.fragments[0][0], m.fragments[-1][1]
            touched = [(s, e) for s, e in tokens if s < end and start < e]  # brute force alignment
            annotated[(touched[0][0], touched[-1][1], m.type)] += 1
        decoded = Counter()
        for s in doc.sentences:
            for a, b, t in spans_from_tags(s.tags):
                decoded[(s.offsets[a][0], s.offsets[b - 1][1], t)] += 1
        assert not decoded - annotated, doc.doc_id  # nothing invented
        # and nothing kept goes missing: distinct decoded spans never overlap (IOB2 can't hold more)
        spans = sorted(decoded)
        assert all(e1 <= s2 for (_, e1, _), (s2, _, _) in zip(spans, spans[1:]))


def test_maccrobat_policies_are_counted(maccrobat_all):
    notes = maccrobat_all.notes
    assert sum(notes["changed"]["discontinuous_merged"].values()) == 44  # README: 44 discontinuous
    assert sum(notes["dropped"]["crosses_sentence"].values()) == 5
    assert sum(notes["dropped"]["identical"].values()) == 121
    assert sum(notes["dropped"]["nested"].values()) == 357
    assert sum(notes["changed"]["expanded"].values()) == 31
    shortest = read_brat(DATA / "maccrobat" / "brat", name="maccrobat", overlap="shortest",
                         inside_token="drop")
    assert sum(shortest.notes["dropped"]["inside_token"].values()) == 31
    assert "expanded" not in shortest.notes["changed"]
    kept_plus_dropped = shortest.notes["kept"] + sum(shortest.notes["dropped"].values(), Counter())
    assert kept_plus_dropped == shortest.notes["mentions"]
    fragments = read_brat(DATA / "maccrobat" / "brat", ["21308977"], discontinuous="fragments")
    assert sum(fragments.notes["changed"]["fragments_split"].values()) == 6


def test_maccrobat_split_file_is_stable_and_used():
    shipped = read_split(DATA / "maccrobat" / "split.json")
    ids = sorted(p.stem for p in (DATA / "maccrobat" / "brat").glob("*.txt"))
    regenerated = make_split(ids, (160, 20, 20), seed=shipped["seed"])
    assert {k: shipped[k] for k in ("train", "dev", "test")} == regenerated
    assert make_split(list(reversed(ids)), seed=0) == regenerated  # input order does not matter
    assert make_split(ids, seed=1) != regenerated
    # pinned, so a change in Python's random or in the split code shows up on any platform
    assert shipped["dev"][:3] == ["20146086", "21477357", "22781096"]
    assert shipped["sizes"] == [160, 20, 20]
    assert sorted(shipped["train"] + shipped["dev"] + shipped["test"]) == ids
    dev = load("maccrobat", "dev")
    assert [d.doc_id for d in dev.documents] == shipped["dev"]
    assert [d.doc_id for d in dev.subset(3).documents] == shipped["dev"][:3]
    fractions = make_split([f"d{i}" for i in range(10)], (0.8, 0.1, 0.1), seed=0)
    assert [len(fractions[k]) for k in ("train", "dev", "test")] == [8, 1, 1]
    with pytest.raises(ValueError, match="sum to 199, but there are 200 documents"):
        make_split(ids, (160, 20, 19))


@pytest.mark.parametrize("name", ["maccrobat", "ncbi_disease"])
def test_load_of_the_first_documents_equals_the_subset_and_every_call_is_a_fresh_copy(name):
    """``load(name, split, max_documents=N)`` unpickles only N documents of the split parsed once per
    process: the same corpus as ``load(name, split).subset(N)`` (notes of the whole split), and no
    two calls share an object, so a caller that edits its copy changes no one else's."""
    for split in ("train", "dev", "test"):
        whole = load(name, split)
        for n in (0, 1, 3, len(whole.documents) + 5):
            assert load(name, split, max_documents=n) == whole.subset(n), (split, n)
        tag, first = whole.documents[0].sentences[0].tags[0], load(name, split, max_documents=2)
        first.documents[0].sentences[0].tags[0] = "edited"
        first.notes["edited"] = True
        again = load(name, split)
        assert again.documents[0].sentences[0].tags[0] == tag != "edited" and "edited" not in again.notes


# ----------------------------------------------------------------------------------- CoNLL reader
def test_conll_reader_documents_schemes_and_round_trip(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("-DOCSTART- O\n\nAspirin B-Drug\ncauses O\nulcers B-Disease\n\n"
                    "-DOCSTART- O\n\nNo O\nrisk O\n", encoding="utf-8")
    corpus = read_conll(path, split="test")
    assert [d.doc_id for d in corpus.documents] == ["test-0", "test-1"]
    assert corpus.sentences[0].tags == ["B-Drug", "O", "B-Disease"]
    bilou = tmp_path / "bilou.tsv"
    write_conll(corpus, bilou, scheme="BILOU")
    assert "U-Drug" in bilou.read_text()
    again = read_conll(bilou, scheme="BILOU", split="test")
    assert [s.tags for s in again.sentences] == [s.tags for s in corpus.sentences]
    iob1 = tmp_path / "iob1.tsv"
    iob1.write_text("a\tI-X\nb\tB-X\nc\tO\n", encoding="utf-8")
    assert read_conll(iob1, scheme="IOB1").sentences[0].tags == ["B-X", "B-X", "O"]


def test_conll_lenient_repair_reports_changes(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("a\tO\nb\tI-X\nc\tI-X\n\nd\tI-Y\n", encoding="utf-8")
    corpus = read_conll(path, repair=True)
    assert [s.tags for s in corpus.sentences] == [["O", "B-X", "I-X"], ["B-Y"]]
    assert corpus.notes["repairs"] == [f"{path}:2: I-X -> B-X", f"{path}:5: I-Y -> B-Y"]


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("content, message", [
    ("a\tO\nb\tO\tx\n", r":2: expected 2 columns like the first token line, got 3"),
    ("a\tO\nb\tX-Drug\n", r":2: tag 'X-Drug' is not valid IOB2: expected 'O' or B-Type/I-Type"),
    ("a\tO\nb\tDrug\n", r":2: tag 'Drug' is not valid IOB2"),
    ("a\tO\n\nb\tO\nc\tI-Drug\n", r":4: I-Drug must follow B-Drug or I-Drug, not O \(strict IOB2"),
    ("-DOCSTART-\tO\n\na\tO\n\n-DOCSTART-\tO\n\n", r":5: empty document: -DOCSTART- is followed by no sentence"),
    ("a\n", r":1: expected at least 2 columns"),
    ("\n\n", r": no sentences found"),
])
def test_conll_bad_input_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(str(path)) + message):
        read_conll(path)


def test_bad_encoding_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.tsv"
    path.write_bytes("a\tO\n\ncaf\u00e9\tO\n".encode("latin-1"))
    with pytest.raises(DataError, match=re.escape(str(path)) + r":3: cannot decode byte 0xe9 .* expected UTF-8"):
        read_conll(path)
    (tmp_path / "doc.txt").write_bytes(b"fi\xe8vre\n")
    (tmp_path / "doc.ann").write_text("", encoding="utf-8")
    with pytest.raises(DataError, match=r"doc.txt:1: cannot decode byte 0xe8"):
        read_brat(tmp_path)


@pytest.mark.parametrize("text, ann, message", [
    ("Fever and rash.\n", "T1\tSign_symptom 0 5\tFever\nT2\tSign_symptom 10 40\trash\n",
     r"doc.ann:2: T2: offsets 10 40 outside the text of .*doc.txt \(16 characters\)"),
    ("Fever and rash.\n", "T1\tSign_symptom 0 5\tFevers\n",
     r"doc.ann:1: T1: annotation text 'Fevers' does not match the text at offsets '0 5', which is 'Fever'"),
    ("Fever and rash.\n", "T1\tSign_symptom zero 5\tFever\n", r"doc.ann:1: T1: expected '<Type> <start> <end>"),
    ("Fever and rash.\n", "X1\tsomething\n", r"doc.ann:1: unknown annotation line 'X1\\tsomething'"),
    ("Fever and rash.\n", "T1\tSign_symptom 0 5\n", r"doc.ann:1: expected 'T<n><TAB><Type> <start> <end><TAB><text>'"),
    ("  \n\n", "", r"doc.txt:1: empty document"),
])
def test_brat_bad_input_names_file_and_annotation(tmp_path, text, ann, message):
    (tmp_path / "doc.txt").write_text(text, encoding="utf-8")
    (tmp_path / "doc.ann").write_text(ann, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_brat(tmp_path)


def test_brat_annotation_without_text_is_an_error_not_a_silent_drop(tmp_path):
    (tmp_path / "a.txt").write_text("Fever.\n", encoding="utf-8")
    (tmp_path / "a.ann").write_text("T1\tSign_symptom 0 5\tFever\n", encoding="utf-8")
    (tmp_path / "b.ann").write_text("T1\tSign_symptom 0 5\tFever\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"b.ann: annotation file without its text \(1 such"):
        read_brat(tmp_path)


def test_brat_user_files_ignore_non_entity_lines(tmp_path):
    (tmp_path / "d.txt").write_text("A 28-year-old man.\nNo fever.\n", encoding="utf-8")
    (tmp_path / "d.ann").write_text("T1\tAge 2 13\t28-year-old\nE1\tAge:T1 \nT2\tSex 14 17\tman\n"
                                    "R1\tMODIFY Arg1:T1 Arg2:T2\t\nA1\tPOLARITY T2 NEG\n#1\tAnnotatorNotes T1\tx\n"
                                    "T3\tSign_symptom 22 27\tfever\n", encoding="utf-8")
    corpus = read_brat(tmp_path)
    first, second = corpus.sentences
    assert first.tokens == ["A", "28", "-", "year", "-", "old", "man", "."]
    assert first.tags == ["O", "B-Age", "I-Age", "I-Age", "I-Age", "I-Age", "B-Sex", "O"]
    assert second.tags == ["O", "B-Sign_symptom", "O"] and second.offsets[1] == (22, 27)
    assert corpus.documents[0].text[22:27] == "fever"


# -------------------------------------------------------------------------------------------- NBME
def test_nbme_sample_pairs():
    pairs = {p.id: p for p in read_nbme(NBME_SAMPLE)}
    assert len(pairs) == 8
    p = pairs["100_001"]  # discontinuous "dad ... MI": two one-word mentions
    assert p.feature_tokens == ["Family", "-", "history", "-", "of", "-", "MI"]
    assert [(t, g) for t, g in zip(p.tokens, p.tags) if g != "O"] == [("dad", "B-FEATURE"), ("MI", "B-FEATURE")]
    assert p.locations == [[(94, 97), (102, 104)]]
    assert all(p.note_text[s:e] == tok for tok, (s, e) in zip(p.tokens, p.offsets))
    assert set(pairs["100_003"].tags) == {"O"}  # feature absent: location []
    # two overlapping annotations merge into one mention
    p = pairs["200_100"]
    assert [g for g in p.tags if g != "O"] == ["B-FEATURE", "I-FEATURE", "I-FEATURE", "I-FEATURE"]
    assert read_nbme(NBME_SAMPLE, label="PRESENT")[0].tags.count("B-PRESENT") == 1


@pytest.mark.parametrize("column, value, message", [
    ("location", "['23 35;40']", r"train.csv:2: id 100_000: location \"\['23 35;40'\]\" is not a list"),
    ("location", "['23 3500']", r"train.csv:2: id 100_000: location 23 3500 outside note 100"),
    ("annotation", "['palpitation']", r"train.csv:2: id 100_000: annotation 'palpitation' does not match"),
    ("pn_num", "999", r"train.csv:2: id 100_000: pn_num 999 is not in patient_notes.csv"),
])
def test_nbme_bad_input_names_file_line_and_id(tmp_path, column, value, message):
    import csv
    for name in ("patient_notes.csv", "features.csv"):
        (tmp_path / name).write_bytes((NBME_SAMPLE / name).read_bytes())
    with open(NBME_SAMPLE / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rows[0][column] = value
    with open(tmp_path / "train.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(DataError, match=message):
        read_nbme(tmp_path)


def test_nbme_short_rows_long_notes_and_bad_csv(tmp_path):
    """Issue #41: a short row of patient_notes.csv was a TypeError, a note over csv's default field
    limit (131,072 characters) a _csv.Error. The first names the file and line; the long note is read.
    (Python 3.11's csv module raises on little else; what it does raise is a DataError naming the line.)"""
    import csv
    for name in ("features.csv", "train.csv"):
        (tmp_path / name).write_bytes((NBME_SAMPLE / name).read_bytes())
    notes = (NBME_SAMPLE / "patient_notes.csv").read_text()
    with open(NBME_SAMPLE / "patient_notes.csv", newline="") as f:
        n_lines = f.read().count("\n")
    (tmp_path / "patient_notes.csv").write_text(notes + "999,0\n")
    with open(tmp_path / "train.csv", "a") as f:
        f.write("999_000,0,999,0,[],[]\n")
    with pytest.raises(DataError, match=rf"patient_notes.csv:{n_lines + 1}: 2 field\(s\), the header has 3: "
                                         r"no value for pn_history"):
        read_nbme(tmp_path)
    long_note = "Palpitations. " + "Denies chest pain. " * 8000  # 152,014 characters
    with open(tmp_path / "patient_notes.csv", "w", newline="") as f:
        f.write(notes)
        csv.writer(f).writerow(["999", "0", long_note])
    pair = {p.id: p for p in read_nbme(tmp_path)}["999_000"]
    assert pair.note_text == long_note and len(pair.tokens) == 2 + 4 * 8000
    assert csv.field_size_limit() == 131072  # the csv module's global is put back


# --------------------------------------------------------------------------------------------- CLI
def test_cli_list_and_stats(capsys):
    assert data_main(["list"]) == 0
    assert "maccrobat" in capsys.readouterr().out
    assert data_main(["stats", "bc5cdr", "--split", "dev", "--json"]) == 0
    (stats,) = json.loads(capsys.readouterr().out)
    assert stats["split"] == "dev" and stats["mentions"] == {"Chemical": 5347, "Disease": 4246}
    assert data_main(["stats", "ncbi_disease", "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "| test | 940 | 940 | 24,497 | 960 | 1 |" in out and "| B-Disease | 960 |" in out


def test_random_labels_keep_spans_and_type_frequencies():
    """permute_mention_types: the same mention spans (strict IOB2), the same count per type, other
    types on them (a shuffle, not the identity), and O tokens untouched."""
    from collections import Counter

    from bertlab.datasets.prepare import permute_mention_types
    from bertlab.metrics import strict_entities
    corpus = load("maccrobat", split="train").subset(10)
    shuffled = permute_mention_types(corpus, seed=3)
    before = [strict_entities(s.tags) for s in corpus.sentences]
    after = [strict_entities(s.tags) for s in shuffled.sentences]
    assert [[(a, b) for _, a, b in m] for m in before] == [[(a, b) for _, a, b in m] for m in after]
    assert Counter(t for m in before for t, _, _ in m) == Counter(t for m in after for t, _, _ in m)
    changed = sum(t1 != t2 for m1, m2 in zip(before, after) for (t1, _, _), (t2, _, _) in zip(m1, m2))
    assert changed > 0.5 * sum(len(m) for m in before)
    for s1, s2 in zip(corpus.sentences, shuffled.sentences):
        assert [t == "O" for t in s1.tags] == [t == "O" for t in s2.tags] and s1.tokens == s2.tokens
    assert permute_mention_types(corpus, seed=3).sentences[0].tags == shuffled.sentences[0].tags  # seeded


# ----------------------------------------------------------------------------- cross-validation folds
def _missing_folds(mentions, groups, k):
    """Σ over types of min(k, documents with the type) − folds that hold it: 0 is a perfect spread."""
    types = {t for c in mentions.values() for t in c}
    docs = {t: sum(1 for c in mentions.values() if c.get(t)) for t in types}
    return sum(min(k, docs[t]) - sum(1 for g in groups if any(mentions[d].get(t) for d in g)) for t in types)


def _random_corpus(rng, n, n_types):
    return {f"d{i}": {f"t{t}": rng.randint(1, 4) for t in range(n_types) if rng.random() < 0.15 + 0.5 * t / n_types}
            for i in range(n)}


def test_cross_validation_folds_partition_the_documents_deterministically():
    from bertlab.datasets.splits import cross_validation_folds, cross_validation_split
    import random
    mentions = _random_corpus(random.Random(0), 23, 4)
    folds = cross_validation_folds(mentions, 5, seed=0)
    assert sorted(d for f in folds for d in f) == sorted(mentions)  # coverage, each document once
    assert [len(f) for f in folds] == [5, 5, 5, 4, 4]
    assert folds == cross_validation_folds(dict(reversed(list(mentions.items()))), 5, seed=0)  # order-free
    assert cross_validation_folds(mentions, 5, seed=1) != folds
    tested = []
    for k in range(5):
        split = cross_validation_split(mentions, 5, k, seed=0)
        assert split["test"] == folds[k]
        assert sorted(split["train"] + split["dev"] + split["test"]) == sorted(mentions)
        assert not set(split["train"]) & set(split["dev"]) and len(split["dev"]) == 2  # round(0.1 × 18)
        assert split == cross_validation_split(mentions, 5, k, seed=0)
        tested += split["test"]
    assert sorted(tested) == sorted(mentions)  # every document is tested exactly once


def test_cross_validation_folds_spread_types_like_a_brute_force():
    """On small random corpora the greedy's spread (types missing from folds they could be in) is
    compared with the best over every balanced assignment: equal in most cases, never 3 worse, and
    always perfect for the rarest type."""
    import itertools
    import random
    from bertlab.datasets.splits import cross_validation_folds

    def assignments(ids, sizes):
        if not sizes:
            yield []
            return
        for chosen in itertools.combinations(ids, sizes[0]):
            for rest in assignments([i for i in ids if i not in chosen], sizes[1:]):
                yield [list(chosen)] + rest

    rng = random.Random(0)
    optimal = cases = 0
    for case in range(60):
        n = rng.randint(4, 8)
        k = rng.choice([2, 3])
        mentions = _random_corpus(rng, n, rng.randint(2, 5))
        groups = cross_validation_folds(mentions, k, seed=case)
        sizes = [len(g) for g in groups]
        best = min(_missing_folds(mentions, a, k) for a in assignments(sorted(mentions), sizes))
        mine = _missing_folds(mentions, groups, k)
        assert mine - best <= 2, (case, mentions)
        optimal += mine == best
        cases += 1
        total = {t: sum(c.get(t, 0) for c in mentions.values()) for c in mentions.values() for t in c}
        if total:
            rarest = min(total, key=lambda t: (total[t], t))
            assert _missing_folds({d: {rarest: c.get(rarest, 0)} for d, c in mentions.items()}, groups, k) == 0
    assert optimal >= 0.85 * cases


def test_maccrobat_folds_put_every_type_in_every_fold_it_can_be_in():
    from bertlab.datasets.splits import cross_validation_folds, cross_validation_split, document_mentions
    documents = [d for split in ("train", "dev", "test") for d in load("maccrobat", split).documents]
    mentions = document_mentions(documents)
    for k in (3, 5, 10):
        assert _missing_folds(mentions, cross_validation_folds(documents, k, seed=0), k) == 0
    sizes = {k: {s: len(v) for s, v in cross_validation_split(documents, k, 0).items()} for k in (3, 5, 10)}
    assert sizes == {3: {"train": 120, "dev": 13, "test": 67}, 5: {"train": 144, "dev": 16, "test": 40},
                     10: {"train": 162, "dev": 18, "test": 20}}


@pytest.mark.parametrize("documents, folds, fold, message", [
    (5, 1, 0, "folds must be an integer >= 2"), (5, 6, 0, "folds = 6 but there are only 5 documents"),
    (2, 2, 0, "folds = 2 leaves 1 document(s) outside the test fold"), (5, 3, 3, "fold must be an integer in 0..2")])
def test_cross_validation_split_refuses_impossible_folds(documents, folds, fold, message):
    from bertlab.datasets.splits import cross_validation_split
    with pytest.raises(ValueError, match=re.escape(message)):
        cross_validation_split({f"d{i}": {"A": 1} for i in range(documents)}, folds, fold)


# ---------------------------------------------------------------------------- own data (#41 item 8)

def write_brat(folder, documents):
    """``documents``: ``{doc_id: (text, [(type, start, end), ...])}`` as brat files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for doc_id, (text, mentions) in documents.items():
        (folder / f"{doc_id}.txt").write_text(text, encoding="utf-8")
        (folder / f"{doc_id}.ann").write_text("".join(f"T{k}\t{t} {a} {b}\t{text[a:b]}\n"
                                                      for k, (t, a, b) in enumerate(mentions, 1)), encoding="utf-8")
    return folder


TWO_NOTES = {
    "n1": ("Fever and chest pain .\nAspirin given .\n", [("Sign", 0, 5), ("Sign", 10, 20), ("Drug", 23, 30)]),
    "n2": ("No fever today .\n", [("Sign", 3, 8)]),
}


def test_data_stats_of_a_brat_folder_as_counted_by_hand(tmp_path, capsys):
    """`bertlab data stats DIR` on one's own brat folder: the numbers counted by hand, in the bundled
    corpora's layout; the same documents as a CoNLL file give the same numbers."""
    folder = write_brat(tmp_path / "notes", TWO_NOTES)
    assert data_main(["stats", str(folder), "--json"]) == 0
    [stats] = json.loads(capsys.readouterr().out)
    assert {k: stats[k] for k in ("name", "split", "documents", "sentences", "tokens", "mentions",
                                  "total_mentions", "imbalance_ratio", "tag_counts")} == {
        "name": "notes", "split": "all", "documents": 2, "sentences": 3, "tokens": 5 + 3 + 4,
        "mentions": {"Sign": 3, "Drug": 1}, "total_mentions": 4, "imbalance_ratio": 3.0,
        "tag_counts": {"O": 7, "B-Sign": 3, "B-Drug": 1, "I-Sign": 1}}
    assert stats["share"] == {"Sign": 0.75, "Drug": 0.25} and stats["o_share"] == 7 / 12
    assert stats["annotated"] == {"Sign": 3, "Drug": 1} and stats["dropped"] == {}
    write_conll(read_brat(folder), tmp_path / "notes.tsv")
    assert data_main(["stats", str(tmp_path / "notes.tsv"), "--json"]) == 0
    [conll] = json.loads(capsys.readouterr().out)
    assert conll == {k: v for k, v in stats.items() if k not in ("annotated", "dropped")}
    assert data_main(["stats", str(folder)]) == 0
    table = capsys.readouterr().out
    assert "| all | 2 | 3 | 12 | 4 | 2 | 3.0x | 58.3% |" in table and "| Sign | 3 (75.00%) |" in table


def test_data_stats_of_a_brat_folder_equal_the_bundled_corpus_on_the_same_documents(tmp_path, capsys):
    """Three MACCROBAT test documents copied into a folder of one's own: `bertlab data stats DIR`
    counts what the bundled code path (`load("maccrobat", "test")`, which reads them with `read_brat`)
    counts on them, dropped and changed mentions included, with and without a policy."""
    import shutil
    ids = read_split(corpus_dir("maccrobat") / "split.json")["test"][:3]
    folder = tmp_path / "mine"
    folder.mkdir()
    for doc in ids:
        for ext in (".txt", ".ann"):
            shutil.copy(corpus_dir("maccrobat") / "brat" / f"{doc}{ext}", folder)
    for policy in ([], ["--overlap", "shortest"]):
        assert data_main(["stats", str(folder), "--json", *policy]) == 0
        [mine] = json.loads(capsys.readouterr().out)
        options = {"overlap": "shortest"} if policy else {}
        # what load("maccrobat", "test") reads for these three (its notes count all twenty documents)
        bundled = json.loads(json.dumps(corpus_stats(read_brat(corpus_dir("maccrobat") / "brat", ids, **options))))
        assert [s.tags for s in load("maccrobat", "test", **options).subset(3).sentences] == \
            [s.tags for s in read_brat(folder, **options).sentences]
        assert mine["documents"] == 3 and mine["total_mentions"] > 50
        assert {k: v for k, v in mine.items() if k not in ("name", "split")} == \
            {k: v for k, v in bundled.items() if k not in ("name", "split")}


@pytest.mark.parametrize("argv, message", [
    (["stats", "{tmp}/nope"], "nope: no such file or folder, nor a bundled corpus"),
    (["stats", "{tmp}/notes", "--split", "dev"], "--split applies to bundled corpora"),
    (["stats", "{tmp}/notes", "--scheme", "BILOU"], "--scheme applies to CoNLL files"),
    (["stats", "maccrobat", "--scheme", "BILOU"], "--scheme applies to CoNLL files; maccrobat is a bundled corpus"),
])
def test_data_stats_usage_errors(tmp_path, capsys, argv, message):
    write_brat(tmp_path / "notes", TWO_NOTES)
    with pytest.raises(SystemExit) as e:
        data_main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_own_data_errors_name_the_file_and_line_or_annotation(tmp_path, capsys):
    """A bad brat folder is one line naming the .ann file, its line and the annotation id (or the
    missing file), exit status 2; a folder of split folders says which to pass."""
    from bertlab.datasets import read_corpus
    notes = write_brat(tmp_path / "corpus" / "train", TWO_NOTES)
    with pytest.raises(DataError, match=r"corpus: no \.txt files in it, but its subfolder\(s\) train hold brat"):
        read_corpus(tmp_path / "corpus")
    (notes / "n2.ann").write_text("T1\tSign 3 8\tfever\nT2\tSign 3 99\tfever\n", encoding="utf-8")
    assert data_main(["stats", str(notes)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bertlab data: {notes / 'n2.ann'}:2: T2: offsets 3 99 outside the text") and \
        err.count("\n") == 1
    (notes / "n2.ann").unlink()
    assert data_main(["stats", str(notes)]) == 2
    assert capsys.readouterr().err == (f"bertlab data: {notes / 'n2.ann'}: missing annotation file for "
                                       f"{notes / 'n2.txt'}; expected <id>.ann next to <id>.txt\n")
    with pytest.raises(DataError, match="is a brat folder; scheme applies to CoNLL files"):
        read_corpus(tmp_path / "corpus" / "train", scheme="BILOU")


@pytest.mark.parametrize("name, split", [("maccrobat", "train"), ("ncbi_disease", "dev")])
def test_a_bundled_split_is_parsed_once_and_each_load_gets_its_own_copy(name, split):
    """``load`` parses a bundled split once per process: a second load equals a fresh parse of the
    files, and editing the corpus one call returned leaves the next call's untouched."""
    from bertlab.datasets import bundled

    first = bundled.load(name, split)
    fresh = bundled._parse(name, split, bundled.corpus_dir(name), {})
    assert first == fresh and bundled.load(name, split) == fresh
    first.documents[0].sentences[0].tags[0] = "B-Edited"
    first.documents.pop()
    again = bundled.load(name, split)
    assert again == fresh and again is not first
