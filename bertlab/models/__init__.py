"""Encoders (BERT, DistilBERT) and the token-classification head."""
from bertlab.models.bert import BERT_PRESETS, BertConfig, BertModel
from bertlab.models.distilbert import DISTILBERT_PRESETS, DistilBertConfig, DistilBertModel
from bertlab.models.crf import CRF
from bertlab.models.heads import TokenClassifier

__all__ = ["CRF", "BERT_PRESETS", "BertConfig", "BertModel", "DISTILBERT_PRESETS", "DistilBertConfig",
           "DistilBertModel", "TokenClassifier"]
