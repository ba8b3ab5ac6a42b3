"""A domain's vocabulary, by log-odds of its words in domain text against general text.

Used to measure a nudge: the shift of next-token probability mass onto the domain's vocabulary.
For the evaluation the domain text is held out (never the stored memories), so the measure cannot
simply echo the memory text back. Words are lowercase alphabetic, 4+ letters; each kept word must be
a single token with a leading space (how a word is predicted mid-sentence). Background: the built-in
reference texts and probes plus, where the standard library ships it, the prose of Python's help
topics (``pydoc_data``, ~50 k words of plain English), which pushes generic words far down.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache

from baldr_ops.memory import corpus

_WORD = re.compile(r"[A-Za-z]{4,}")
PRIOR = 0.01  # pseudo-count: a word absent from the background is not infinitely specific


def word_counts(texts: Iterable[str]) -> Counter:
    counts: Counter = Counter()
    for text in texts:
        counts.update(w.lower() for w in _WORD.findall(text))
    return counts


@lru_cache(maxsize=1)
def background_counts() -> Counter:
    counts = word_counts(corpus.REFERENCE_TEXTS)
    counts.update(word_counts(corpus.PROBE_QUERIES))
    try:
        from pydoc_data.topics import topics
    except ImportError:  # minimal Python builds strip it; the reference texts still count
        return counts
    counts.update(word_counts(topics.values()))
    return counts


def lexicon(tokenizer, domain_texts: Sequence[str], other_texts: Sequence[str] = (), size: int = 30) -> list[int]:
    """Token ids of the ``size`` words most specific to ``domain_texts`` (log-odds against the
    background plus ``other_texts``, e.g. the other domains' text)."""
    own = word_counts(domain_texts)
    rest = Counter(background_counts())
    rest.update(word_counts(other_texts))
    n_own, n_rest = max(sum(own.values()), 1), max(sum(rest.values()), 1)
    score = {w: math.log((c + PRIOR) / n_own) - math.log((rest[w] + PRIOR) / n_rest) for w, c in own.items()}
    ids: list[int] = []
    for word in sorted(score, key=lambda w: (-score[w], w)):
        tokens = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        if len(tokens) == 1 and tokens[0] not in ids:
            ids.append(tokens[0])
        if len(ids) == size:
            break
    return ids
