"""The evaluation protocol (criterion 17, issue 15): its statistics, how its checks judge figures
against targets, operators' domain sets, and the protocol on SmolLM2."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from baldr_ops.cli import main
from baldr_ops.errors import UserError
from baldr_ops.memory import evaluate
from baldr_ops.memory.domains import BUILTIN, TOPIC_CORPUS, load_domain_set, topic_groups
from baldr_ops.memory.recall import LayerMemory

pytestmark = pytest.mark.research

DATA = Path(__file__).parent / "data"
HELD_OUT = sorted(DATA.glob("domains-set*.json"))  # written after the topic corpus was fixed
DOMAIN_FILES = list(TOPIC_CORPUS) + HELD_OUT


def test_auroc_bootstrap_selectivity_helpers():
    assert evaluate.auroc(np.array([3.0, 2, 1, 0]), np.array([True, True, False, False])) == 1.0
    assert evaluate.auroc(np.array([1.0, 1]), np.array([True, False])) == 0.5
    ci = evaluate.bootstrap_mean(np.array([1.0, -1, 1, -1]), np.array([0, 0, 1, 1]), 200, 0)
    assert ci.mean == 0 and ci.low <= 0 <= ci.high
    shifts = np.zeros((2, 2, 2))
    shifts[:, 0, 0] = shifts[:, 1, 1] = 1.0
    shifts[1, 1, 1] = -1.0
    sel = evaluate.selectivity(shifts)
    assert (sel.pairs, sel.selective) == (4, 3) and sel.low is None
    sel = evaluate.selectivity(shifts, 500, 0)  # query 0 is selective in both domains, query 1 in one
    assert sel.low == 0.5 and sel.high == 1.0
    only = np.array([[False, False], [False, True]])  # just the pair that is not selective
    assert evaluate.selectivity(shifts, pairs=only).selective == 0
    assert evaluate.selectivity(shifts, pairs=only).pairs == 1
    assert evaluate.spearman([1, 2, 3, 4], [1, 2, 3, 5]).rho == pytest.approx(1.0)
    assert evaluate.spearman([1, 1], [1, 2]).rho is None


def test_bootstrap_auroc_resamples_whole_queries():
    labels = np.array([True, False] * 6)
    groups = np.repeat(np.arange(6), 2)
    perfect = evaluate.bootstrap_auroc(np.where(labels, 1.0, 0.0), labels, groups, 300, 0)
    assert (perfect.mean, perfect.low, perfect.high) == (1.0, 1.0, 1.0)
    noisy = np.array([0.9, 0.1, 0.8, 0.2, 0.3, 0.7, 0.6, 0.4, 0.9, 0.5, 0.2, 0.6])
    ci = evaluate.bootstrap_auroc(noisy, labels, groups, 300, 0)
    assert ci.low < ci.mean < ci.high and 0 <= ci.low and ci.high <= 1


def _interval(mean, low=None, high=None):
    return evaluate.Interval(mean=mean, low=mean if low is None else low, high=mean if high is None else high)


def _headline(**changes):
    good = dict(own_recall=_interval(0.95), false_recall=_interval(0.02), neutral_recall=_interval(0.0),
                auroc=_interval(0.97),
                selectivity_total=evaluate.Selectivity(pairs=100, selective=97, fraction=0.97, own_mean=0.01,
                                                       other_mean=0.0, low=0.93, high=0.99),
                selectivity_own=evaluate.Selectivity(pairs=20, selective=18, fraction=0.9, own_mean=0.01,
                                                     other_mean=0.0, low=0.75, high=1.0),
                perplexity_off=30.0, perplexity_on=30.6, kl_neutral=_interval(0.0))
    return evaluate.Headline(**{**good, **changes})


def test_targets_are_those_of_issue_15():
    t = evaluate.Targets()
    assert (t.own_recall, t.false_recall, t.auroc, t.selectivity, t.perplexity_ratio) == (0.9, 0.05, 0.9, 0.9, 1.05)


def test_checks_judge_each_figure_against_its_target():
    """Targets given here, figures made up on either side of them: each check passes or fails on its
    own figure, and selectivity is held against its interval's lower end, not its point estimate."""
    targets = evaluate.Targets(own_recall=0.8, false_recall=0.1, auroc=0.85, selectivity=0.7, perplexity_ratio=1.1)
    names = ["own-domain recall", "false recall", "AUROC", "total selectivity", "perplexity"]

    def verdicts(h):
        checks = evaluate.headline_checks(h, targets)
        assert [any(n in c.name for c in checks) for n in names] == [True] * 5
        return {n: next(c.passed for c in checks if n in c.name) for n in names}

    assert set(verdicts(_headline()).values()) == {True}
    cases = {
        "own-domain recall": dict(own_recall=_interval(0.75, 0.6, 0.9)),
        "false recall": dict(false_recall=_interval(0.15, 0.05, 0.25)),
        "AUROC": dict(auroc=_interval(0.8, 0.7, 0.9)),
        "total selectivity": dict(selectivity_total=evaluate.Selectivity(
            pairs=100, selective=80, fraction=0.8, own_mean=0.01, other_mean=0.0, low=0.65, high=0.9)),
        "perplexity": dict(perplexity_on=34.0),
    }
    for name, change in cases.items():
        result = verdicts(_headline(**change))
        assert result == {n: n != name for n in names}, name


def test_the_topic_corpus_and_what_eval_calls_in_sample():
    """The corpus is the shipped sets' memories and queries, one group per domain; an evaluation on a
    shipped set says all of its memories and queries are in it, one on a later set none."""
    groups = topic_groups()
    sets = [load_domain_set(p) for p in TOPIC_CORPUS]
    assert len(groups) == sum(len(s.domains) for s in sets) == 30
    assert {len(g) for g in groups} == {11}  # 5 memories + 6 queries each
    assert evaluate._in_topic_corpus(sets[0]) == 25 + 30  # its neutral queries are not in any group
    assert all(evaluate._in_topic_corpus(load_domain_set(p)) == 0 for p in HELD_OUT)
    assert evaluate._in_topic_corpus(BUILTIN) == 0


@pytest.mark.parametrize("path", DOMAIN_FILES, ids=lambda p: p.stem)
def test_held_out_sets_load_and_their_queries_share_no_content_word(path):
    """The held-out sets were written so that no query repeats a content word of its domain's memories
    (as an operator's unseen queries would not)."""
    stop = set("that this with from they them their then than when what which while into about after before over "
               "under have been were will would could should your only every each some just also very more most many "
               "such other these those where until once here first because".split())

    def words(text):
        return {w.lower() for w in re.findall(r"[A-Za-z]{4,}", text)} - stop

    domain_set = load_domain_set(path)
    assert len(domain_set.domains) == 5 and len(domain_set.queries) == 36 and domain_set.neutral_text
    for domain in domain_set.domains:
        memory_words = set().union(*map(words, domain.memories))
        for query in (q for q in domain_set.queries if q.domain == domain.name):
            assert not words(query.text) & memory_words, (domain.name, query.text)


def test_a_bad_domain_file_is_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import baldr_ops.cli.memory as cli

    monkeypatch.setattr(cli, "load_model_from_args", lambda args: pytest.fail("the model was loaded"))
    cases = {"missing.json": (None, "cannot read"),
             "binary.json": (b"\xff\xfe\x00\x01", "not UTF-8"),
             "broken.json": (b'{"domains": [', "not valid JSON"),
             "one.json": (json.dumps({"domains": [{"name": "a", "memories": ["m"], "heldout": ["h"] * 5,
                                                   "queries": ["q"]}]}).encode(), "domains: List should have at least 2"),
             "field.json": (json.dumps({"domains": [{"name": "a", "memories": ["m"], "heldout": ["h"] * 5,
                                                     "queries": [{"text": "q", "kind": "weird"}]}] * 2}).encode(),
                            "domains.0.queries.0"),
             "same.json": (json.dumps({"domains": [{"name": "a", "memories": ["m"], "heldout": ["h"] * 5,
                                                    "queries": ["q"]}] * 2}).encode(), "domain names repeat")}
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        assert main(["memory", "eval", "--domains", str(path)]) == 2
        err = capsys.readouterr().err
        assert message in err and str(path) in err and "Traceback" not in err, err
    with pytest.raises(UserError, match="schema_version 2"):
        (tmp_path / "v2.json").write_text(json.dumps({"schema_version": 2, "domains": []}))
        load_domain_set(tmp_path / "v2.json")


@pytest.mark.slow
def test_protocol_on_the_builtin_set(smollm2, monkeypatch):
    """The built-in set is one of the three the key rule and the defaults were chosen on (it is not in
    the topic corpus). What holds there: retrieval separates domains, recall meets its targets, fires
    on the neutral queries rarely and faintly and never on the neutral text, selectivity is far above
    chance, random directions do nothing; what does not: the selectivity interval (docs/memory.md,
    Evaluation)."""
    from baldr_ops.memory.config import PROFILE_ENV

    monkeypatch.delenv(PROFILE_ENV, raising=False)  # the default layer, whatever the environment names
    margins, ranked = [], []  # what each domain's gate weighs, and what the Spearman figures rank
    real_margins, real_spearman = LayerMemory.margins, evaluate.spearman

    def margins_read(self, states):
        out = real_margins(self, states)
        margins.append(out.max(dim=1).values.cpu().numpy())
        return out

    monkeypatch.setattr(LayerMemory, "margins", margins_read)
    monkeypatch.setattr(evaluate, "spearman", lambda x, y: ranked.append(x) or real_spearman(x, y))
    report = evaluate.run(smollm2)
    h = report.headline
    assert (report.layer, report.key_layer, report.key_metric, report.key_pooling) == (27, 28, "within", "topic")
    assert report.in_topic_corpus == 0
    assert report.domains_sha256 == BUILTIN.fingerprint() and report.memories == 16 and report.queries == 32
    # Held-out vocabularies: derived from text the memories do not contain.
    assert not set(report.vocabularies["cooking"]) <= {w for m in BUILTIN.domains[0].memories for w in m.lower().split()}
    for i in (h.own_recall, h.false_recall, h.auroc, h.kl_neutral):
        assert i.low <= i.mean <= i.high
    # measured by label 22/24, 0.977 (by record 23/24, 0.977; whitened, format v4: 20/24, 0.972)
    assert h.own_recall.mean >= 0.9 and h.auroc.mean > 0.95
    assert h.false_recall.mean <= 0.05  # measured by label 0/72 (by record 1/72; v4: 2/72)
    # Neutral queries: by label none recalls (by record 2 of 32 pairs, KL 2e-5 nats); the neutral text
    # recalls nothing, so its logits are the plain model's and perplexity is equal.
    assert h.neutral_recall.mean <= 0.1 and h.kl_neutral.mean < 1e-3 and h.perplexity_on == h.perplexity_off
    fixed = h.selectivity_total
    assert fixed.pairs == 4 * report.queries and fixed.low <= fixed.fraction <= fixed.high
    # Measured 121/128 = 94.5 % [90.6, 97.7] at the default layer 27 (85.2 % [75.8, 93.0] at layer 13,
    # the default before issue 15's value study, which chose 27 on this set among others).
    assert fixed.fraction >= 0.9 and fixed.low > 0.8
    assert h.selectivity_own.pairs == 24
    checks = {c.name: c for c in report.checks}
    assert checks["own-domain recall (default settings)"].passed and checks["recall AUROC (own vs other domain)"].passed
    # At layer 27 a random direction of the same size takes a little mass off the domains' words
    # (measured -0.0006 [-0.0012, -0.0002]; at layer 13 its interval held 0), so the specificity
    # control, which asks for an interval holding 0, is the one check missed here: every target of
    # issue 15 is met on this set, yet `memory eval` exits 1. The memories add to their own words
    # (+0.0098 [+0.0064, +0.0140]), far above the random direction.
    missed = [c.name for c in report.checks if c.passed is False]
    assert missed == ["random control: own-domain shift 95% CI includes 0"] and not report.passed, missed
    assert report.random_control.high < 0 < report.own_shift_fixed.low
    assert report.own_shift_fixed.low > 0 and abs(report.random_control.mean) < 0.25 * report.own_shift_fixed.mean
    assert report.dose_monotone and report.dose[0].own_mean == 0 and report.dose[0].kl_mean == 0
    assert [d.strength for d in report.dose] == [0, 0.5, 1, 2, 4]
    # The clip caps the nudge at 0.5 of each token's norm, which strength 2 already reaches on every
    # token of this set (measured: 4 gives exactly what 2 gives), so perplexity rises, then stays.
    ratios = [d.perplexity_ratio for d in report.dose]
    assert all(b >= a for a, b in zip(ratios, ratios[1:], strict=False)) and ratios[1] > ratios[0] and ratios[3] > ratios[2]
    g = report.gated
    assert 0 < g.recalled_pairs < 4 * report.queries and 0 < g.weight_total and math.isfinite(g.kl_recalled)
    assert report.spearman_fixed.pairs == 4 * report.queries and report.spearman_fixed.rho is not None
    # Proportionality ranks the recall score the gate weighs (a pair's margin over its threshold, as
    # the AUROC does), every pair at fixed strength, the recalled ones (margin > 0) when gated.
    margin = np.stack(margins, axis=1).reshape(-1)  # [query, domain], row-major like the pairs
    gated_ranked, fixed_ranked = ranked
    assert np.array_equal(np.array(fixed_ranked), margin)
    assert np.array_equal(np.array(gated_ranked), margin[margin > 0]) and len(gated_ranked) == g.recalled_pairs
