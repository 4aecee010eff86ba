"""The layer around the core: registry and plug-in, native defaults and presets, STASConfig.paper,
study recordings keyed by weights + call settings, record's device footprint."""

import pytest
import torch

import stas
from stas import registry, study


def test_registry_names_and_house_plugin_is_only_imported_by_the_registry():
    import pathlib
    import re

    assert {"house", "house-uniform", "tiny-random-wan", "tiny-random-cogvideox"} <= set(registry.names())
    root = pathlib.Path(stas.__file__).parent
    for f in root.glob("*.py"):  # generic modules never import the plug-in
        if f.name != "registry.py":
            assert not re.search(r"from \.house|import stas\.house|from stas\.house", f.read_text()), f.name


def test_house_uniform_adapter_tells_the_truth():
    """Issue 8 gate 5: the uniform control's 8 returned frames are each their own latent frame."""
    from stas.house.adapter import HouseAdapter, HouseUniformAdapter

    tiny = stas.tiny_random_pipeline("wan", text_encoder=False)
    uni, cau = HouseUniformAdapter(tiny), HouseAdapter(tiny)
    lu = uni.layout_for_call(29, 128, 128)
    assert (lu.latent_frames, lu.temporal_factor, lu.num_pixel_frames) == (8, 1, 8)
    lc = cau.layout_for_call(29, 128, 128)
    assert (lc.latent_frames, lc.temporal_factor, lc.num_pixel_frames) == (8, 4, 29)
    assert uni.defaults()["max_sequence_length"] == 32
    assert stas.layout.crosses_latent_frames(8, 1).sum() == 7 and stas.layout.crosses_latent_frames(29, 4).sum() == 7


def test_native_defaults_text_length_and_quick_preset(wan, cog):
    from stas.adapters import CogVideoXAdapter, WanAdapter

    assert WanAdapter(wan).defaults()["max_sequence_length"] == 64      # the tiny BERT's 64 positions
    assert CogVideoXAdapter(cog).defaults()["max_sequence_length"] == 16  # transformer.max_text_seq_length
    q = WanAdapter(wan).preset("quick")
    assert (q["height"], q["width"], q["num_frames"], q["num_inference_steps"]) == (240, 416, 17, 10)
    with pytest.raises(ValueError, match="preset"):
        WanAdapter(wan).preset("huge")
    with pytest.raises(ValueError, match="multiples"):
        stas.call_settings(wan, height=30)


def test_stas_config_paper_scales_to_the_model(wan):
    cfg = stas.STASConfig.paper(wan, [3], 10)
    assert cfg.blocks == (1,) and cfg.steps == 4 and cfg.channels == (3,) and cfg.alpha == 1.0
    with pytest.raises(TypeError):
        stas.STASConfig(channels=(3,))   # no model's numbers: steps and blocks are required


def test_study_recording_is_reused_only_for_the_same_key(wan, tmp_path, capsys):
    kw = stas.call_settings(wan, num_inference_steps=2)
    path = tmp_path / "w_blocks.safetensors"
    a = study.load_or_record(wan, ["a red ball"], [0], path, call=kw, n_channels=1)
    assert "recorded and saved" in capsys.readouterr().out
    b = study.load_or_record(wan, ["a red ball"], [0], path, call=kw, n_channels=1)
    assert "loaded" in capsys.readouterr().out and torch.equal(a["chan_max"], b["chan_max"])
    c = study.load_or_record(wan, ["a red ball"], [0], path, call=dict(kw, num_inference_steps=3), n_channels=1)
    assert "other call" in capsys.readouterr().out and c.num_steps == 3
    other = stas.tiny_random_pipeline("wan", seed=1)   # other weights, same name and settings
    other.stas_name = wan.stas_name
    study.load_or_record(other, ["a red ball"], [0], path, call=dict(kw, num_inference_steps=3), n_channels=1)
    assert "other weights" in capsys.readouterr().out


def test_record_footprint_of_is_what_record_allocates(wan):
    kw = stas.call_settings(wan, num_inference_steps=2)
    with stas.record(wan, channels=[1, 2]) as rec:
        stas.generate(wan, "a red ball", seed=0, **kw)
        used = sum(v.numel() * v.element_size() for hk in rec._hooks.values() for v in hk.bufs.values())
    assert study.record_footprint_of(wan, kw, channels=2) == used


@pytest.mark.parametrize("fn", ["weights_hash", "vae_hash"])
def test_hashes_are_the_same_in_every_process(fn):
    """A recording saved by one notebook must be found by the next (a new process, another hash seed), and a
    table's VAE must read as the one loaded there: diffusers' config carries a set-ordered
    "_use_default_values" that must not enter either hash."""
    import subprocess
    import sys

    code = f"import stas; from stas import study; print(study.{fn}(stas.load('tiny-random-wan', device='cpu')))"
    out = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**__import__("os").environ, "PYTHONHASHSEED": seed}).stdout.split()[-1]
           for seed in ("1", "2", "3")}
    assert len(out) == 1 and len(out.pop()) == 16


def test_vae_hash_sees_the_decoder_and_weights_hash_does_not():
    """A results table reads every metric through the VAE, so its provenance must change with the VAE
    (weights or latents_mean / latents_std) while a recording's key (`weights_hash`) must not."""
    from stas import evaluate as E

    pipe = stas.load("tiny-random-wan", device="cpu")
    w, v = study.weights_hash(pipe), study.vae_hash(pipe)
    assert len(v) == 16 and v != w
    meta = dict(model="tiny-random-wan", weights=w, vae=v)
    assert E.weights_text(meta, pipe) == f"Model tiny-random-wan, weights `{w}` (the ones loaded here), VAE `{v}` (as loaded here)."
    assert "VAE not recorded" in E.weights_text(dict(model="m", weights=w), pipe)
    with torch.no_grad():
        next(pipe.vae.decoder.parameters()).add_(1e-3)
    v2 = study.vae_hash(pipe)
    assert v2 != v and study.weights_hash(pipe) == w
    assert E.weights_text(meta, pipe).endswith(f"VAE `{v}` (loaded here: VAE `{v2}`).")
    pipe.vae.register_to_config(latents_mean=[0.5] * len(pipe.vae.config.latents_mean))
    assert study.vae_hash(pipe) not in (v, v2)
    prov = E.provenance(pipe)
    assert prov["vae"] == study.vae_hash(pipe) and prov["weights"] == w
    pipe.vae.enable_tiling()  # tiled decoding enters the hash; stock decoding keeps the default hash
    v3 = study.vae_hash(pipe)
    assert v3 != prov["vae"]
    pipe.vae.disable_tiling()
    assert study.vae_hash(pipe) == prov["vae"]
    pipe.vae.enable_slicing()
    assert study.vae_hash(pipe) not in (prov["vae"], v3)
    pipe.vae.disable_slicing()
    pipe.vae = None
    assert study.vae_hash(pipe) is None
    assert E.weights_text(meta, pipe).endswith(f"VAE `{v}` (loaded here: no VAE).")
    assert E.weights_text(dict(meta, vae=None), pipe).endswith("no VAE (as loaded here).")


def test_vae_hash_takes_decoding_modes_only_when_they_change_the_decode(wan, cog):
    """Slicing enters as its flag alone (tile sizes do not touch it); tiling enters with every tiling
    attribute, CogVideoX's overlap factors too; with both off, tiling attributes leave the hash alone."""
    saved = [(p.vae, dict(vars(p.vae))) for p in (wan, cog)]   # session fixtures: put every attribute back
    try:
        _check_vae_hash_modes(wan, cog)
    finally:
        for vae, attrs in saved:
            vars(vae).update(attrs)


def _check_vae_hash_modes(wan, cog):
    for pipe in (wan, cog):
        stock = study.vae_hash(pipe)
        pipe.vae.tile_sample_min_height += 32            # tiling off: not part of the decode
        assert study.vae_hash(pipe) == stock
        pipe.vae.enable_slicing()
        sliced = study.vae_hash(pipe)
        pipe.vae.tile_sample_min_height += 32
        assert sliced != stock and study.vae_hash(pipe) == sliced
        pipe.vae.disable_slicing()
        pipe.vae.enable_tiling()
        tiled = study.vae_hash(pipe)
        pipe.vae.tile_sample_min_height += 32
        assert tiled not in (stock, sliced) and study.vae_hash(pipe) != tiled
        pipe.vae.disable_tiling()
        assert study.vae_hash(pipe) == stock
    cog.vae.enable_tiling()
    tiled = study.vae_hash(cog)
    cog.vae.tile_overlap_factor_height /= 2
    assert study.vae_hash(cog) != tiled
    cog.vae.disable_tiling()


def test_weights_hash_of_the_shipped_house_model_is_its_recordings_key():
    """The committed recording (notebook 02) was made with the shipped weights: its key is their hash,
    pinned here so that a retrained DiT cannot ship without its recording (and this value) re-made."""
    from stas.record import Recording

    key = Recording.load(study.stats_path("house")).meta["key"]
    assert study.weights_hash(stas.load("house", device="cpu")) == key["weights"] == "91e19a5415534648"
