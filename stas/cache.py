"""Recordings shared by the notebooks: one place that records, saves and reloads them.

Notebook 02 records every block over prompts x seeds and saves the `Recording` to
``data/stats/<model>_blocks.safetensors``; notebooks 03, 04 and the explorer load that file when it
exists (same model) and otherwise record it themselves with the same function, so each notebook
also runs alone.

Two passes, because per-token values are kept only for channels named before a run: pass 1 records
one clip without per-token values and finds the MA channels (`stas.find_massive`); pass 2 records
all clips keeping the per-token values of those channels plus two controls (the non-MA channels
whose peak/mean is closest to 6x, a "weak MA", and to 1x, a plain channel; the paper's ablation).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import torch

from .house.world import EVAL_PROMPTS
from .load import check_call, load, native_defaults
from .massive import find_massive
from .record import Recording, record

ROOT = Path(__file__).resolve().parents[1]


def quiet():
    """Silence diffusers' / transformers' loading progress bars and load reports (notebook outputs)."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tlog.disable_progress_bar()
    tlog.set_verbosity_error()


def stats_path(model: str) -> Path:
    """``data/stats/<model>_blocks.safetensors`` under the repo root (``$STAS_STATS_DIR`` overrides)."""
    d = Path(os.environ.get("STAS_STATS_DIR", ROOT / "data" / "stats"))
    return d / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', model)}_blocks.safetensors"


def results_dir() -> Path:
    """``results/`` under the repo root (``$STAS_RESULTS_DIR`` overrides): tables of notebooks 06-07."""
    return Path(os.environ.get("STAS_RESULTS_DIR", ROOT / "results"))


def default_prompts(n: int) -> list[str]:
    """The first ``n`` of the house world's evaluation captions."""
    return list(EVAL_PROMPTS[:n])


def call_kwargs(pipe, **over) -> dict:
    """Native call size, overridden by ``$STAS_HEIGHT``, ``$STAS_WIDTH``, ``$STAS_FRAMES``,
    ``$STAS_STEPS`` and then by ``over``."""
    kw = native_defaults(pipe)
    env = {"height": "STAS_HEIGHT", "width": "STAS_WIDTH", "num_frames": "STAS_FRAMES", "num_inference_steps": "STAS_STEPS"}
    for k, e in env.items():
        if os.environ.get(e):
            kw[k] = int(os.environ[e])
    kw.update(over)
    return kw


def choose_channels(ma, n: int = 3) -> dict:
    """MA channels to follow (at most ``n``; when the report has none — e.g. a random model — the
    top channels by peak/median, flagged ``"fallback": True``) and two control channels."""
    chans = list(ma.channels[:n])
    fallback = not chans
    if fallback:
        chans = [int(c) for c in ma.ratio_median.nanmedian(0).values.argsort(descending=True)[:n]]
    weak = ma.pick_channel(6.0, exclude=chans)
    plain = ma.pick_channel(1.0, exclude=chans + [weak])
    return {"ma": chans, "weak": weak, "plain": plain, "fallback": fallback}


@torch.no_grad()
def record_blocks(pipe, prompts, seeds, channels=(), full=(), **call) -> Recording:
    """Record every block over ``prompts`` x ``seeds``; returns the `Recording` (runs labelled).

    Runs the denoising loop exactly as `stas.generate` does (same native sizes, same seeded
    generator) but stops before the VAE decode (``output_type="latent"``): the statistics are those
    of the clips `generate` makes, at ~30 % less CPU time."""
    kw = call_kwargs(pipe, **call)
    check_call(pipe, kw["num_frames"], kw["height"], kw["width"])
    with record(pipe, channels=list(channels), full=full) as rec:
        for p in prompts:
            for s in seeds:
                rec.label(prompt=p, seed=int(s))
                gen = torch.Generator(device=pipe._execution_device).manual_seed(int(s))
                pipe(prompt=p, generator=gen, output_type="latent", **kw)
    st = rec.stats
    st.meta.update(model=getattr(pipe, "stas_name", None), call={k: v for k, v in kw.items()})
    return st


def record_study(pipe, prompts, seeds, n_channels: int = 3, full_block=None, verbose=True, probe_steps=2, **call):
    """The two-pass recording of notebook 02. Returns ``(stats, probe, chosen)``: ``stats`` of all
    clips with per-token values of the chosen channels, ``probe`` the pass-1 recording of the first
    prompt/seed (with the whole hidden state at step 0 of ``full_block`` when given), ``chosen``
    from `choose_channels`. The probe runs ``probe_steps`` denoising steps (its step 0 has the same
    timestep as step 0 of the full schedule); None runs the full schedule."""
    t0 = time.time()
    full = [(0, full_block)] if full_block is not None else ()
    pcall = dict(call, num_inference_steps=probe_steps) if probe_steps else call
    probe = record_blocks(pipe, prompts[:1], seeds[:1], full=full, **pcall)
    chosen = choose_channels(find_massive(probe), n_channels)
    chans = chosen["ma"] + [chosen["weak"], chosen["plain"]]
    t1 = time.time()
    stats = record_blocks(pipe, prompts, seeds, channels=chans, **call)
    stats.meta["chosen"] = chosen
    if verbose:
        print(f"pass 1 (1 clip, {probe.num_steps} steps): {t1 - t0:.1f} s; pass 2 ({len(prompts)} prompts x {len(seeds)} seeds): "
              f"{time.time() - t1:.1f} s; channels kept per token: {chans}")
    return stats, probe, chosen


def load_or_record(model: str, prompts=None, seeds=(0,), path=None, **call) -> Recording:
    """The saved recording of ``model`` if ``path`` (default `stats_path`) holds one, else record it
    now with `record_study` (``prompts`` default: 2 house captions) and save it there."""
    path = Path(path or stats_path(model))
    if path.exists():
        st = Recording.load(path)
        if st.meta.get("model") == model:
            print(f"loaded {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: "
                  f"{st.num_runs} runs x {st.num_steps} steps x {len(st.blocks)} blocks")
            return st
    pipe = load(model)
    st, _, _ = record_study(pipe, list(prompts or default_prompts(2)), list(seeds), **call)
    st.save(path)
    print(f"recorded and saved {path}")
    return st
