"""Corpora, readers, tag schemes, splits and statistics: the first step of the pipeline.

    from bertlab.datasets import load, entity_types, label_list, read_corpus
    train = load("maccrobat", "train")            # Corpus -> Document -> Sentence (IOB2 tags)
    labels = label_list(entity_types("maccrobat"))  # ["O", "B-Activity", "I-Activity", ...]
    mine = read_corpus("my_notes/")               # one's own data: a brat folder or a CoNLL file
"""
from bertlab.datasets.brat import read_brat, read_brat_document, word_tokenize
from bertlab.datasets.bundled import corpus_dir, entity_types, list_corpora, load
from bertlab.datasets.conll import read_conll, write_conll
from bertlab.datasets.corpus import Corpus, DataError, Document, Sentence, label_list
from bertlab.datasets.nbme import read_nbme
from bertlab.datasets.prepare import read_corpus
from bertlab.datasets.splits import (cross_validation_folds, cross_validation_split, make_split, read_split,
                                     write_split)
from bertlab.datasets.stats import corpus_stats

__all__ = [
    "Corpus", "DataError", "Document", "Sentence", "corpus_dir", "corpus_stats", "cross_validation_folds",
    "cross_validation_split", "entity_types",
    "label_list", "list_corpora", "load", "make_split", "read_brat", "read_brat_document", "read_conll",
    "read_corpus", "read_nbme", "read_split", "word_tokenize", "write_conll", "write_split",
]
