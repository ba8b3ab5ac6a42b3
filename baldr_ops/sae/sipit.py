"""SipIt: exact prompt recovery from the hidden states of one layer (Nikolaou et al., arXiv 2510.15511,
Algorithm 1), with batched verification and three candidate policies.

Given the residual stream at the output of decoder layer ``l`` for every position of an unknown
prompt, the prompt is rebuilt one token at a time. At position ``t`` the recovered prefix ``π`` is
known; a *policy* proposes unvisited tokens ``v``; each is *verified* by computing ``h_t(π ⊕ v)`` at
layer ``l`` and accepted iff ``‖h_t(π ⊕ v) − ĥ_t‖₂ ≤ ε`` (default ``ε = 1e-4 · ‖ĥ_t‖``). Because the
state at ``t`` depends only on the prefix and ``v`` and the one-step map is almost surely
injective, the accepted token is the true one; any policy that eventually enumerates the
vocabulary recovers the prompt in at most ``T · |V|`` verifications (the paper's Thm 3.1).

Verification is what costs: one candidate is one token through ``l + 1`` blocks. Here it is batched
(many candidates per forward), the prefix is run once and its KV cache reused, and every forward
stops at layer ``l``. The policy decides how many candidates are needed:

* ``random``: a seeded permutation of the vocabulary (the paper's brute-force ablation).
* ``gradient``: the paper's gradient-guided policy (its Alg. 3), batched: several continuous
  embeddings are optimised (Adam) to reproduce the target state, and the unvisited tokens nearest
  to them are proposed, with optimisation continuing between batches. Two changes make it usable
  on a real model: the loss is whitened per dimension (otherwise the few massive-activation
  dimensions, 10-100x the rest, decide everything) and the starts are the random probes whose
  states came closest, not the mean embedding.
* ``linear`` (default): a local linear inverse fitted on the candidates already verified. A first
  batch of random probes is verified; ridge regressions between their (whitened) states and their
  embeddings, in both directions, predict which tokens would land near the target state; the best
  unvisited ones are verified next, the fit is redone with them, and so on. It needs no backward
  pass, and every state it learns from is one SipIt had to compute anyway.

All randomness comes from one seeded generator, so a search is reproducible.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel

from baldr_ops.errors import UserError
from baldr_ops.research.hooks import StopForward, edit_residual
from baldr_ops.research.models import LanguageModel

DEFAULT_EPS_REL = 1e-4
POLICIES = ("linear", "gradient", "random")
# Candidates per verification batch. The learning policies refit after every batch, so smaller
# batches waste fewer candidates past the point where the fit would have found the token (on
# SmolLM2, 64 probes + batches of 32 cost ~40 % fewer candidates than 128 + 64); random order
# learns nothing, so it takes big batches.
DEFAULT_BATCH = {"linear": 32, "gradient": 32, "random": 256}


# -- the states at one layer -------------------------------------------------------------------

@dataclass
class Prefix:
    """A recovered prefix and its KV cache at layers 0..l (None for the empty prefix)."""

    ids: list[int]
    cache: object | None


class LayerStates:
    """Computes residual-stream states at the output of one decoder layer, stopping the forward there."""

    def __init__(self, lm: LanguageModel, layer: int, batch_size: int = 256):
        self.lm = lm
        self.layer = lm.check_layer(layer)
        self.batch_size = int(batch_size)
        self.vocab_size = int(lm.input_embedding_matrix().shape[0])

    def _run(self, grad: bool = False, **inputs) -> torch.Tensor:
        grabbed: dict[str, torch.Tensor] = {}

        def grab(hidden, _call):
            grabbed["h"] = hidden
            raise StopForward

        with torch.set_grad_enabled(grad), edit_residual(self.lm, {self.layer: grab}):
            try:
                self.lm.model(**inputs)
            except StopForward:
                pass
        return grabbed["h"]

    def _cache_for(self, prefix: Prefix, batch: int):
        if prefix.cache is None:
            return None
        cache = copy.deepcopy(prefix.cache)  # a forward appends to its cache; the prefix's stays clean
        cache.batch_repeat_interleave(batch)
        return cache

    def of_sequence(self, ids: Sequence[int]) -> torch.Tensor:
        """The states of a whole token sequence, [T, d] (one forward, no cache): SipIt's targets."""
        input_ids = torch.tensor([list(ids)], dtype=torch.long, device=self.lm.device)
        return self._run(input_ids=input_ids, use_cache=False)[0].detach()

    def prefix(self, ids: Sequence[int]) -> Prefix:
        ids = [int(i) for i in ids]
        if not ids:
            return Prefix(ids, None)
        from transformers import DynamicCache

        cache = DynamicCache(config=self.lm.model.config)
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.lm.device)
        self._run(input_ids=input_ids, past_key_values=cache, use_cache=True)
        return Prefix(ids, cache)

    def of_candidates(self, prefix: Prefix, candidates: torch.Tensor) -> torch.Tensor:
        """The state at position len(prefix) for each candidate token, [B, d], in chunks of batch_size.

        Token ids go in (not embeddings), so the model embeds them exactly as it embedded the target.
        """
        out = []
        for chunk in candidates.to(self.lm.device).split(self.batch_size):
            cache = self._cache_for(prefix, len(chunk))
            h = self._run(input_ids=chunk.view(-1, 1), past_key_values=cache, use_cache=cache is not None)
            out.append(h[:, -1].detach())
        return torch.cat(out) if out else torch.empty(0, self.lm.d_model)

    def of_embeddings(self, prefix: Prefix, embeds: torch.Tensor) -> torch.Tensor:
        """The state at position len(prefix) for continuous input embeddings [B, d] (unscaled, like the
        rows of the embedding matrix), differentiable. The model's embedding scale (√d on Gemma) is
        applied here because ``inputs_embeds`` skips the embedding module that applies it."""
        cache = self._cache_for(prefix, embeds.shape[0])
        x = (embeds * self.lm.embed_scale).unsqueeze(1).to(self.lm.dtype)
        return self._run(grad=True, inputs_embeds=x, past_key_values=cache, use_cache=cache is not None)[:, -1]


def verify(states: torch.Tensor, target: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances, accepted): ‖h(v) − ĥ‖₂ for each candidate state and whether it is within ε."""
    distances = (states.float() - target.float()).norm(dim=-1)
    return distances, distances <= eps


# -- policies ----------------------------------------------------------------------------------

@dataclass
class SearchState:
    """What a policy may read at one position: the target, the prefix, what was verified so far."""

    target: torch.Tensor
    prefix: Prefix
    states: LayerStates
    embeddings: torch.Tensor  # [V, d], float32, unscaled
    generator: torch.Generator
    visited: torch.Tensor  # [V] bool
    seen_ids: list[torch.Tensor] = field(default_factory=list)
    seen_states: list[torch.Tensor] = field(default_factory=list)

    def observed(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat(self.seen_ids), torch.cat(self.seen_states).float()

    @property
    def n_observed(self) -> int:
        return sum(len(i) for i in self.seen_ids)

    def random_unvisited(self, n: int) -> torch.Tensor:
        order = torch.randperm(len(self.visited), generator=self.generator)
        return order[~self.visited[order]][:n]


class PositionSearch:
    """One policy's search at one position: propose batches, learn from their verified states."""

    def __init__(self, state: SearchState):
        self.s = state

    def propose(self, n: int) -> torch.Tensor:
        raise NotImplementedError

    def observe(self, ids: torch.Tensor, states: torch.Tensor) -> None:
        """Called with each verified batch that held no match (the base class only records it)."""


def _whitening(states: torch.Tensor) -> torch.Tensor:
    """Per-dimension scale of the observed states, floored so no dimension gets unbounded weight."""
    std = states.std(dim=0) if len(states) > 1 else states.abs().mean(dim=0)
    return std + 1e-3 * std.mean() + 1e-12


def _round_robin(rankings: Sequence[torch.Tensor], n: int) -> torch.Tensor:
    """The first n distinct ids taking one from each ranking in turn (cost ≤ k × the best ranking's)."""
    out: list[int] = []
    seen: set[int] = set()
    for i in range(max(len(r) for r in rankings)):
        for ranking in rankings:
            if i < len(ranking):
                v = int(ranking[i])
                if v not in seen:
                    seen.add(v)
                    out.append(v)
                    if len(out) == n:
                        return torch.tensor(out, dtype=torch.long)
    return torch.tensor(out, dtype=torch.long)


class RandomSearch(PositionSearch):
    def __init__(self, state: SearchState):
        super().__init__(state)
        self.order = torch.randperm(len(state.visited), generator=state.generator)
        self.cursor = 0

    def propose(self, n: int) -> torch.Tensor:
        out = []
        while len(out) < n and self.cursor < len(self.order):
            v = self.order[self.cursor]
            self.cursor += 1
            if not self.s.visited[v]:
                out.append(int(v))
        return torch.tensor(out, dtype=torch.long)


class LinearInverseSearch(PositionSearch):
    """Ridge fits between observed states and embeddings rank the unvisited vocabulary.

    Three rankings, merged round-robin: (1) decode the target into an embedding with a ridge map
    states → embeddings and rank rows by centred cosine to it, (2) the same by L2 distance, (3) an
    encoder map embeddings → states, ranking rows by the whitened distance of their predicted state
    to the target. Each works where another fails (the decoder on the first position, the encoder
    after it), so the merge costs at most three times the best of them.
    """

    def __init__(self, state: SearchState, probes: int = 64, decoder_ridge: float = 0.01,
                 encoder_ridge: float = 0.1):
        super().__init__(state)
        self.probes = probes
        self.decoder_ridge = decoder_ridge
        self.encoder_ridge = encoder_ridge

    def rankings(self, n: int) -> list[torch.Tensor]:
        ids, h = self.s.observed()
        E = self.s.embeddings
        e = E[ids]
        mu_h, mu_e = h.mean(0), e.mean(0)
        sigma = _whitening(h)
        x = (h - mu_h) / sigma
        y = e - mu_e
        xt = (self.s.target.float() - mu_h) / sigma
        rows, d = x.shape
        eye = torch.eye(d)
        decoder = torch.linalg.solve(x.T @ x + self.decoder_ridge * rows * eye, x.T @ y)
        e_hat = xt @ decoder  # centred
        encoder = torch.linalg.solve(y.T @ y + self.encoder_ridge * rows * eye, y.T @ x)
        centred = E - mu_e
        scores = (
            -torch.nn.functional.cosine_similarity(centred, e_hat.unsqueeze(0), dim=1),
            ((centred - e_hat) ** 2).sum(1),
            ((centred @ encoder - xt) ** 2).sum(1),
        )
        k = min(n, int((~self.s.visited).sum()))
        return [s.masked_fill(self.s.visited, float("inf")).topk(k, largest=False).indices for s in scores]

    def propose(self, n: int) -> torch.Tensor:
        if self.s.n_observed < self.probes:
            return self.s.random_unvisited(min(n, self.probes - self.s.n_observed))
        return _round_robin(self.rankings(n), n)


class GradientSearch(PositionSearch):
    """Optimise continuous embeddings to reproduce the target state; propose the tokens nearest them."""

    def __init__(self, state: SearchState, probes: int = 64, tracks: int = 8, steps: int = 20,
                 lr: float = 0.05):
        super().__init__(state)
        self.probes = probes
        self.n_tracks = tracks
        self.steps = steps
        self.lr = lr
        self.tracks: torch.Tensor | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.sigma: torch.Tensor | None = None

    def _start(self) -> None:
        ids, h = self.s.observed()
        self.sigma = _whitening(h)
        closest = (((h - self.s.target.float()) / self.sigma) ** 2).sum(1).argsort()[: self.n_tracks]
        self.tracks = self.s.embeddings[ids[closest]].clone().requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.tracks], lr=self.lr)

    def _optimise(self) -> torch.Tensor:
        target = self.s.target.float()
        loss = None
        for _ in range(self.steps):
            h = self.s.states.of_embeddings(self.s.prefix, self.tracks).float()
            loss = (((h - target) / self.sigma) ** 2).sum(1)
            self.optimizer.zero_grad()
            loss.sum().backward()
            self.optimizer.step()
        return loss.detach() if loss is not None else torch.zeros(len(self.tracks))

    def propose(self, n: int) -> torch.Tensor:
        if self.s.n_observed < self.probes:
            return self.s.random_unvisited(min(n, self.probes - self.s.n_observed))
        if self.tracks is None:
            self._start()
        loss = self._optimise()
        tracks = self.tracks.detach()[loss.argsort()]  # best-matching track first
        k = min(n, int((~self.s.visited).sum()))
        dist = torch.cdist(tracks, self.s.embeddings).masked_fill(self.s.visited, float("inf"))
        return _round_robin(list(dist.topk(k, dim=1, largest=False).indices), n)


def make_policy(name: str, **options) -> Callable[[SearchState], PositionSearch]:
    if name == "random":
        return RandomSearch
    if name == "linear":
        return lambda state: LinearInverseSearch(state, **options)
    if name == "gradient":
        return lambda state: GradientSearch(state, **options)
    raise UserError(f"unknown SipIt policy {name!r}; choose one of {', '.join(POLICIES)}")


# -- the search --------------------------------------------------------------------------------

class PositionRecord(BaseModel):
    """The search at one position."""

    position: int
    token: int | None  # the accepted token (None: not found within the budget)
    true_token: int | None = None  # when the prompt is known (profiling, tests)
    correct: bool | None = None  # accepted == true (None when either is unknown)
    candidates_verified: int  # in proposal order, up to and including the accepted one
    candidates_computed: int  # states actually computed (whole batches)
    within_eps: int  # candidates of the accepting batch within ε (1 unless two tokens collide)
    distance: float | None  # ‖h(accepted) − ĥ‖ (relative to ‖ĥ‖ in distance_rel)
    distance_rel: float | None
    eps: float
    seconds: float
    censored: bool  # the budget ran out before a candidate was accepted


class InversionResult(BaseModel):
    layer: int
    policy: str
    seed: int
    eps_rel: float
    vocab_size: int
    budget: int | None
    positions: list[PositionRecord]

    @property
    def tokens(self) -> list[int | None]:
        return [p.token for p in self.positions]

    @property
    def recovered(self) -> bool:
        return all(p.token is not None for p in self.positions)

    @property
    def mean_candidates(self) -> float:
        return sum(p.candidates_verified for p in self.positions) / max(len(self.positions), 1)

    @property
    def fraction_explored(self) -> float:
        return self.mean_candidates / self.vocab_size


def sipit_invert(lm: LanguageModel, layer: int, targets: torch.Tensor, *, policy: str = "linear",
                 eps_rel: float = DEFAULT_EPS_REL, budget: int | None = None, batch_size: int | None = None,
                 seed: int = 0, true_ids: Sequence[int] | None = None, policy_options: dict | None = None,
                 progress: Callable[[str], None] = lambda _: None) -> InversionResult:
    """Recover the prompt whose states at ``layer`` are ``targets`` [T, d].

    ``budget`` caps the candidates verified per position. With ``true_ids`` (the prompt is known, as
    when profiling) each record says whether the accepted token is the true one, and a position whose
    budget ran out is recorded as censored and the search continues with the true token; without it,
    the search stops at the first position it cannot recover.
    """
    make = make_policy(policy, **(policy_options or {}))
    batch_size = max(int(batch_size or DEFAULT_BATCH[policy]), 1)
    states = LayerStates(lm, layer, batch_size=max(batch_size, 256))
    embeddings = lm.input_embedding_matrix().detach().float()
    vocab = states.vocab_size
    cap = vocab if budget is None else min(int(budget), vocab)
    generator = torch.Generator().manual_seed(int(seed))
    targets = targets.detach()
    records: list[PositionRecord] = []
    prefix_ids: list[int] = []
    for t in range(targets.shape[0]):
        started = time.perf_counter()
        target = targets[t]
        eps = float(eps_rel * target.float().norm())
        state = SearchState(target=target, prefix=states.prefix(prefix_ids), states=states,
                            embeddings=embeddings, generator=generator,
                            visited=torch.zeros(vocab, dtype=torch.bool))
        search = make(state)
        verified = computed = 0
        accepted = within = None
        distance = None
        while verified < cap:
            batch = search.propose(min(batch_size, cap - verified))
            if len(batch) == 0:
                break
            batch = batch[~state.visited[batch]]  # a policy may not propose a visited token twice
            if len(batch) == 0:
                raise RuntimeError(f"policy {policy} proposed only visited tokens")
            h = states.of_candidates(state.prefix, batch)
            computed += len(batch)
            dist, ok = verify(h, target, eps)
            state.visited[batch] = True
            if bool(ok.any()):
                first = int(ok.nonzero()[0])
                accepted, within, distance = int(batch[first]), int(ok.sum()), float(dist[first])
                verified += first + 1
                break
            verified += len(batch)
            state.seen_ids.append(batch)
            state.seen_states.append(h)
            search.observe(batch, h)
        true_token = int(true_ids[t]) if true_ids is not None else None
        norm = float(target.float().norm())
        records.append(PositionRecord(
            position=t, token=accepted, true_token=true_token,
            correct=None if accepted is None or true_token is None else accepted == true_token,
            candidates_verified=verified, candidates_computed=computed, within_eps=within or 0,
            distance=distance, distance_rel=None if distance is None else distance / max(norm, 1e-30),
            eps=eps, seconds=round(time.perf_counter() - started, 3), censored=accepted is None))
        progress(f"layer {states.layer} position {t}: "
                 + (f"token {accepted} after {verified} candidates" if accepted is not None
                    else f"not found in {verified} candidates"))
        if accepted is not None:
            prefix_ids.append(accepted)
        elif true_token is not None:
            prefix_ids.append(true_token)
        else:
            break
    return InversionResult(layer=states.layer, policy=policy, seed=int(seed), eps_rel=float(eps_rel),
                           vocab_size=vocab, budget=budget, positions=records)


def invert_prompt(lm: LanguageModel, layer: int, ids: Sequence[int], **options) -> InversionResult:
    """Compute the states of a known prompt at ``layer`` and run SipIt on them (tests, profiling)."""
    targets = LayerStates(lm, layer).of_sequence(ids)
    return sipit_invert(lm, layer, targets, true_ids=list(ids), **options)
