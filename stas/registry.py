"""Named models and model plug-ins: the one place that knows which models ``stas.load`` can load by name.

A plug-in (a package beside the adapters, e.g. ``stas.house``) registers a `ModelEntry` per name
when it is imported: how to load it, its adapter class (which carries the model's native call
defaults and its true frame layout), its STAS defaults, the metric functions that apply to its
prompts, a clip feature extractor and its evaluation prompts. Generic modules ask this registry;
none of them imports a plug-in. Plug-ins are imported lazily, on the first lookup, from `PLUGINS`.

    stas.registry.names()                 # every registered name
    stas.registry.entry("house")          # its ModelEntry (None for a directory / hub id)
    stas.registry.entry_of(pipe)          # the entry of a pipeline stas.load made (or None)
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

# Modules that register models when imported. The only place a plug-in is named.
PLUGINS = ("stas.house",)

_ENTRIES: dict[str, "ModelEntry"] = {}
_loaded = False


@dataclass(frozen=True)
class ModelEntry:
    """A model ``stas.load`` knows by name.

    Args:
        name: the name ``stas.load`` accepts.
        load: ``(device, dtype) -> pipeline``.
        adapter: `stas.adapters.Adapter` subclass for its pipelines (None: found by transformer class).
        stas_defaults: keyword arguments of `stas.STASConfig` chosen for this model (without channels);
            None: the paper's setting scaled to the model (`stas.STASConfig.paper`).
        metrics: ``{name: fn(video, prompt) -> dict}`` metrics that apply to this model's prompts
            (e.g. the house world's ground truth); each returns NaN where it does not apply.
        features: ``fn(list of clips) -> (N, D) array``, a clip feature extractor (KID to real clips,
            `stas.evaluate.kid_by_method`).
        prompts: the model's evaluation prompts (``default_prompts`` takes the first n).
        reference: ``fn(prompts, per_prompt, num_frames) -> [(prompt, seed, clip)]`` real clips
            matched to prompts (KID, reference rows and the VAE floor), or None.
        round_trip: ``fn(pipe, clips) -> clips``: clips (F, 3, H, W) in [0, 1] after the model's VAE
            encode + decode (no transformer): the ``vae_floor`` reference rows of the temporal metrics
            (`stas.evaluate.floor_rows`), or None.
        control: the registered name of a control model trained the same way (e.g. the house model's
            uniform-encoder variant), for notebook 03's comparison; None when there is none.
    """

    name: str
    load: Callable
    adapter: type | None = None
    stas_defaults: dict | None = None
    metrics: dict = field(default_factory=dict)
    features: Callable | None = None
    prompts: tuple = ()
    reference: Callable | None = None
    round_trip: Callable | None = None
    control: str | None = None


def register(entry: ModelEntry) -> ModelEntry:
    """Add (or replace) ``entry`` under ``entry.name``."""
    _ENTRIES[entry.name] = entry
    return entry


def _load_plugins():
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in PLUGINS:
            importlib.import_module(mod)


def names() -> list[str]:
    """Every registered model name."""
    _load_plugins()
    return sorted(_ENTRIES)


def entry(name: str | None) -> ModelEntry | None:
    """The entry registered as ``name``, or None."""
    if name is None:
        return None
    _load_plugins()
    return _ENTRIES.get(name)


def entry_of(pipe) -> ModelEntry | None:
    """The entry of a pipeline loaded by name through ``stas.load`` (its ``stas_name``), or None."""
    return entry(getattr(pipe, "stas_name", None))
