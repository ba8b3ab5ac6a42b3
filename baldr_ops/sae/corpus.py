"""Text for SAE evaluation and training, streamed and cut into fixed-length token windows.

Two sources of text:

* `builtin_texts(split)`: a fixed English corpus available offline on any CPython: the prose
  paragraphs of the Python Language Reference topics that ship with the standard library
  (``pydoc_data.topics``, the text ``help("while")`` prints). Topics are taken in sorted order;
  every `HELDOUT_EVERY`-th topic forms the held-out split (evaluation), the rest the train split.
  Nothing is downloaded or committed; `corpus_fingerprint` names the exact text.
* `file_texts(path)`: a user's text file, read `chunk_chars` characters at a time (never whole).

`token_windows` packs the texts' tokens into windows of ``seq_len`` tokens (SAELens' packing), each
starting with the tokenizer's BOS when the tokenizer adds one (Gemma needs it); `window_batches`
right-pads the windows into model inputs with an attention mask.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from baldr_ops.errors import UserError
from baldr_ops.sae.defaults import BUILTIN_NAME, DEFAULT_MASSIVE_FACTOR  # noqa: F401 - re-exported

if TYPE_CHECKING:  # torch is imported where used, so the CLI's --help can read the constants cheaply
    import torch

Split = Literal["train", "heldout"]
HELDOUT_EVERY = 6  # on CPython 3.11: 14 of the 79 topics, ~6.5 k SmolLM2 tokens held out, ~51 k to train on
DEFAULT_CHUNK_CHARS = 1 << 16
DOCUMENT_SEPARATOR = "\n\n"

_UNDERLINE = re.compile(r"^[*=\-~^\"]{3,}$")


def _prose_paragraphs(topic_text: str) -> list[str]:
    """The topic's prose: unindented paragraphs of some length, re-flowed onto one line each.
    Indented blocks (grammar rules, code examples) and headings are left out."""
    out = []
    for block in re.split(r"\n\s*\n", topic_text):
        lines = block.split("\n")
        if not lines or lines[0][:1].isspace() or any(_UNDERLINE.match(line.strip()) for line in lines):
            continue
        text = " ".join(line.strip() for line in lines)
        if len(text) >= 60:
            out.append(text)
    return out


def _builtin_topics() -> list[tuple[str, str]]:
    try:
        from pydoc_data.topics import topics
    except ImportError as exc:  # some minimal Python builds strip it
        raise UserError("the built-in corpus needs the standard library's pydoc_data module",
                        hint="give a text file with --text FILE") from exc
    return [(name, topics[name]) for name in sorted(topics)]


def builtin_texts(split: Split = "heldout") -> Iterator[str]:
    """One text per Language Reference topic of the split, in sorted topic order."""
    for index, (_, text) in enumerate(_builtin_topics()):
        if (index % HELDOUT_EVERY == 0) == (split == "heldout"):
            paragraphs = _prose_paragraphs(text)
            if paragraphs:
                yield DOCUMENT_SEPARATOR.join(paragraphs)


def corpus_fingerprint(split: Split) -> str:
    """sha256 (first 16 hex digits) of the split's text, so a report says exactly what it read."""
    digest = hashlib.sha256()
    for text in builtin_texts(split):
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


# -- files -----------------------------------------------------------------------------------------
Opener = Callable[[Path], "object"]


def _open_text(path: Path):
    return open(path, encoding="utf-8", errors="replace")


def check_text_file(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"text file {path} does not exist")
    if not path.is_file():
        raise UserError(f"{path} is not a file", hint="give a UTF-8 text file")
    return path


def file_texts(path: str | os.PathLike, chunk_chars: int = DEFAULT_CHUNK_CHARS,
               opener: Opener = _open_text) -> Iterator[str]:
    """The file's text in pieces of about ``chunk_chars`` characters, cut at whitespace so no word
    is split between two pieces (a word longer than a chunk is cut anyway). Memory: one chunk."""
    path = check_text_file(path)
    carry = ""
    with opener(path) as fh:
        while True:
            chunk = fh.read(chunk_chars)
            if not chunk:
                break
            text = carry + chunk
            cut = max(text.rfind(" "), text.rfind("\n"))
            if cut <= 0 or len(text) - cut > chunk_chars:
                carry, piece = "", text
            else:
                piece, carry = text[:cut], text[cut:]
            if piece.strip():
                yield piece
    if carry.strip():
        yield carry


class TextSource:
    """A re-readable text source: `texts()` starts from the beginning on every call (one epoch)."""

    def __init__(self, name: str, texts: Callable[[], Iterable[str]], separator: str):
        self.name = name
        self.texts = texts
        self.separator = separator  # put between consecutive texts: "" for the pieces of one file

    def has_text(self) -> bool:
        """Whether there is any non-blank text (reads only up to the first non-blank piece)."""
        return next(iter(self.texts()), None) is not None


def text_source(spec: str | os.PathLike | None, split: Split = "heldout",
                chunk_chars: int = DEFAULT_CHUNK_CHARS, opener: Opener = _open_text) -> TextSource:
    """``None`` or ``"builtin"``: the built-in corpus' split; anything else: a text file."""
    if spec is None or str(spec) == BUILTIN_NAME:
        _builtin_topics()  # fail now, with a clear message, where pydoc_data is missing
        return TextSource(f"builtin:{split} (Python Language Reference, sha256 {corpus_fingerprint(split)})",
                          lambda: builtin_texts(split), DOCUMENT_SEPARATOR)
    path = check_text_file(spec)
    return TextSource(str(path), lambda: file_texts(path, chunk_chars, opener), "")


# -- tokens ----------------------------------------------------------------------------------------
def _bos_id(tokenizer) -> int | None:
    """The BOS id when the tokenizer adds one by default (Gemma), else None (SmolLM2, Qwen)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    probe = tokenizer("a")["input_ids"]
    return bos if probe and probe[0] == bos else None


def token_windows(tokenizer, texts: Iterable[str], seq_len: int, max_tokens: int | None = None,
                  separator: str = DOCUMENT_SEPARATOR) -> Iterator[list[int]]:
    """Windows of exactly ``seq_len`` token ids (the last one may be shorter), packing the texts'
    tokens end to end with ``separator`` between texts; at most ``max_tokens`` tokens in all."""
    if seq_len < 2:
        raise UserError(f"the window length must be at least 2 tokens, got {seq_len}")
    bos = _bos_id(tokenizer)
    room = seq_len - (bos is not None)
    sep_ids = tokenizer(separator, add_special_tokens=False)["input_ids"]
    pending: list[int] = []
    emitted = 0

    def window(ids: list[int]) -> list[int]:
        return ([bos] if bos is not None else []) + ids

    for number, text in enumerate(texts):
        pending.extend((sep_ids if number else []) + tokenizer(text, add_special_tokens=False)["input_ids"])
        while len(pending) >= room:
            out = window(pending[:room])
            if max_tokens is not None and emitted + len(out) > max_tokens:
                out = out[: max_tokens - emitted]
            if len(out) >= 2:
                yield out
            emitted += len(out)
            del pending[:room]
            if max_tokens is not None and emitted >= max_tokens:
                return
    if pending:
        out = window(pending)
        if max_tokens is not None:
            out = out[: max_tokens - emitted]
        if len(out) >= 2:
            yield out


def window_batches(windows: Iterable[list[int]], batch_size: int, pad_id: int,
                   device: str | torch.device = "cpu") -> Iterator[dict[str, torch.Tensor]]:
    """Right-padded batches: input_ids and attention_mask (1 on real tokens), [batch, longest]."""
    import torch

    batch: list[list[int]] = []

    def emit() -> dict[str, torch.Tensor]:
        longest = max(len(w) for w in batch)
        ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, w in enumerate(batch):
            ids[row, : len(w)] = torch.tensor(w)
            mask[row, : len(w)] = 1
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}

    for w in windows:
        batch.append(w)
        if len(batch) == batch_size:
            yield emit()
            batch = []
    if batch:
        yield emit()


def pad_id(tokenizer) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    return int(pad or 0)


# -- which tokens count ------------------------------------------------------------------------------


def massive_norm(norms: torch.Tensor, counted: torch.Tensor, factor: float = DEFAULT_MASSIVE_FACTOR
                 ) -> torch.Tensor:
    """The counted tokens whose residual norm exceeds ``factor`` times the median norm of the counted
    tokens: the one rule `sae eval`, `sae train` (per batch, as they stream) and `sae profile` (over
    all prompts at a layer) use."""
    import torch

    if not counted.any():
        return torch.zeros_like(counted)
    return counted & (norms > factor * norms[counted].median())


def outlier_mask(hidden: torch.Tensor, valid: torch.Tensor, massive_factor: float = DEFAULT_MASSIVE_FACTOR
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, massive) boolean masks, [batch, seq], over a right-padded batch.

    ``first``: position 0 of each window (the attention sink: ~150x the median norm on SmolLM2 from
    layer ~8 on). ``massive``: any other real token whose residual norm exceeds ``massive_factor``
    times the median norm of the batch's real, non-first tokens.
    """
    import torch

    valid = valid.bool()
    first = torch.zeros_like(valid)
    first[:, 0] = valid[:, 0]
    return first, massive_norm(hidden.float().norm(dim=-1), valid & ~first, massive_factor)
