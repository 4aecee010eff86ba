"""Notebook helpers: recordings shared by notebooks 02-04 and the explorer, keyed by what made them.

Notebook 02 records every block over prompts x seeds and saves the `Recording` to
``<stats_dir>/<model>_blocks.safetensors``; notebooks 03, 04 and the explorer load that file only
when its key — the model's weights hash (`weights_hash`: transformers, text encoder, scheduler), the call settings, prompts, seeds and the
number of channels followed — matches their own run, and otherwise record it again with the same
function (so a recording from other weights, prompts, seeds or step counts is never reused, and each
notebook also runs alone).

Two passes, because per-token values are kept only for channels named before a run: pass 1 records
one clip without per-token values and chooses the channels (`stas.massive.choose_channels`: the MA
channels, or — when none passes the criteria — the top channels by peak/median, flagged
``fallback``); pass 2 records all clips keeping the per-token values of those channels plus two
controls (the non-MA channels whose peak/mean is closest to 6x, a "weak MA", and to 1x).

`record_footprint_of` says what `stas.record` allocates on the device for a pipeline and a call (README).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import torch

from .adapters import get_adapter
from .load import call_settings
from .massive import choose_channels, find_massive
from .record import Recording, record

ROOT = Path(__file__).resolve().parents[1]
# Prompts for a model that registered none (any real checkpoint): plain scenes with motion.
GENERIC_PROMPTS = ("a red ball bounces on a wooden floor", "a white boat sails across a calm blue lake",
                   "a brown dog runs along a sandy beach", "a green leaf falls slowly from a tree")


def quiet():
    """Silence diffusers' / transformers' loading progress bars and load reports (notebook outputs)."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tlog.disable_progress_bar()
    tlog.set_verbosity_error()


def default_prompts(pipe, n: int) -> list[str]:
    """The first ``n`` evaluation prompts ``pipe``'s registered model brings, else of `GENERIC_PROMPTS`.
    Raises ``ValueError`` when fewer than ``n`` exist (never a silent cut)."""
    from .evaluate import default_prompts as first_n
    from .registry import entry_of

    e = entry_of(pipe)
    return first_n(e.prompts if e is not None and e.prompts else GENERIC_PROMPTS, n)


def stats_path(model: str, stats_dir=None) -> Path:
    """``<stats_dir>/<model>_blocks.safetensors`` (default ``data/stats`` under the repo root)."""
    d = Path(stats_dir) if stats_dir is not None else ROOT / "data" / "stats"
    return d / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', str(model)).strip('_')}_blocks.safetensors"


def _update_with(h, module, sample: int) -> None:
    """Feed ``module``'s state dict into the sha256 ``h``: every tensor's name, shape and dtype, and its
    values (whole up to ``sample`` elements, else ``sample`` evenly strided ones, as float32). A BERT
    encoder's ``pooler.*`` is left out: video pipelines use the last hidden state, and a checkpoint saved
    without a pooler gets a random one at every load."""
    for name, t in module.state_dict().items():
        if name.startswith("pooler."):
            continue
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        flat = t.detach().reshape(-1)
        if flat.numel() > sample:
            flat = flat[torch.linspace(0, flat.numel() - 1, sample, device=flat.device).long()]
        h.update(flat.float().cpu().numpy().tobytes())


def _update_with_config(h, obj) -> None:
    """Feed a diffusers config (``obj.config``) and the class name into ``h``; keys starting with ``_`` are
    left out (``_use_default_values`` is a set, its order changes from one process to the next)."""
    h.update(type(obj).__name__.encode())
    cfg = {k: v for k, v in obj.config.items() if not k.startswith("_")}
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())


@torch.no_grad()
def weights_hash(pipe, sample: int = 65536) -> str:
    """A short sha256 (16 hex digits) of the weights that shape a recording: every transformer and the
    text encoder, plus the scheduler's class and config, so two schedules never share a key.

    Tensors up to ``sample`` elements are hashed whole, larger ones by ``sample`` evenly strided
    elements (a retrained model changes them all; hashing Wan-14B whole would take minutes). The VAE
    is not in it (it acts after the transformer: a recording does not depend on it); `vae_hash` is."""
    h = hashlib.sha256()
    mods = list(get_adapter(pipe).transformers)
    if getattr(pipe, "text_encoder", None) is not None:
        mods.append(pipe.text_encoder)
    for m in mods:
        _update_with(h, m, sample)
    sch = getattr(pipe, "scheduler", None)
    if sch is not None:
        _update_with_config(h, sch)
    return h.hexdigest()[:16]


@torch.no_grad()
def vae_hash(pipe, sample: int = 65536) -> str | None:
    """A short sha256 (16 hex digits) of the pipeline's VAE: its weights (sampled as in `weights_hash`) and
    its config (``latents_mean`` / ``latents_std`` decide the decode as much as the weights do). Every
    metric of a results table reads decoded pixels, so a table's provenance carries it.

    Decoding modes enter the hash only when switched on, so stock decoding keeps the default hash:
    ``enable_slicing`` as the flag alone (it decodes a batch one clip at a time; the tile sizes do not
    matter to it), ``enable_tiling`` as the flag with every tiling attribute diffusers' VAEs define
    (``tile_sample_*``, ``tile_latent_*`` and CogVideoX's ``tile_overlap_factor_*``). The hash does not
    know the call's size: with tiling on it differs from stock even for clips smaller than one tile,
    which decode identically. ``None`` for a pipeline without ``vae``."""
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return None
    h = hashlib.sha256()
    _update_with(h, vae, sample)
    _update_with_config(h, vae)
    mode = {}
    if getattr(vae, "use_slicing", False):
        mode["use_slicing"] = True
    if getattr(vae, "use_tiling", False):
        mode["use_tiling"] = True
        mode.update({k: v for k, v in vars(vae).items() if k.startswith(_TILING_ATTRS)})
    if mode:
        h.update(json.dumps(mode, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


_TILING_ATTRS = ("tile_sample_", "tile_latent_", "tile_overlap_factor_")  # diffusers' AutoencoderKL{Wan,CogVideoX}


def recording_key(pipe, prompts, seeds, call: dict, n_channels: int) -> dict:
    """What a study recording depends on (stored in its ``meta["key"]``)."""
    return {"weights": weights_hash(pipe), "call": {k: call[k] for k in sorted(call)},
            "prompts": list(prompts), "seeds": [int(s) for s in seeds], "n_channels": int(n_channels)}


@torch.no_grad()
def record_blocks(pipe, prompts, seeds, channels=(), full=(), call: dict | None = None) -> Recording:
    """Record every block over ``prompts`` x ``seeds``; returns the `Recording` (runs labelled).

    ``call``: the call settings (default: the adapter's native call). Runs the denoising loop exactly
    as `stas.generate` does (same seeded generator) but stops before the VAE decode
    (``output_type="latent"``): the statistics are those of the clips `generate` makes, at less cost."""
    kw = dict(call) if call is not None else call_settings(pipe)
    get_adapter(pipe).layout_for_call(kw["num_frames"], kw["height"], kw["width"])  # errors before any work
    with record(pipe, channels=list(channels), full=full) as rec:
        for p in prompts:
            for s in seeds:
                rec.label(prompt=p, seed=int(s))
                gen = torch.Generator(device=pipe._execution_device).manual_seed(int(s))
                pipe(prompt=p, generator=gen, output_type="latent", **kw)
    st = rec.stats
    st.meta.update(model=getattr(pipe, "stas_name", None), call=dict(kw))
    return st


def record_study(pipe, prompts, seeds, n_channels: int = 3, full_block=None, verbose=True, probe_steps=2,
                 call: dict | None = None):
    """The two-pass recording of notebook 02. Returns ``(stats, probe, chosen)``: ``stats`` of all
    clips with per-token values of the chosen channels (``meta["chosen"]``, ``meta["key"]``),
    ``probe`` the pass-1 recording of the first prompt/seed (with the whole hidden state at step 0 of
    ``full_block`` when given), ``chosen`` from `choose_channels`. The probe runs ``probe_steps``
    denoising steps (its step 0 has the same timestep as step 0 of the full schedule); None runs the
    full schedule."""
    kw = dict(call) if call is not None else call_settings(pipe)
    t0 = time.time()
    full = [(0, full_block)] if full_block is not None else ()
    pcall = dict(kw, num_inference_steps=min(probe_steps, kw["num_inference_steps"])) if probe_steps else kw
    probe = record_blocks(pipe, prompts[:1], seeds[:1], full=full, call=pcall)
    chosen = choose_channels(find_massive(probe), n_channels)
    chans = chosen["top"] + [chosen["weak"], chosen["plain"]]
    t1 = time.time()
    stats = record_blocks(pipe, prompts, seeds, channels=chans, call=kw)
    stats.meta["chosen"] = chosen
    stats.meta["key"] = recording_key(pipe, prompts, seeds, kw, n_channels)
    if verbose:
        print(f"pass 1 (1 clip, {probe.num_steps} steps): {t1 - t0:.1f} s; pass 2 ({len(prompts)} prompts x "
              f"{len(seeds)} seeds): {time.time() - t1:.1f} s; channels kept per token: {chans}")
    return stats, probe, chosen


def load_or_record(pipe, prompts, seeds, path, call: dict | None = None, n_channels: int = 3) -> Recording:
    """The recording at ``path`` when its key (`recording_key`: weights hash, call settings, prompts,
    seeds, channels) equals this run's; otherwise record it now with `record_study` and save it there.
    Prints which, and why a saved file was not used."""
    kw = dict(call) if call is not None else call_settings(pipe)
    path = Path(path)
    key = recording_key(pipe, prompts, seeds, kw, n_channels)
    if path.exists():
        st = Recording.load(path)
        old = st.meta.get("key")
        if old == json.loads(json.dumps(key)):
            print(f"loaded {path.name}: {st.num_runs} runs x {st.num_steps} steps x {len(st.blocks)} blocks "
                  f"(weights {key['weights']})")
            return st
        diff = sorted(k for k in key if (old or {}).get(k) != json.loads(json.dumps(key[k])))
        print(f"{path.name} was recorded with other {', '.join(diff) or 'settings'}: recording again")
    st, _, _ = record_study(pipe, list(prompts), list(seeds), n_channels=n_channels, call=kw)
    st.save(path)
    print(f"recorded and saved {path.name}")
    return st


def record_footprint_of(pipe, call: dict | None = None, channels: int = 0, blocks=None,
                        median_elems: int = 16384) -> int:
    """Bytes `stas.record` allocates on the device for one run of ``pipe`` with ``call`` (default: its
    native call): `stas.record.recording_bytes` with the blocks, hidden size and token count of the
    pipeline's adapter and the call's step count."""
    from .record import recording_bytes

    ad = get_adapter(pipe)
    kw = dict(call) if call is not None else call_settings(pipe)
    lay = ad.layout_for_call(kw["num_frames"], kw["height"], kw["width"])
    nb = ad.num_blocks if blocks is None else len(blocks)
    return recording_bytes(nb, ad.hidden_size, lay.num_tokens, kw["num_inference_steps"], channels, median_elems)
