"""Does the nudge shift the model's framing toward the stored domain, selectively, and at what cost?

The protocol of research criterion 17, on the built-in domains (`domains`: 4 domains x 4 memories,
32 queries: neutral, mildly and strongly related). The memories go through the real add path
(screens, signatures, approval) into a throw-away store; each condition then runs the real hooks.

Measure: the next-token probability mass on a domain's vocabulary, derived by log-odds from the
domain's held-out text (never from the memories), with memory minus without ("shift").

Claims are kept apart, because with a relevance-gated weight "shift proportional to relevance"
holds by construction:

* selectivity at fixed strength (gate "fixed": every memory of the domain weighted strength/4,
  relevance ignored): own-domain shift > mean other-domain shift, share of (query, domain) pairs,
  with a 95 % interval resampling whole queries; the target is held against its lower end;
* specificity: the same with norm-matched random directions; their own-domain shift's 95 % CI
  (bootstrap over queries) should include 0, and their mean should be a small fraction of the
  memories' own-domain shift at the same strength, whose interval should lie above 0;
* dose-response: mean own-domain shift over strength {0, 0.5, 1, 2, 4} at fixed strength, monotone;
* cost: KL(with || without) at the next token, perplexity of neutral text;
* retrieval: AUROC of relevance for same- vs other-domain (query, memory) pairs;
* proportionality: Spearman(relevance, own shift) with the gate on (pairs with nonzero weight only)
  and at fixed strength, reported separately.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from baldr_ops.memory import domains as builtin
from baldr_ops.memory.compare import kl, next_token_probs
from baldr_ops.memory.config import LayerSettings, default_layer
from baldr_ops.memory.derive import pooled
from baldr_ops.memory.identity import identity_of
from baldr_ops.memory.index import unit
from baldr_ops.memory.keys import ephemeral_key
from baldr_ops.memory.lexicon import lexicon
from baldr_ops.memory.recall import LayerMemory
from baldr_ops.memory.runtime import MemoryRuntime, memory_from_records
from baldr_ops.memory.store import MemoryStore
from baldr_ops.memory.writer import add_texts
from baldr_ops.research.stats import GroupedSums, group_draws, percentile_interval
from baldr_ops.schema import Document

DOSES = (0.0, 0.5, 1.0, 2.0, 4.0)
# The random control's mean own-domain shift must stay below this share of the memories' at the same
# strength: noise that merely straddles 0 with a wide interval does not pass.
RANDOM_FRACTION_MAX = 0.25


class EvalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layer: int | None = None
    # Fixed strength 2: the domain's mean value twice (about 0.45 of a token's residual norm on
    # SmolLM2 layer 13), the strongest nudge the default clip (0.5) does not cut.
    fixed_strength: float = 2.0
    gated: LayerSettings = Field(default_factory=lambda: LayerSettings(layer=0))
    random_seeds: int = 4
    bootstrap: int = 2000
    lexicon_size: int = 30
    seed: int = 0
    target_selectivity: float = 0.9


class Interval(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mean: float
    low: float
    high: float


class Selectivity(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pairs: int
    selective: int
    fraction: float
    own_mean: float
    other_mean: float
    # 95 % percentile interval of the fraction, resampling whole queries (None: not computed)
    low: float | None = None
    high: float | None = None


class DosePoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strength: float
    own_mean: float
    other_mean: float
    selectivity: float
    selectivity_low: float  # 95 % interval over queries
    selectivity_high: float
    kl_mean: float


class Correlation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rho: float | None
    p_value: float | None
    pairs: int


class Check(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    value: str
    target: str
    passed: bool | None  # None: reported, no target


class EvalReport(Document):
    model: str
    layer: int
    layer_source: str
    domains_sha256: str
    domains: list[str]
    memories: int
    queries: int
    vocabularies: dict[str, list[str]]
    fixed_strength: float
    gated_settings: LayerSettings
    fixed: Selectivity
    gated: Selectivity
    own_shift_fixed: Interval  # the memories' own-domain shift at the fixed strength, 95 % interval over queries
    random_control: Interval
    random_to_memory: float  # the random control's mean own-domain shift over the memories' (same strength)
    dose: list[DosePoint]
    dose_monotone: bool
    kl_fixed: float
    kl_gated: float
    perplexity_base: float
    perplexity_gated: float
    perplexity_fixed: float
    auroc: float
    neutral_recall_rate: float  # neutral queries that recalled any memory with the gate on
    spearman_gated: Correlation
    spearman_fixed: Correlation
    checks: list[Check]
    seconds: float

    @property
    def passed(self) -> bool:
        return all(c.passed is not False for c in self.checks)


# -- statistics ----------------------------------------------------------------------------------
def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability that a positive outscores a negative (ties count half): the Mann-Whitney AUC."""
    pos, neg = scores[labels], scores[~labels]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def bootstrap_mean(values: np.ndarray, groups: np.ndarray, n: int, seed: int) -> Interval:
    """Mean of ``values`` with a 95 % percentile interval, resampling whole groups (queries)."""
    stat = GroupedSums.of(values, groups)
    low, high = percentile_interval(stat.resampled(group_draws(np.random.default_rng(seed), len(stat.sums), n)))
    return Interval(mean=float(np.mean(values)), low=low, high=high)


def spearman(x: list[float], y: list[float]) -> Correlation:
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return Correlation(rho=None, p_value=None, pairs=len(x))
    from scipy.stats import spearmanr

    result = spearmanr(x, y)
    return Correlation(rho=float(result.statistic), p_value=float(result.pvalue), pairs=len(x))


def selectivity(shifts: np.ndarray, n: int = 0, seed: int = 0) -> Selectivity:
    """``shifts[q, d_injected, d_vocab]``: own (d == d) against the mean of the others. With ``n``,
    a 95 % percentile interval of the selective fraction, resampling whole queries ``n`` times."""
    n_domains = shifts.shape[1]
    own = np.stack([shifts[:, d, d] for d in range(n_domains)], axis=1)
    other = np.stack([np.delete(shifts[:, d, :], d, axis=1).mean(axis=1) for d in range(n_domains)], axis=1)
    wins = own > other
    low = high = None
    if n:
        per_query = GroupedSums(wins.sum(axis=1).astype(float), np.full(len(wins), float(n_domains)))
        low, high = percentile_interval(per_query.resampled(group_draws(np.random.default_rng(seed), len(wins), n)))
    return Selectivity(pairs=own.size, selective=int(wins.sum()), fraction=int(wins.sum()) / max(own.size, 1),
                       own_mean=float(own.mean()), other_mean=float(other.mean()), low=low, high=high)


def own_shifts(shifts: np.ndarray) -> np.ndarray:
    """[q, d]: each domain's shift onto its own vocabulary."""
    return np.stack([shifts[:, d, d] for d in range(shifts.shape[1])], axis=1)


def perplexity(lm, texts, runtime: MemoryRuntime | None = None) -> float:
    inputs = lm.tokenize(list(texts))
    with torch.no_grad():
        if runtime is None:
            logits = lm.model(**inputs, use_cache=False).logits
        else:
            with runtime.session(inputs):
                logits = lm.model(**inputs, use_cache=False).logits
    logp = logits[:, :-1].to(torch.float32).log_softmax(-1)
    target = inputs["input_ids"][:, 1:]
    mask = inputs["attention_mask"][:, 1:].to(torch.float32)
    nll = -(logp.gather(-1, target[..., None]).squeeze(-1) * mask).sum() / mask.sum()
    return float(math.exp(nll))


# -- the protocol --------------------------------------------------------------------------------
def _runtime(lm, memory: LayerMemory) -> MemoryRuntime:
    return MemoryRuntime(lm, {memory.layer: memory})


def run(lm, settings: EvalSettings | None = None, progress: Callable[[str], None] = lambda _: None) -> EvalReport:
    settings = settings or EvalSettings()
    started = time.monotonic()
    ident = identity_of(lm)
    if settings.layer is None:
        layer, source = default_layer(lm.n_layers, ident.weights_sha256, model_name=ident.name, d_model=ident.d_model)
    else:
        layer, source = lm.check_layer(settings.layer), "given"
    names = [d.name for d in builtin.DOMAINS]
    queries = [q.text for q in builtin.QUERIES]

    with tempfile.TemporaryDirectory(prefix="baldr-memory-eval-") as tmp:
        store = MemoryStore.create(f"{tmp}/store", ident, ephemeral_key())
        for domain in builtin.DOMAINS:
            progress(f"storing the {domain.name} memories")
            for added in add_texts(store, lm, domain.memories, [layer], label=domain.name, progress=progress):
                store.decide(added.id, "approve")
        state = store.read_layer(layer)
    centre = state.reference.arrays()[0]
    records = {n: [r for r in state.with_status("approved") if r.body.label == n] for n in names}

    def domain_memory(name: str, **update) -> LayerMemory:
        base = settings.gated.model_copy(update={"layer": layer, **update})
        return memory_from_records(base, records[name], centre, device=lm.device)

    vocab = {d.name: lexicon(lm.tokenizer, d.heldout, [t for e in builtin.DOMAINS if e is not d for t in e.heldout],
                             settings.lexicon_size) for d in builtin.DOMAINS}
    vocab_ids = [vocab[n] for n in names]

    def mass(p: torch.Tensor) -> np.ndarray:  # [q, d_vocab]
        return torch.stack([p[:, ids].sum(dim=1) for ids in vocab_ids], dim=1).numpy()

    progress("queries without memory")
    p_base, _ = next_token_probs(lm, queries)
    m_base = mass(p_base)

    def shifts_with(memory: LayerMemory) -> tuple[np.ndarray, torch.Tensor]:
        p, _ = next_token_probs(lm, queries, _runtime(lm, memory))
        return mass(p) - m_base, p

    # Fixed strength, every dose.
    dose, fixed_shifts, kl_at = [], {}, {}
    for strength in DOSES:
        progress(f"fixed strength {strength}")
        per_domain, kls = [], []
        for name in names:
            s, p = shifts_with(domain_memory(name, gate="fixed", strength=strength, top_k=len(records[name])))
            per_domain.append(s)
            kls.append(kl(p, p_base).numpy())
        fixed_shifts[strength] = np.stack(per_domain, axis=1)  # [q, d_injected, d_vocab]
        kl_at[strength] = float(np.mean(kls))
        sel = selectivity(fixed_shifts[strength], settings.bootstrap, settings.seed)
        dose.append(DosePoint(strength=strength, own_mean=sel.own_mean, other_mean=sel.other_mean,
                              selectivity=sel.fraction, selectivity_low=sel.low, selectivity_high=sel.high,
                              kl_mean=kl_at[strength]))
    fixed_strength = settings.fixed_strength
    if fixed_strength not in fixed_shifts:
        per_domain, kls = [], []
        for name in names:
            s, p = shifts_with(domain_memory(name, gate="fixed", strength=fixed_strength, top_k=len(records[name])))
            per_domain.append(s)
            kls.append(kl(p, p_base).numpy())
        fixed_shifts[fixed_strength], kl_at[fixed_strength] = np.stack(per_domain, axis=1), float(np.mean(kls))
    fixed = selectivity(fixed_shifts[fixed_strength], settings.bootstrap, settings.seed)
    own_fixed = own_shifts(fixed_shifts[fixed_strength])
    own_shift_fixed = bootstrap_mean(own_fixed.reshape(-1), np.repeat(np.arange(len(queries)), len(names)),
                                     settings.bootstrap, settings.seed)

    # Norm-matched random directions: one random unit vector, scaled to the norm of the domain's
    # mean value, in place of every value, so the nudge has exactly the domain nudge's size.
    progress(f"random control ({settings.random_seeds} seeds)")
    generator = torch.Generator().manual_seed(settings.seed)
    own_random, groups = [], []
    for _ in range(settings.random_seeds):
        for d, name in enumerate(names):
            memory = domain_memory(name, gate="fixed", strength=fixed_strength, top_k=len(records[name]))
            size = memory.values.mean(dim=0).norm()
            direction = unit(torch.randn(memory.values.shape[1], generator=generator)).to(memory.device) * size
            memory.values = direction.expand_as(memory.values).clone()
            s, _ = shifts_with(memory)
            own_random.append(s[:, d])
            groups.append(np.arange(len(queries)))
    random_control = bootstrap_mean(np.concatenate(own_random), np.concatenate(groups), settings.bootstrap,
                                    settings.seed)
    random_to_memory = random_control.mean / own_shift_fixed.mean if own_shift_fixed.mean else math.inf

    # Relevance, as the hook computes it: pooled query minus centre against each record's key.
    q_states = pooled(lm, queries, [layer])[layer]
    relevance = {n: (unit(q_states - torch.from_numpy(centre)) @ unit(
        torch.from_numpy(np.stack([r.body.key_vector() for r in records[n]]))).T).numpy() for n in names}
    query_domain = [q.domain for q in builtin.QUERIES]
    scores, labels = [], []
    for qi, qd in enumerate(query_domain):
        if qd is None:
            continue
        for n in names:
            scores += relevance[n][qi].tolist()
            labels += [n == qd] * len(records[n])
    retrieval_auroc = auroc(np.array(scores), np.array(labels))

    # Gated: the default relevance gate, one domain's memories at a time.
    progress("relevance-gated")
    gated_shifts, active, kls = [], [], []
    for name in names:
        memory = domain_memory(name)
        s, p = shifts_with(memory)
        gated_shifts.append(s)
        recall = memory.recall(q_states)
        active.append([bool(ids) for ids in recall.record_ids])
        kls.append(kl(p, p_base).numpy())
    gated_all = np.stack(gated_shifts, axis=1)
    active = np.array(active).T  # [q, d]
    gated_pairs = [(q, d) for q in range(len(queries)) for d in range(len(names)) if active[q, d]]
    own_g = np.array([gated_all[q, d, d] for q, d in gated_pairs])
    other_g = np.array([np.delete(gated_all[q, d], d).mean() for q, d in gated_pairs])
    gated = Selectivity(pairs=len(gated_pairs), selective=int((own_g > other_g).sum()),
                        fraction=float((own_g > other_g).mean()) if gated_pairs else 0.0,
                        own_mean=float(own_g.mean()) if gated_pairs else 0.0,
                        other_mean=float(other_g.mean()) if gated_pairs else 0.0)
    neutral = [i for i, d in enumerate(query_domain) if d is None]
    neutral_rate = float(np.mean([active[i].any() for i in neutral])) if neutral else 0.0
    top_relevance = {(q, d): float(relevance[n].max(axis=1)[q]) for d, n in enumerate(names) for q in range(len(queries))}
    spear_gated = spearman([top_relevance[p] for p in gated_pairs], own_g.tolist())
    all_pairs = [(q, d) for q in range(len(queries)) for d in range(len(names))]
    spear_fixed = spearman([top_relevance[p] for p in all_pairs],
                           [float(fixed_shifts[fixed_strength][q, d, d]) for q, d in all_pairs])

    progress("perplexity of neutral text")
    ppl_base = perplexity(lm, builtin.NEUTRAL_TEXT)
    everything = memory_from_records(settings.gated.model_copy(update={"layer": layer}),
                                     [r for n in names for r in records[n]], centre, device=lm.device)
    ppl_gated = perplexity(lm, builtin.NEUTRAL_TEXT, _runtime(lm, everything))
    ppl_fixed = float(np.mean([perplexity(lm, builtin.NEUTRAL_TEXT, _runtime(lm, domain_memory(
        n, gate="fixed", strength=fixed_strength, top_k=len(records[n])))) for n in names]))

    owns = [p.own_mean for p in dose]
    monotone = all(b >= a for a, b in zip(owns, owns[1:], strict=False))
    checks = [
        # The target is held against the interval's lower end: the point estimate alone rests on 128
        # pairs from 32 queries, at a strength chosen after looking at the first 16.
        Check(name="selectivity at fixed strength (95% CI over queries)",
              value=f"{fixed.selective}/{fixed.pairs} = {fixed.fraction:.1%} [{fixed.low:.1%}, {fixed.high:.1%}]",
              target=f"CI lower end >= {settings.target_selectivity:.0%}",
              passed=fixed.low >= settings.target_selectivity),
        Check(name="random control: own-domain shift 95% CI includes 0",
              value=f"{random_control.mean:+.5f} [{random_control.low:+.5f}, {random_control.high:+.5f}]",
              target="low <= 0 <= high", passed=random_control.low <= 0 <= random_control.high),
        Check(name="memories against the random control, same strength",
              value=f"memories {own_shift_fixed.mean:+.5f} [{own_shift_fixed.low:+.5f}, {own_shift_fixed.high:+.5f}], "
                    f"random {random_control.mean:+.5f} ({random_to_memory:.0%} of it)",
              target=f"memories' CI above 0; |random| < {RANDOM_FRACTION_MAX:.0%} of the memories'",
              passed=own_shift_fixed.low > 0 and abs(random_to_memory) < RANDOM_FRACTION_MAX),
        Check(name="dose-response monotone", value=" -> ".join(f"{o:+.5f}" for o in owns),
              target="non-decreasing", passed=monotone),
        Check(name="KL at the next token (fixed / gated)", value=f"{kl_at[fixed_strength]:.4f} / {float(np.mean(kls)):.4f}",
              target="reported", passed=None),
        Check(name="neutral-text perplexity (off / gated / fixed)",
              value=f"{ppl_base:.3f} / {ppl_gated:.3f} / {ppl_fixed:.3f}", target="reported", passed=None),
        Check(name="relevance AUROC (same vs other domain)", value=f"{retrieval_auroc:.3f}", target="reported",
              passed=None),
        Check(name="Spearman(relevance, own shift), gated / fixed",
              value=f"{_rho(spear_gated)} / {_rho(spear_fixed)}", target="reported", passed=None),
    ]
    return EvalReport(
        model=ident.short(), layer=layer, layer_source=source, domains_sha256=builtin.domains_fingerprint(),
        domains=names, memories=sum(len(r) for r in records.values()), queries=len(queries),
        vocabularies={n: [lm.tokenizer.decode([i]).strip() for i in vocab[n]] for n in names},
        fixed_strength=fixed_strength, gated_settings=settings.gated.model_copy(update={"layer": layer}),
        fixed=fixed, gated=gated, own_shift_fixed=own_shift_fixed, random_control=random_control,
        random_to_memory=random_to_memory, dose=dose, dose_monotone=monotone,
        kl_fixed=kl_at[fixed_strength], kl_gated=float(np.mean(kls)), perplexity_base=ppl_base,
        perplexity_gated=ppl_gated, perplexity_fixed=ppl_fixed, auroc=retrieval_auroc,
        neutral_recall_rate=neutral_rate, spearman_gated=spear_gated, spearman_fixed=spear_fixed, checks=checks,
        seconds=time.monotonic() - started)


def _rho(c: Correlation) -> str:
    return "n/a" if c.rho is None else f"{c.rho:+.3f} (n={c.pairs}, p={c.p_value:.3g})"
