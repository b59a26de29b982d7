"""A linear-chain conditional random field, read top to bottom.

For emissions ``e[t, y]`` (any network's logits) and a tag sequence ``y_1..y_n`` the CRF scores

    s(y) = start[y_1] + Σ_t e[t, y_t] + Σ_{t>1} A[y_{t-1}, y_t] + end[y_n]
    p(y | x) = exp s(y) / Z,        Z = Σ_{y'} exp s(y')          (all C^n sequences)

``log Z`` comes from the forward algorithm in log space (O(n C^2) instead of O(C^n)):

    α_1[j] = start[j] + e[1, j]
    α_t[j] = logsumexp_i (α_{t-1}[i] + A[i, j]) + e[t, j]
    log Z  = logsumexp_j (α_n[j] + end[j])

and the best sequence from Viterbi: the same recursion with ``max`` in place of ``logsumexp``,
keeping back-pointers. Training minimises ``nll = log Z - s(y_gold)``.

IOB2 constraints (``label_list`` given, ``constraints=True``): ``I-X`` may only follow ``B-X`` or
``I-X``, and no sequence may start with ``I-X``. Forbidden moves get the score ``FORBIDDEN``
(-1e4, finite so an odd gold sequence gives a large loss rather than ``inf``/NaN gradients),
added in training *and* decoding, so the model never spends probability mass on — and never
outputs — an invalid sequence.

Masks are ``[B, T]`` booleans, left-aligned (``True`` for the first ``n_b`` positions of row b).
``pack_masked`` turns a scattered mask (first subwords inside a BERT window) into that form.
"""
from __future__ import annotations

import torch
from torch import nn

FORBIDDEN = -1e4  # score of a forbidden transition: exp(-1e4) is exactly 0 even in float64


def iob2_allowed(labels: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Which IOB2 moves are legal: ``(allowed [C, C], start_allowed [C])`` booleans.

    ``allowed[i, j]`` says whether tag j may follow tag i: ``I-X`` only after ``B-X`` or ``I-X``
    (this forbids ``O -> I-X``, ``B-X -> I-Y`` and ``I-X -> I-Y`` for X != Y); every other move is
    legal. ``start_allowed[j]`` is False exactly for ``I-X``. Any tag may end a sequence.
    """
    C = len(labels)
    allowed = torch.ones(C, C, dtype=torch.bool)
    start_allowed = torch.ones(C, dtype=torch.bool)
    for j, to in enumerate(labels):
        if not to.startswith("I-"):
            continue
        start_allowed[j] = False
        entity_type = to[2:]
        for i, frm in enumerate(labels):
            allowed[i, j] = frm in (f"B-{entity_type}", f"I-{entity_type}")
    return allowed, start_allowed


def pack_masked(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the masked positions of each row to its front, keeping their order.

    ``x [B, T, ...]``, ``mask [B, T]`` -> ``(packed [B, L, ...], packed_mask [B, L])`` with
    ``L = max_b Σ_t mask[b, t]``; ``packed[b, :n_b]`` are ``x[b, mask[b]]`` in order, and what
    follows is filler that ``packed_mask`` marks False. Used to run the CRF over the first
    subword of each word only.
    """
    mask = mask.bool()
    # stable sort on "not masked" puts the masked positions first, in their original order
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    L = int(mask.sum(1).max()) if mask.numel() else 0
    order = order[:, :L]
    index = order.view(*order.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    packed = torch.gather(x, 1, index)
    packed_mask = torch.gather(mask, 1, order)
    return packed, packed_mask


class CRF(nn.Module):
    """Linear-chain CRF over ``num_tags`` tags: ``transitions [C, C]`` (from, to), ``start_transitions
    [C]``, ``end_transitions [C]``, all learned, initialised at 0 (a CRF that starts as softmax).

    ``label_list`` + ``constraints=True`` adds the fixed IOB2 masks (see :func:`iob2_allowed`).
    All computations run in at least float32 (bf16 emissions under autocast are upcast).
    """

    def __init__(self, num_tags: int, label_list: list[str] | None = None, constraints: bool = True):
        super().__init__()
        if label_list is not None and len(label_list) != num_tags:
            raise ValueError(f"CRF: num_tags={num_tags} but label_list has {len(label_list)} labels")
        self.num_tags = num_tags
        self.labels = list(label_list) if label_list is not None else None
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))
        self.start_transitions = nn.Parameter(torch.zeros(num_tags))
        self.end_transitions = nn.Parameter(torch.zeros(num_tags))
        if label_list is not None and constraints:
            allowed, start_allowed = iob2_allowed(label_list)
        else:
            allowed = torch.ones(num_tags, num_tags, dtype=torch.bool)
            start_allowed = torch.ones(num_tags, dtype=torch.bool)
        # buffers (not parameters): saved with the model, never trained
        self.register_buffer("allowed", allowed, persistent=False)
        self.register_buffer("start_allowed", start_allowed, persistent=False)

    # -- the (masked) parameters ------------------------------------------------------------

    def _potentials(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(transitions [C, C], start [C], end [C]) with forbidden moves set to ``FORBIDDEN``."""
        trans = self.transitions.to(dtype).masked_fill(~self.allowed, FORBIDDEN)
        start = self.start_transitions.to(dtype).masked_fill(~self.start_allowed, FORBIDDEN)
        return trans, start, self.end_transitions.to(dtype)

    @staticmethod
    def _check(emissions: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if emissions.dim() != 3:
            raise ValueError(f"CRF: emissions must be [B, T, C], got shape {tuple(emissions.shape)}")
        if mask is None:
            mask = torch.ones(emissions.shape[:2], dtype=torch.bool, device=emissions.device)
        mask = mask.bool()
        if mask.shape != emissions.shape[:2]:
            raise ValueError(f"CRF: mask shape {tuple(mask.shape)} != emissions [B, T] "
                             f"{tuple(emissions.shape[:2])}")
        # left-aligned: once a row's mask turns False it stays False (use pack_masked otherwise)
        if mask.shape[1] > 1 and bool((mask[:, 1:] & ~mask[:, :-1]).any()):
            raise ValueError("CRF: mask must be left-aligned (True then False in each row); "
                             "pack scattered positions with bertlab.models.crf.pack_masked")
        dtype = torch.promote_types(emissions.dtype, torch.float32)
        return emissions.to(dtype), mask

    # -- probabilities -----------------------------------------------------------------------

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor | None = None,
                      start: torch.Tensor | None = None) -> torch.Tensor:
        """``log Z [B]`` by the forward algorithm (see the module docstring); 0 for empty rows.

        ``start`` optionally overrides the start scores per row (``[B, C]``), see :meth:`nll`.
        """
        emissions, mask = self._check(emissions, mask)
        trans, start_default, end = self._potentials(emissions.dtype)
        start = start_default if start is None else start
        alpha = start + emissions[:, 0]                                      # [B, C]
        for t in range(1, emissions.shape[1]):
            # alpha[b, i] + A[i, j] + e[b, t, j], summed (log space) over the previous tag i
            step = torch.logsumexp(alpha[:, :, None] + trans[None], dim=1) + emissions[:, t]
            alpha = torch.where(mask[:, t, None], step, alpha)               # padding: carry over
        log_z = torch.logsumexp(alpha + end, dim=1)
        return torch.where(mask[:, 0], log_z, torch.zeros_like(log_z))

    def score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor | None = None,
              start: torch.Tensor | None = None) -> torch.Tensor:
        """``s(y) [B]`` of the given tag sequences ``tags [B, T]`` (ignored where mask is False)."""
        emissions, mask = self._check(emissions, mask)
        trans, start_default, end = self._potentials(emissions.dtype)
        tags = tags.masked_fill(~mask, 0).long()  # padding may hold -100; any valid index will do
        B, T = tags.shape
        rows = torch.arange(B, device=tags.device)
        first_start = (start_default[tags[:, 0]] if start is None else start[rows, tags[:, 0]])
        s = first_start + emissions[rows, 0, tags[:, 0]]
        if T > 1:
            m = mask[:, 1:].to(emissions.dtype)
            emit = emissions[:, 1:].gather(2, tags[:, 1:, None]).squeeze(2)   # [B, T-1]
            move = trans[tags[:, :-1], tags[:, 1:]]                           # [B, T-1]
            s = s + ((emit + move) * m).sum(1)
        lengths = mask.sum(1)
        last = tags[rows, (lengths - 1).clamp(min=0)]
        s = s + end[last]
        return torch.where(lengths > 0, s, torch.zeros_like(s))

    def nll(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor | None = None,
            reduction: str = "mean") -> torch.Tensor:
        """Negative log-likelihood ``log Z - s(y_gold)`` per sequence, then reduced.

        ``reduction``: ``"none"`` -> ``[B]``; ``"sum"``; ``"mean"`` (over sequences);
        ``"token_mean"`` (sum over sequences / number of real tokens: the scale of a per-token
        cross-entropy, so learning rates carry over from softmax heads).

        A row whose gold sequence *starts* with ``I-X`` is a fragment cut from inside an entity
        (a continuation window): for that row the start constraint is lifted, in both ``Z`` and
        ``s``, so the loss stays a proper likelihood instead of a +1e4 penalty.
        """
        emissions, mask = self._check(emissions, mask)
        start = None
        if not bool(self.start_allowed.all()):
            _, start_default, _ = self._potentials(emissions.dtype)
            first = tags[:, 0].masked_fill(~mask[:, 0], 0).long()
            fragment = ~self.start_allowed[first]                            # gold starts at I-X
            free_start = self.start_transitions.to(emissions.dtype)
            start = torch.where(fragment[:, None], free_start[None], start_default[None])
        per_row = self.log_partition(emissions, mask, start) - self.score(emissions, tags, mask, start)
        if reduction == "none":
            return per_row
        if reduction == "sum":
            return per_row.sum()
        if reduction == "mean":
            return per_row.mean()
        if reduction == "token_mean":
            return per_row.sum() / mask.sum().clamp(min=1)
        raise ValueError(f"CRF.nll: reduction must be 'none', 'sum', 'mean' or 'token_mean', got {reduction!r}")

    def forward(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor | None = None,
                reduction: str = "mean") -> torch.Tensor:
        """Same as :meth:`nll` (so ``torch.func.functional_call`` and hooks see the loss)."""
        return self.nll(emissions, tags, mask, reduction)

    # -- decoding ----------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, mask: torch.Tensor | None = None) -> list[list[int]]:
        """Viterbi: the highest-scoring tag sequence of each row, ``len == mask[b].sum()``.

            δ_1[j] = start[j] + e[1, j]
            δ_t[j] = max_i (δ_{t-1}[i] + A[i, j]) + e[t, j],   ψ_t[j] = argmax_i (...)
            y_n = argmax_j (δ_n[j] + end[j]),   y_{t-1} = ψ_t[y_t]
        """
        emissions, mask = self._check(emissions, mask)
        trans, start, end = self._potentials(emissions.dtype)
        B, T, C = emissions.shape
        delta = start + emissions[:, 0]
        backpointers = []
        for t in range(1, T):
            best, arg = (delta[:, :, None] + trans[None]).max(dim=1)          # over previous tag
            step = best + emissions[:, t]
            delta = torch.where(mask[:, t, None], step, delta)
            backpointers.append(arg)
        last = (delta + end).argmax(dim=1)
        lengths = mask.sum(1).tolist()
        backpointers = torch.stack(backpointers, 1).tolist() if backpointers else []
        last = last.tolist()
        paths = []
        for b in range(B):
            n = lengths[b]
            if n == 0:
                paths.append([])
                continue
            path = [last[b]]
            for t in range(n - 1, 0, -1):  # backpointers[b][t-1] maps tag at t to tag at t-1
                path.append(backpointers[b][t - 1][path[-1]])
            paths.append(path[::-1])
        return paths

    def extra_repr(self) -> str:
        return f"num_tags={self.num_tags}, constrained={not bool(self.allowed.all())}"
