"""Classic NER baselines beside the BERT models, on the same data, splits and metrics.

* ``HMMTagger`` (NumPy): supervised HMM, add-k smoothing, suffix/shape unknown-word classes,
  log-space Viterbi.                                              ``.fit(tokens, tags).predict(tokens)``
* ``FeatureCRFTagger``: hand-crafted sparse features + linear-chain CRF, L-BFGS. Same fit/predict.
* ``bertlab.baselines.direct.fit_direct``: a study's HMM / feature-CRF run (fit, Viterbi-decode
  dev and test, the run's metrics.json), through the taggers' shared interface ``DirectTagger``.
* ``BiLSTMTagger`` (``head="softmax"|"crf"``): a ``TokenClassifier`` over a BiLSTM encoder, fed by
  ``WordTokenizer`` windows; trained by ``bertlab.train`` like any BERT model.

docs/baselines.md has the equations and where each one fails.
"""
from bertlab.baselines.bilstm import BiLSTMConfig, BiLSTMEncoder, BiLSTMTagger
from bertlab.baselines.feature_crf import FeatureCRFTagger
from bertlab.baselines.hmm import HMMTagger
from bertlab.baselines.vocab import WordTokenizer

__all__ = ["BiLSTMConfig", "BiLSTMEncoder", "BiLSTMTagger", "FeatureCRFTagger", "HMMTagger", "WordTokenizer"]
