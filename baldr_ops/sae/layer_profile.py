"""The per-layer profile: how far each layer's residual stream is from the token space, by metric.

Every metric is defined exactly here (and in docs/sae.md, "Layer profile"), computed over a fixed
prompt set, and reported with a bootstrap confidence interval over prompts. The metrics are meant
to disagree: each looks at token proximity from a different side, and the profile reports where
each puts its extremum instead of one "integration zone".

Notation: ``h_l(p, i)`` is the output of decoder layer ``l`` at position ``i`` of prompt ``p``; ``L``
the number of decoder layers; ``E`` the input embedding matrix (rows ``E_v``, unscaled); ``lens_l``
the logit lens ``softmax(unembed(final_norm(h_l)))`` (Gemma soft-capping included) and ``P`` the
model's final next-token distribution. *Counted tokens* are all positions ``i ≥ 1`` (position 0 is
the attention sink, with a state unlike any other); the embedding-side metrics also drop
*massive-norm* tokens at that layer, ``‖h_l(p, i)‖ > 10 × median`` of the counted norms there.

* ``lens_kl``: mean over counted tokens of ``KL(P ‖ lens_l)`` in nats (0 at the last layer).
* ``lens_top1``: fraction of counted tokens with ``argmax lens_l == argmax P``.
* ``embed_nn_acc``: fraction of kept tokens whose nearest row of ``E`` by cosine, after centring
  states (minus their mean over kept tokens at that layer) and rows (minus the mean row), is the
  input token at that position.
* ``embed_rank``: mean over kept tokens of ``log10(1 + r)``, ``r`` the number of centred rows with a
  higher cosine to the centred state than the input token's row (``r = 0``: it is the nearest). The
  graded form of the accuracy, which is 0 at every layer of some models.
* ``embed_max_cos``: mean over kept tokens of ``max_v cos(h̃_l, Ẽ_v)`` with the same centring.
* ``sipit_explored``: SipIt search cost: candidates verified per position before the true token was
  accepted (`baldr_ops.sae.sipit`, linear policy by default), averaged over the positions of a few
  short prompts and divided by ``|V|``. A position whose budget ran out counts at the budget and
  marks the layer *censored*: its value is then a lower bound, not a measurement.

Aggregation: a layer's value is the pooled mean over all counted tokens (or SipIt positions) of the
prompt set; the interval is the 2.5-97.5 % percentile of that pooled mean over ``B`` bootstrap
resamples of whole prompts (seeded numpy generator).

Integration depth: see `integration_depth`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel

from baldr_ops.errors import UserError
from baldr_ops.research.hooks import capture
from baldr_ops.research.models import LanguageModel, layer_ranges
from baldr_ops.research.stats import GroupedSums, group_draws, percentile_interval
from baldr_ops.sae.corpus import DEFAULT_MASSIVE_FACTOR, massive_norm
from baldr_ops.schema import Document

MASSIVE_NORM_FACTOR = DEFAULT_MASSIVE_FACTOR
CI_LEVEL = 0.95

# Fixed and deterministic: short, varied English (facts, narrative, instructions, code, numbers,
# dialogue), so no single register decides a layer's numbers.
DEFAULT_PROMPTS = (
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "She opened the window and the cold morning air filled the small kitchen.",
    "To boil an egg, place it in boiling water for about nine minutes.",
    "def add(a, b):\n    return a + b",
    "The meeting was moved from Tuesday to Thursday because the manager was ill.",
    "Water freezes at zero degrees Celsius and boils at one hundred.",
    "After the storm, the fishermen repaired their nets on the beach.",
    "Please send me the report by Friday so I can review it over the weekend.",
    "The quick brown fox jumps over the lazy dog.",
    "In 1969, two astronauts walked on the surface of the Moon.",
    "\"Where are you going?\" asked the old man. \"Home,\" said the boy.",
    "The library closes at eight in the evening on weekdays.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen.",
    "He forgot his umbrella, so he arrived at the office completely soaked.",
    "The train to Berlin leaves from platform four at half past six.",
    "A triangle has three sides and its angles add up to one hundred and eighty degrees.",
)

METRICS = ("lens_kl", "lens_top1", "embed_nn_acc", "embed_rank", "embed_max_cos", "sipit_explored")


@dataclass(frozen=True)
class MetricInfo:
    label: str
    unit: str
    far: Literal["high", "low"]  # which end means "far from the token space"
    side: Literal["output", "input", "inversion"]
    definition: str


METRIC_INFO = {
    "lens_kl": MetricInfo("logit-lens KL(final || lens)", "nats", "high", "output",
                          "mean over counted tokens (positions >= 1) of KL(P_final || softmax(unembed(norm(h_l))))"),
    "lens_top1": MetricInfo("logit-lens top-1 agreement", "fraction", "low", "output",
                            "fraction of counted tokens where argmax of the lens equals argmax of the final logits"),
    "embed_nn_acc": MetricInfo("nearest input embedding = input token", "fraction", "low", "input",
                               "fraction of kept tokens whose nearest centred embedding row (cosine) to the "
                               "centred state is the token at that position"),
    "embed_rank": MetricInfo("log10(1 + rank of the input token's embedding)", "log10 rank", "high", "input",
                             "mean over kept tokens of log10(1 + r), r = number of centred embedding rows with a "
                             "higher cosine to the centred state than the input token's row (0: it is the nearest)"),
    "embed_max_cos": MetricInfo("max cosine to input embeddings", "cosine", "low", "input",
                                "mean over kept tokens of the largest cosine between the centred state and a "
                                "centred embedding row"),
    "sipit_explored": MetricInfo("SipIt search cost", "fraction of vocabulary", "high", "inversion",
                                 "mean candidates verified per position before SipIt accepted the true token, "
                                 "divided by the vocabulary size (censored positions count at the budget)"),
}

INTEGRATION_DEPTH_DEFINITION = (
    "Combined curve over the profiled layers: output-side proximity P_out(l) = 1 - minmax(lens_kl)(l), "
    "input-side proximity P_in(l) = 1 - minmax(embed_rank)(l), D(l) = 1 - max(P_in(l), P_out(l)) (how far the "
    "layer is from the nearer of the two token spaces). Integration depth = argmax_l D(l), reported only if it "
    "is an interior layer (not the first or last profiled); depth fraction = (l + 1) / L. The interval is the "
    "2.5-97.5 % range of the argmax over the bootstrap resamples."
)


# -- documents ---------------------------------------------------------------------------------

class MetricValue(BaseModel):
    value: float
    ci_low: float
    ci_high: float
    censored: bool = False  # a lower bound: some SipIt positions ran out of budget


class LayerRow(BaseModel):
    layer: int
    depth: float  # (layer + 1) / L
    tokens_counted: int
    tokens_massive: int  # dropped from the embedding-side metrics at this layer
    lens_kl: MetricValue
    lens_top1: MetricValue
    embed_nn_acc: MetricValue
    embed_rank: MetricValue
    embed_max_cos: MetricValue
    sipit_explored: MetricValue | None = None
    sipit_candidates: MetricValue | None = None  # the same cost in candidates per position
    sipit_censored_positions: int = 0
    sipit_positions: int = 0


class MetricZone(BaseModel):
    """Where one metric puts the layer farthest from the token space."""

    metric: str
    label: str
    far: Literal["high", "low"]
    layer: int | None  # the extremum, None when the metric was not computed
    depth: float | None
    value: float | None
    interior: bool  # False: the extremum is the first or last profiled layer
    distinct_from_edges: bool  # interior, and neither end layer's interval overlaps the extremum's
    # Layers whose interval overlaps the extremum's: not distinguishable from it at this sample size.
    indistinguishable: list[int]
    censored: bool = False
    summary: str


class IntegrationDepth(BaseModel):
    layer: int | None  # argmax of the combined curve (None: fewer than 3 layers profiled)
    depth: float | None
    interior: bool  # False: the argmax is an end of the profiled range, so there is no integration zone
    interval_layers: list[int] | None  # bootstrap 2.5-97.5 % of the argmax layer
    interval_depth: list[float] | None
    definition: str = INTEGRATION_DEPTH_DEFINITION


class SipItSettings(BaseModel):
    policy: str
    prompts: int
    tokens_per_prompt: int
    budget: int
    eps_rel: float
    layers: list[int] | None = None  # where to run it (the costly metric); None: every profiled layer


class ProfileSettings(BaseModel):
    prompt_source: str  # "default" or the file name
    prompts: int
    max_tokens: int
    bootstrap: int
    ci_level: float
    seed: int
    massive_norm_factor: float
    sipit: SipItSettings | None


class LayerProfileDocument(Document):
    kind: Literal["sae.layer_profile"] = "sae.layer_profile"
    model: str
    family: str
    n_layers: int
    d_model: int
    vocab_size: int
    settings: ProfileSettings
    definitions: dict[str, str]
    layers: list[LayerRow]
    zones: list[MetricZone]
    integration_depth: IntegrationDepth
    seconds: float  # wall time; the only field that differs between two identical runs


# -- inputs ------------------------------------------------------------------------------------

def parse_layer_spec(spec: str, n_layers: int) -> list[int]:
    """'all', 'a-b' (inclusive) or a comma list; negative numbers count from the end."""
    text = (spec or "").strip().lower()
    if text in ("", "all"):
        return list(range(n_layers))

    def one(token: str) -> int:
        try:
            value = int(token)
        except ValueError:
            raise UserError(f"bad layer {token!r} in --layers {spec!r}",
                            hint="use 'all', a range like 4-12, or a list like 1,12,29") from None
        index = value + n_layers if value < 0 else value
        if not 0 <= index < n_layers:
            raise UserError(f"layer {value} is out of range: the model has {n_layers} decoder layers, "
                            f"0..{n_layers - 1}")
        return index

    layers: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        bounds = part.split("-") if part.count("-") == 1 and not part.startswith("-") else [part]
        if len(bounds) == 2:
            lo, hi = one(bounds[0]), one(bounds[1])
            if lo > hi:
                raise UserError(f"empty layer range {part!r} in --layers", hint="write the lower bound first")
            layers.update(range(lo, hi + 1))
        else:
            layers.add(one(part))
    if not layers:
        raise UserError(f"--layers {spec!r} names no layer")
    return sorted(layers)


def read_prompt_file(path) -> list[str]:
    """One prompt per non-empty line."""
    from pathlib import Path

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read prompt file {p}: {exc}") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"prompt file {p} has no text", hint="one prompt per line")
    return prompts


def tokenize_prompts(lm: LanguageModel, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    """Token ids of each prompt (as the tokenizer adds special tokens), cut to max_tokens."""
    out = []
    for text in texts:
        ids = list(lm.tokenizer(text)["input_ids"])[:max_tokens]
        if len(ids) >= 2:  # position 0 is never counted, so a one-token prompt adds nothing
            out.append([int(i) for i in ids])
    if not out:
        raise UserError("no prompt has two or more tokens", hint="give longer prompts")
    return out


# -- statistics --------------------------------------------------------------------------------

def _metric_value(stat: GroupedSums, draws: np.ndarray, censored: bool = False) -> tuple[MetricValue, np.ndarray]:
    boot = stat.resampled(draws)
    lo, hi = percentile_interval(boot, CI_LEVEL)
    return MetricValue(value=_sig(stat.pooled()), ci_low=_sig(lo), ci_high=_sig(hi), censored=censored), boot


def _sig(x: float) -> float:
    """8 significant digits: beyond float32 accuracy, short in JSON."""
    return float(f"{float(x):.8g}")


# -- the measurements --------------------------------------------------------------------------

@dataclass
class _PromptStates:
    ids: list[int]
    states: dict[int, torch.Tensor]  # layer -> [T, d] float32
    final_logprobs: torch.Tensor  # [T, V]


def _forward_prompts(lm: LanguageModel, prompts: Sequence[Sequence[int]], layers: Sequence[int]) -> list[_PromptStates]:
    out = []
    for ids in prompts:
        input_ids = torch.tensor([list(ids)], dtype=torch.long, device=lm.device)
        with torch.no_grad(), capture(lm, layers) as record:
            logits = lm.model(input_ids=input_ids, use_cache=False).logits[0]
        out.append(_PromptStates(list(ids), {layer: record[layer][0].float() for layer in layers},
                                 torch.log_softmax(logits.float(), dim=-1)))
    return out


def _lens_sums(lm: LanguageModel, data: list[_PromptStates], layer: int) -> tuple[GroupedSums, GroupedSums]:
    kl_sums, top1_sums, counts = [], [], []
    for p in data:
        h = p.states[layer][1:]
        with torch.no_grad():
            lens = torch.log_softmax(lm.logits_from_residual(h.to(lm.dtype)).float(), dim=-1)
        final = p.final_logprobs[1:]
        kl = (final.exp() * (final - lens)).sum(-1).clamp(min=0)
        kl_sums.append(float(kl.double().sum()))
        top1_sums.append(float((lens.argmax(-1) == final.argmax(-1)).sum()))
        counts.append(len(h))
    counts = np.array(counts, dtype=float)
    return GroupedSums(np.array(kl_sums), counts), GroupedSums(np.array(top1_sums), counts)


def _embedding_sums(data: list[_PromptStates], layer: int, centred_rows: torch.Tensor,
                    massive_factor: float) -> tuple[GroupedSums, GroupedSums, GroupedSums, int, int]:
    states = [p.states[layer][1:] for p in data]
    norms = torch.cat([h.norm(dim=1) for h in states])
    massive = massive_norm(norms, torch.ones_like(norms, dtype=torch.bool), massive_factor)
    keep = list(torch.split(~massive, [len(h) for h in states]))
    kept = torch.cat([h[k] for h, k in zip(states, keep, strict=True)])
    mean = kept.mean(0) if len(kept) else torch.zeros(states[0].shape[1])
    acc_sums, rank_sums, cos_sums, counts = [], [], [], []
    for p, h, k in zip(data, states, keep, strict=True):
        tokens = torch.tensor(p.ids[1:])[k]
        x = torch.nn.functional.normalize(h[k] - mean, dim=1)
        cos = x @ centred_rows.T
        best = cos.max(dim=1)
        own = cos.gather(1, tokens.view(-1, 1))
        rank = (cos > own).sum(1).double()
        acc_sums.append(float((best.indices == tokens).sum()))
        rank_sums.append(float(torch.log10(1 + rank).sum()))
        cos_sums.append(float(best.values.double().sum()))
        counts.append(int(k.sum()))
    counts = np.array(counts, dtype=float)
    return (GroupedSums(np.array(acc_sums), counts), GroupedSums(np.array(rank_sums), counts),
            GroupedSums(np.array(cos_sums), counts), int(sum(len(h) for h in states)), int(len(norms) - len(kept)))


def _sipit_sums(lm: LanguageModel, prompts: Sequence[Sequence[int]], layer: int, settings: SipItSettings,
                seed: int, vocab: int) -> tuple[GroupedSums, GroupedSums, int, int]:
    from baldr_ops.sae.sipit import invert_prompt

    cand_sums, counts, censored = [], [], 0
    for index, ids in enumerate(prompts):
        result = invert_prompt(lm, layer, ids, policy=settings.policy, eps_rel=settings.eps_rel,
                               budget=settings.budget, seed=seed + index)
        wrong = [p for p in result.positions if p.correct is False]
        if wrong:  # SipIt's guarantee broke (an ε collision): no cost figure can be trusted
            raise RuntimeError(f"SipIt accepted a wrong token at layer {layer}, position {wrong[0].position}")
        cand_sums.append(sum(p.candidates_verified for p in result.positions))
        counts.append(len(result.positions))
        censored += sum(p.censored for p in result.positions)
    sums, counts = np.array(cand_sums, dtype=float), np.array(counts, dtype=float)
    return GroupedSums(sums / vocab, counts), GroupedSums(sums, counts), censored, int(counts.sum())


# -- zones and integration depth ---------------------------------------------------------------

def _oriented(values: np.ndarray, far: str) -> np.ndarray:
    """Higher = farther from the token space."""
    return values if far == "high" else -values


def metric_zone(metric: str, layers: Sequence[int], n_layers: int, values: Sequence[MetricValue | None]) -> MetricZone:
    """The profiled layer where the metric is farthest from the token space, and the layers whose
    interval overlaps the extremum's (not distinguishable from it with this prompt set)."""
    info = METRIC_INFO[metric]
    present = [(layer, v) for layer, v in zip(layers, values, strict=True) if v is not None]
    if not present:
        return MetricZone(metric=metric, label=info.label, far=info.far, layer=None, depth=None, value=None,
                          interior=False, distinct_from_edges=False, indistinguishable=[],
                          summary=f"{info.label}: not computed")
    vals = np.array([v.value for _, v in present])
    censored = any(v.censored for _, v in present)
    censored_note = "; some layers censored (SipIt budget exceeded): those values are lower bounds"
    if np.ptp(vals) == 0:
        summary = f"{info.label}: {vals[0]:.4g} at every profiled layer, no extremum"
        return MetricZone(metric=metric, label=info.label, far=info.far, layer=None, depth=None,
                          value=float(vals[0]), interior=False, distinct_from_edges=False,
                          indistinguishable=[lyr for lyr, _ in present], censored=censored,
                          summary=summary + (censored_note if censored else ""))
    best = int(np.argmax(_oriented(vals, info.far)))
    layer, top = present[best]
    if info.far == "high":
        near = [lyr for lyr, v in present if v.ci_high >= top.ci_low]
    else:
        near = [lyr for lyr, v in present if v.ci_low <= top.ci_high]
    interior = 0 < best < len(present) - 1
    distinct = interior and present[0][0] not in near and present[-1][0] not in near
    depth = (layer + 1) / n_layers
    word = "peaks" if info.far == "high" else "is lowest"
    summary = f"{info.label} {word} at layer {layer} ({100 * depth:.0f} % depth, {top.value:.4g})"
    if not interior:
        summary += ", an end of the profiled range: no interior extremum"
    elif not distinct:
        summary += ", but not distinguishable from an end of the range"
    if len(near) > 1:
        summary += f"; within the CIs at layers {layer_ranges(near)}"
    if censored:
        summary += censored_note
    return MetricZone(metric=metric, label=info.label, far=info.far, layer=layer, depth=round(depth, 4),
                      value=top.value, interior=interior, distinct_from_edges=distinct, indistinguishable=near,
                      censored=censored, summary=summary)


def combined_distance(kl: np.ndarray, log_rank: np.ndarray) -> np.ndarray:
    """D(l) = 1 - max(P_in, P_out) with both proximities min-max normalised over the layers given
    (last axis); any leading axes are bootstrap replicates."""

    def minmax(x):
        lo, hi = x.min(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(hi > lo, (x - lo) / np.where(hi > lo, hi - lo, 1), 0.0)

    p_out = 1 - minmax(kl)
    p_in = 1 - minmax(log_rank)
    return 1 - np.maximum(p_in, p_out)


def integration_depth(layers: Sequence[int], n_layers: int, kl: np.ndarray, log_rank: np.ndarray,
                      kl_boot: np.ndarray, rank_boot: np.ndarray) -> IntegrationDepth:
    """argmax of `combined_distance` over the profiled layers (see INTEGRATION_DEPTH_DEFINITION).

    ``kl_boot``/``rank_boot`` are [B, n_layers_profiled] bootstrap replicates of the two curves (the
    same prompt resamples for both, so the interval reflects the prompt set's variation)."""
    layers = list(layers)
    if len(layers) < 3:
        return IntegrationDepth(layer=None, depth=None, interior=False, interval_layers=None, interval_depth=None)
    d = combined_distance(kl, log_rank)
    best = int(np.argmax(d))
    interior = 0 < best < len(layers) - 1
    boot = np.argmax(combined_distance(kl_boot, rank_boot), axis=1)
    alpha = (1 - CI_LEVEL) / 2
    lo, hi = (int(np.quantile(boot, q, method="nearest")) for q in (alpha, 1 - alpha))
    interval = [layers[lo], layers[hi]]
    return IntegrationDepth(layer=layers[best], depth=round((layers[best] + 1) / n_layers, 4),
                            interior=interior, interval_layers=interval,
                            interval_depth=[round((x + 1) / n_layers, 4) for x in interval])


# -- the profile -------------------------------------------------------------------------------

def profile_layers(lm: LanguageModel, prompts: Sequence[Sequence[int]], layers: Sequence[int], *,
                   bootstrap: int = 1000, seed: int = 0, sipit: SipItSettings | None = None,
                   prompt_source: str = "default", max_tokens: int = 64,
                   progress: Callable[[str], None] = lambda _: None) -> LayerProfileDocument:
    """Measure every metric at every layer in ``layers`` over token-id ``prompts``."""
    started = time.perf_counter()
    if not prompts:
        raise UserError("no prompts to profile")
    if bootstrap < 1:
        raise UserError(f"--bootstrap must be at least 1, got {bootstrap}")
    layers = sorted({lm.check_layer(layer) for layer in layers})
    vocab = int(lm.input_embedding_matrix().shape[0])
    rng = np.random.default_rng(seed)
    draws = group_draws(rng, len(prompts), bootstrap)
    sipit_prompts = [list(p)[: sipit.tokens_per_prompt] for p in prompts[: sipit.prompts]] if sipit else []
    sipit_layers = set(layers if sipit is None or sipit.layers is None else sipit.layers)
    if sipit is not None and not sipit_layers & set(layers):
        raise UserError("none of the SipIt layers is among the profiled layers",
                        hint="--sipit-layers must pick from --layers")
    sipit_draws = group_draws(rng, len(sipit_prompts), bootstrap) if sipit_prompts else None

    data = _forward_prompts(lm, prompts, layers)
    E = lm.input_embedding_matrix().detach().float()
    centred_rows = torch.nn.functional.normalize(E - E.mean(0), dim=1)
    rows: list[LayerRow] = []
    kl_boot, rank_boot = [], []
    for k, layer in enumerate(layers, 1):
        kl, top1 = _lens_sums(lm, data, layer)
        acc, rank, cos, counted, massive = _embedding_sums(data, layer, centred_rows, MASSIVE_NORM_FACTOR)
        kl_v, kl_b = _metric_value(kl, draws)
        rank_v, rank_b = _metric_value(rank, draws)
        kl_boot.append(kl_b)
        rank_boot.append(rank_b)
        row = LayerRow(layer=layer, depth=round((layer + 1) / lm.n_layers, 4), tokens_counted=counted,
                       tokens_massive=massive, lens_kl=kl_v, lens_top1=_metric_value(top1, draws)[0],
                       embed_nn_acc=_metric_value(acc, draws)[0], embed_rank=rank_v,
                       embed_max_cos=_metric_value(cos, draws)[0])
        if sipit_prompts and layer in sipit_layers:
            explored, candidates, censored, positions = _sipit_sums(lm, sipit_prompts, layer, sipit, seed, vocab)
            row.sipit_explored = _metric_value(explored, sipit_draws, censored > 0)[0]
            row.sipit_candidates = _metric_value(candidates, sipit_draws, censored > 0)[0]
            row.sipit_censored_positions, row.sipit_positions = censored, positions
        rows.append(row)
        progress(f"layer {layer}: {k}/{len(layers)} done")

    zones = [metric_zone(m, layers, lm.n_layers, [getattr(r, m) for r in rows]) for m in METRICS]
    depth = integration_depth(layers, lm.n_layers, np.array([r.lens_kl.value for r in rows]),
                              np.array([r.embed_rank.value for r in rows]),
                              np.stack(kl_boot, axis=1), np.stack(rank_boot, axis=1))
    settings = ProfileSettings(prompt_source=prompt_source, prompts=len(prompts), max_tokens=max_tokens,
                               bootstrap=bootstrap, ci_level=CI_LEVEL, seed=seed,
                               massive_norm_factor=MASSIVE_NORM_FACTOR, sipit=sipit)
    definitions = {m: METRIC_INFO[m].definition for m in METRICS}
    definitions["integration_depth"] = INTEGRATION_DEPTH_DEFINITION
    definitions["counted_tokens"] = (f"positions >= 1; the embedding-side metrics also drop tokens whose norm at "
                                     f"the layer exceeds {MASSIVE_NORM_FACTOR:g} x the median counted norm there")
    return LayerProfileDocument(model=lm.name, family=lm.family, n_layers=lm.n_layers, d_model=lm.d_model,
                                vocab_size=vocab, settings=settings, definitions=definitions, layers=rows,
                                zones=zones, integration_depth=depth,
                                seconds=round(time.perf_counter() - started, 2))
