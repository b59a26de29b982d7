"""A feature-based linear-chain CRF tagger (the CRFsuite recipe, in PyTorch).

Emission scores are linear in sparse binary features (:mod:`bertlab.baselines.features`):

    e[t, y] = Σ_{f ∈ bag(t)} W[f, y]                      (an nn.EmbeddingBag, mode="sum")

and the CRF layer (:class:`bertlab.models.crf.CRF`) adds transitions. Training minimises the
L2-regularised negative log-likelihood over the N training sentences,

    L(θ) = ( Σ_n [log Z(x_n) - s(y_n | x_n)]  +  c2 ||θ||² ) / N

(divided by N only to keep numbers near 1; the minimiser is CRFsuite's), a convex problem, by
full-batch L-BFGS with a strong-Wolfe line search (default) or by mini-batch Adam.

    tagger = FeatureCRFTagger(c2=1.0, max_iter=100).fit(train_tokens, train_tags)
    pred = tagger.predict(test_tokens)          # lists of IOB2 strings
"""
from __future__ import annotations

import random
import time

import torch
from torch import nn

from bertlab.baselines.features import FeatureIndex
from bertlab.baselines.hmm import iob2_label_order
from bertlab.models.crf import CRF


class FeatureCRF(nn.Module):
    """Sparse-feature emissions + CRF: ``weights [F, C]`` (EmbeddingBag) and ``crf``."""

    def __init__(self, num_features: int, labels: list[str], constraints: bool = True):
        super().__init__()
        self.labels = list(labels)
        self.weights = nn.EmbeddingBag(num_features, len(labels), mode="sum")
        nn.init.zeros_(self.weights.weight)  # the objective is convex: start at the uniform model
        self.crf = CRF(len(labels), self.labels, constraints=constraints)

    def emissions(self, batch: dict) -> torch.Tensor:
        """``[B, T, C]`` emission scores of an encoded batch (see :func:`encode_batch`)."""
        per_token = self.weights(batch["feature_ids"], batch["offsets"])      # [n_tokens, C]
        B, T = batch["mask"].shape
        out = per_token.new_zeros(B, T, per_token.shape[-1])
        out[batch["mask"]] = per_token  # tokens are concatenated row by row, as mask is ordered
        return out


def encode_batch(index: FeatureIndex, sentences_tokens: list[list[str]], tag_ids: list[list[int]] | None = None) -> dict:
    """Sentences -> ``{"feature_ids" [n_feats], "offsets" [n_tokens], "mask" [B, T], "tags" [B, T]}``."""
    flat, offsets = [], []
    for tokens in sentences_tokens:
        for bag in index.transform(tokens):
            offsets.append(len(flat))
            flat.extend(bag)
    lengths = torch.tensor([len(t) for t in sentences_tokens])
    T = int(lengths.max()) if len(lengths) else 0
    mask = torch.arange(T)[None] < lengths[:, None]
    batch = {"feature_ids": torch.tensor(flat, dtype=torch.long),
             "offsets": torch.tensor(offsets, dtype=torch.long), "mask": mask}
    if tag_ids is not None:
        tags = torch.zeros(len(sentences_tokens), T, dtype=torch.long)
        for b, ids in enumerate(tag_ids):
            tags[b, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        batch["tags"] = tags
    return batch


class FeatureCRFTagger:
    """``FeatureCRFTagger(...).fit(tokens, tags).predict(tokens)`` (sklearn style).

    ``c2``: L2 strength. ``optimizer``: ``"lbfgs"`` (full batch, ``max_iter`` iterations) or
    ``"adam"`` (``epochs`` over mini-batches of ``batch_size`` sentences at ``lr``).
    ``min_count``: drop features seen fewer times in training. ``window``: neighbour words ±window.
    After ``fit``: ``fit_seconds`` and ``losses`` (objective per L-BFGS evaluation / Adam epoch).
    """

    def __init__(self, c2: float = 1.0, optimizer: str = "lbfgs", max_iter: int = 100, epochs: int = 10,
                 lr: float = 0.05, batch_size: int = 64, min_count: int = 1, window: int = 2,
                 constraints: bool = True, labels: list[str] | None = None, seed: int = 0):
        if optimizer not in ("lbfgs", "adam"):
            raise ValueError(f"FeatureCRFTagger: optimizer must be 'lbfgs' or 'adam', got {optimizer!r}")
        self.c2, self.optimizer, self.max_iter, self.epochs = c2, optimizer, max_iter, epochs
        self.lr, self.batch_size, self.min_count, self.window = lr, batch_size, min_count, window
        self.constraints, self.seed = constraints, seed
        self.labels = list(labels) if labels is not None else None

    def _objective(self, batch: dict, n_total: int) -> torch.Tensor:
        em = self.model.emissions(batch)
        nll = self.model.crf.nll(em, batch["tags"], batch["mask"], reduction="sum")
        l2 = sum((p ** 2).sum() for p in self.model.parameters()) * (len(batch["mask"]) / n_total)
        return (nll + self.c2 * l2) / n_total

    def fit(self, sentences_tokens: list[list[str]], sentences_tags: list[list[str]]) -> "FeatureCRFTagger":
        """Build the feature index on the training sentences and fit the weights."""
        torch.manual_seed(self.seed)
        start_time = time.perf_counter()
        if self.labels is None:
            self.labels = iob2_label_order(sentences_tags)
        tag_id = {t: i for i, t in enumerate(self.labels)}
        tag_ids = [[tag_id[t] for t in tags] for tags in sentences_tags]
        self.index = FeatureIndex(self.min_count, self.window).fit(sentences_tokens)
        self.model = FeatureCRF(len(self.index), self.labels, self.constraints)
        self.model.crf.float()
        N = len(sentences_tokens)
        self.losses = []
        if self.optimizer == "lbfgs":
            # full batch, cut into chunks of similar length: the CRF loops over time steps, so
            # padding every sentence to the longest (123 vs a mean of 25 on NCBI) costs 4x
            by_length = sorted(range(N), key=lambda j: len(sentences_tokens[j]))
            chunks = [by_length[i:i + 512] for i in range(0, N, 512)]
            batches = [encode_batch(self.index, [sentences_tokens[j] for j in c], [tag_ids[j] for j in c])
                       for c in chunks]
            opt = torch.optim.LBFGS(self.model.parameters(), lr=1.0, max_iter=self.max_iter,
                                    history_size=10, line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                loss = sum(self._objective(batch, N) for batch in batches)
                loss.backward()
                self.losses.append(loss.item())
                return loss

            opt.step(closure)
        else:
            opt = torch.optim.Adam(self.model.parameters(), lr=self.lr)
            rng = random.Random(self.seed)
            order = list(range(N))
            for _ in range(self.epochs):
                rng.shuffle(order)
                total = 0.0
                for i in range(0, N, self.batch_size):
                    chunk = order[i:i + self.batch_size]
                    batch = encode_batch(self.index, [sentences_tokens[j] for j in chunk], [tag_ids[j] for j in chunk])
                    opt.zero_grad()
                    loss = self._objective(batch, N)
                    loss.backward()
                    opt.step()
                    total += loss.item()
                self.losses.append(total)
        self.fit_seconds = time.perf_counter() - start_time
        return self

    def num_parameters(self) -> int:
        """The number of fitted weights: feature weights, transitions and start/end scores."""
        return sum(p.numel() for p in self.model.parameters())

    @torch.no_grad()
    def predict(self, sentences_tokens: list[list[str]], batch_size: int = 256) -> list[list[str]]:
        """Viterbi tags (IOB2 strings) for each sentence; empty sentences give ``[]``."""
        out = []
        for i in range(0, len(sentences_tokens), batch_size):
            chunk = sentences_tokens[i:i + batch_size]
            if not any(chunk):
                out.extend([] for _ in chunk)
                continue
            batch = encode_batch(self.index, chunk)
            paths = self.model.crf.decode(self.model.emissions(batch), batch["mask"])
            out.extend([self.labels[j] for j in p] for p in paths)
        return out
