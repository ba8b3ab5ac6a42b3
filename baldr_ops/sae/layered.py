"""A directory of per-layer SAEs, opened lazily: one layer's weights in memory at a time.

Gemma-4-31B has 60 layers and its SAEs (encoder + decoder, bf16) add up to ~55 GB, about the size
of the model itself, so they cannot all sit beside it. `LayeredSAEs(root)` lists the layers from
directory names alone (no weight file is opened) and loads one layer's SAE when asked, dropping the
previously loaded one first (an LRU of ``cache_size``, 1 by default).

Layouts recognised, each subdirectory any format `baldr_ops.sae.formats` reads:

    root/layers.12/                         sparsify (layers.12.mlp and other non-residual hook
    root/layer_12/                            points are skipped)
    root/blocks.12.hook_resid_post/         SAELens
    root/layer_12/width_16k/average_l0_71/  Gemma Scope v1 (several variants per layer)
    root/layer_12_width_16k_l0_small/       Gemma Scope 2 (several variants per layer)

Where a layer has several SAEs (widths, L0s) ``variant`` picks one by substring.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from baldr_ops.errors import UserError
from baldr_ops.research.models import layer_ranges
from baldr_ops.sae.formats import FORMATS, layer_from_name, load_sae, reads_residual_stream, split_layer_name
from baldr_ops.sae.model import SparseAutoencoder

# How deep under a layer directory to look for the SAE itself (Gemma Scope v1 nests two levels).
_MAX_DEPTH = 3


@dataclass(frozen=True)
class LayerSAE:
    """One SAE found in the directory: its layer, where it is, its format and what tells it apart."""

    layer: int
    path: Path
    format: str
    variant: str  # the directory path under root minus the layer part, '' when there is none


def _format_of(path: Path) -> str | None:
    for fmt in FORMATS:
        if fmt.detect(path):
            return fmt.name
    return None


def _sae_dirs_under(path: Path, depth: int = 0) -> list[tuple[Path, str]]:
    """(directory, format) of every SAE at or below ``path``, by file names only."""
    found = _format_of(path)
    if found:
        return [(path, found)]
    if depth >= _MAX_DEPTH:
        return []
    out = []
    for child in sorted(p for p in path.iterdir() if p.is_dir()):
        out.extend(_sae_dirs_under(child, depth + 1))
    return out


def _variant(sae_dir: Path, layer_dir: Path) -> str:
    """What tells this SAE apart from the layer's others: width_16k/average_l0_71, hook_resid_post."""
    _, rest = split_layer_name(layer_dir.name)
    below = sae_dir.relative_to(layer_dir).as_posix()
    return "/".join(p for p in (rest, "" if below == "." else below) if p)


def scan(root: Path) -> tuple[list[LayerSAE], list[str]]:
    """Every residual-stream SAE under ``root`` by layer, and the directories skipped (with why)."""
    entries, skipped = [], []
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        layer = layer_from_name(child.name)
        if layer is None:
            continue
        if reads_residual_stream(child.name) is False:
            skipped.append(f"{child.name} (not the residual stream)")
            continue
        for sae_dir, fmt in _sae_dirs_under(child):
            entries.append(LayerSAE(layer, sae_dir, fmt, _variant(sae_dir, child)))
    return entries, skipped


def is_layered(path: Path) -> bool:
    """A directory that is not itself an SAE but holds per-layer SAE directories."""
    path = Path(path)
    if not path.is_dir() or _format_of(path):
        return False
    return bool(scan(path)[0])


class LayeredSAEs:
    """Per-layer SAEs under one root, loaded on request. ``cache_size`` SAEs stay loaded at most;
    the oldest is dropped *before* the next is read, so two never coexist when it is 1."""

    def __init__(self, root: str | Path, *, variant: str | None = None, cache_size: int = 1,
                 device: str = "cpu", dtype: torch.dtype | None = None, encoder_only: bool = False,
                 expect_d_in: int | None = None):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise UserError(f"SAE directory {self.root} does not exist")
        if cache_size < 1:
            raise UserError(f"cache_size must be at least 1, got {cache_size}")
        self.variant = variant
        self.cache_size = cache_size
        self.device, self.dtype, self.encoder_only, self.expect_d_in = device, dtype, encoder_only, expect_d_in
        self.entries, self.skipped = scan(self.root)
        if not self.entries:
            raise UserError(f"{self.root} holds no per-layer SAE directories",
                            hint="expected subdirectories such as layers.12/, layer_12/ or "
                                 "blocks.12.hook_resid_post/, each an SAE in a supported format")
        self._cache: OrderedDict[tuple[int, bool], SparseAutoencoder] = OrderedDict()
        self.loads = 0  # how many times a weight file was read (tests and benchmarks look)

    @property
    def layers(self) -> list[int]:
        return sorted({e.layer for e in self.entries})

    def variants(self, layer: int) -> list[str]:
        return [e.variant for e in self.entries if e.layer == layer]

    def entry(self, layer: int) -> LayerSAE:
        """The one SAE for ``layer``, or a clear error (no such layer; several and no variant)."""
        candidates = [e for e in self.entries if e.layer == layer]
        if not candidates:
            raise UserError(f"{self.root} has no SAE for layer {layer}",
                            hint=f"layers present: {layer_ranges(self.layers)}")
        if self.variant is not None:
            candidates = [e for e in candidates if self.variant in e.variant]
            if not candidates:
                raise UserError(f"{self.root}: no SAE for layer {layer} matches variant {self.variant!r}",
                                hint=f"variants: {', '.join(self.variants(layer))}")
        if len(candidates) > 1:
            raise UserError(f"{self.root} has {len(candidates)} SAEs for layer {layer}",
                            hint=f"pick one with a variant: {', '.join(e.variant for e in candidates)}")
        return candidates[0]

    def get(self, layer: int, *, encoder_only: bool | None = None) -> SparseAutoencoder:
        """Layer ``layer``'s SAE, reading only its own weight file (and only its encoder when
        encoder-only), and checking it names the same layer as its directory."""
        encoder_only = self.encoder_only if encoder_only is None else encoder_only
        key = (layer, encoder_only)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        entry = self.entry(layer)
        while len(self._cache) >= self.cache_size:
            self._cache.popitem(last=False)
        sae = load_sae(entry.path, format=entry.format, device=self.device, dtype=self.dtype,
                       encoder_only=encoder_only, expect_d_in=self.expect_d_in)
        self.loads += 1
        if sae.config.layer is not None and sae.config.layer != layer:
            raise UserError(f"{entry.path}: the SAE says it reads layer {sae.config.layer} but its directory "
                            f"says layer {layer}")
        if sae.config.layer is None:
            sae.config = sae.config.model_copy(update={"layer": layer})
        self._cache[key] = sae
        return sae

    def clear(self) -> None:
        self._cache.clear()

    def __contains__(self, layer: int) -> bool:
        return any(e.layer == layer for e in self.entries)

    def __len__(self) -> int:
        return len(self.layers)
