"""find_massive on statistics with a known answer; loading a pipeline saved with save_pretrained."""

import pytest
import torch

import stas
from stas.layout import TokenLayout
from stas.record import Recording

from conftest import call_kwargs


def synthetic_recording(R=2, S=4, NB=3, D=64, massive=(7, 40), seed=0):
    """|h| ~ 1 everywhere; channel 7 peaks at 500 and channel 40 at 60 in every block but block 0."""
    g = torch.Generator().manual_seed(seed)
    chan_mean = torch.ones(R, S, NB, 2, D) + 0.01 * torch.rand(R, S, NB, 2, D, generator=g)
    chan_max = 4 * torch.ones(R, S, NB, 2, D) + 0.1 * torch.rand(R, S, NB, 2, D, generator=g)
    chan_max[:, :, 1:, :, massive[0]] = 500.0
    chan_max[:, :, 1:, :, massive[1]] = 60.0
    median = torch.full((R, S, NB, 2), 0.5)
    data = {"chan_max": chan_max, "chan_mean": chan_mean, "median": median,
            "timesteps": torch.zeros(R, S), "filled": torch.ones(R, S, 2, dtype=torch.bool)}
    return Recording(data, [0, 1, 2], [], TokenLayout(2, 4, 4))


def test_find_massive_recovers_planted_channels():
    rec = synthetic_recording()
    ma = stas.find_massive(rec, top_k=2, min_ratio=10)
    assert ma.channels == [7, 40]
    mean_all = rec["chan_mean"].mean(-1).median()
    assert abs(float(ma.ratio_median[1, 7]) - 1000.0) < 1e-3          # 500 / 0.5
    assert abs(float(ma.ratio_mean[1, 7]) - 500.0 / float(mean_all)) < 1.0
    assert ma.top[1] == [7, 40] and ma.top[2] == [7, 40]
    assert ma.sun == [False, True, True]                               # 500 > 100 and 1000x median
    st = ma.stability[7]
    assert abs(st["overall"] - 2 / 3) < 1e-6 and st["by_block"] == [0.0, 1.0, 1.0] and all(abs(x - 2 / 3) < 1e-6 for x in st["by_step"])
    weak = ma.pick_channel(6.0)
    assert weak not in (7, 40)
    rows = ma.rows()
    assert rows[2]["channel"] == 7 and rows[2]["block"] == 1 and rows[2]["sun"] is True
    assert "MA channels [7, 40]" in repr(ma)
    only_strong = stas.find_massive(rec, top_k=2, min_ratio=100)
    assert only_strong.channels == [7]


def test_find_massive_on_a_real_recording(wan):
    with stas.record(wan) as rec:
        stas.generate(wan, "a red ball", seed=0, **call_kwargs(wan))
    ma = stas.find_massive(rec.stats, top_k=3, min_ratio=0.0)
    assert len(ma.top) == 2 and all(len(t) == 3 for t in ma.top)
    c = ma.top[1][0]
    s = rec.stats
    expect = (s["chan_max"][:, :, 1, :, c] / s["median"][:, :, 1]).flatten().median()  # over runs, steps, branches
    torch.testing.assert_close(ma.ratio_median[1, c], expect)


def test_load_from_local_diffusers_dir(tmp_path, wan):
    """The path a user with a real checkpoint takes: save_pretrained -> stas.load(local_dir)."""
    for family in ("wan", "cogvideox"):
        pipe = stas.load(f"tiny-random-{family}", device="cpu")
        pipe.save_pretrained(tmp_path / family, safe_serialization=True)
        assert any(p.suffix == ".safetensors" for p in (tmp_path / family).rglob("*"))
        again = stas.load(str(tmp_path / family), device="cpu")
        assert type(again).__name__ == type(pipe).__name__
        assert stas.get_adapter(again).family == family
        kw = call_kwargs(pipe)
        # the reloaded pipeline's own settings: a directory has no name, so the family's adapter gives
        # max_sequence_length from the text encoder (64 positions) / transformer (16 text tokens)
        own = stas.call_settings(again, height=kw["height"], width=kw["width"], num_frames=kw["num_frames"],
                                 num_inference_steps=kw["num_inference_steps"], guidance_scale=kw["guidance_scale"])
        assert own["max_sequence_length"] == {"wan": 64, "cogvideox": 16}[family]
        a = stas.generate(pipe, "a red ball", seed=0, **own)
        b = stas.generate(again, "a red ball", seed=0, **own)
        assert a.shape == (9, 3, kw["height"], kw["width"]) and 0 <= a.min() and a.max() <= 1
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # same weights; loaders may reorder float ops
        # recording and steering work unchanged on the loaded pipeline
        with stas.record(again) as rec:
            stas.generate(again, "a red ball", seed=0, **kw)
        assert rec.stats["filled"].all()


def test_hidden_ratios_agree_with_find_massive():
    """The trainer's criteria (hidden_ratios on a hidden state) are find_massive's on one recording."""
    from stas.massive import hidden_ratios, ratios, sun_test

    h = torch.full((1, 64, 16), -0.5)
    h[0, :, 5] = 200.0
    h[0, 3, 5] = -300.0
    r = hidden_ratios(h)
    assert r["top"] == 5 and float(r["median"]) == 0.5 and r["sun"] is False   # 300 > 100 but only 600x the median
    assert float(r["peak/median"][5]) == 600.0
    pmed, pmean = ratios(r["chan_max"][None], r["chan_mean"][None], r["median"][None])
    torch.testing.assert_close(pmed[0], r["peak/median"])
    assert float(r["peak/mean"][5]) == pytest.approx(300.0 / float(h.abs().mean()), rel=1e-6)
    assert bool(sun_test(torch.tensor(101.0), torch.tensor(1000.0))) and not bool(sun_test(torch.tensor(99.0), torch.tensor(2000.0)))


def test_generate_shapes_and_defaults(wan):
    v = stas.generate(wan, "a blue square", seed=0)
    d = stas.native_defaults(wan)
    assert v.shape == (d["num_frames"], 3, d["height"], d["width"]) and v.dtype == torch.float32


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    """A tiny Wan pipeline loaded from a diffusers directory: no registered name, so the Wan family's
    native call (480x832, 81 frames, 50 steps). Loading it raises no torch_dtype deprecation."""
    import warnings

    path = stas.save_tiny("wan", tmp_path_factory.mktemp("tiny") / "wan")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*torch_dtype.*", category=FutureWarning)
        return stas.load(str(path), device="cpu")


def test_load_dir_and_house_raise_no_torch_dtype_deprecation(wan_dir):
    """diffusers 0.42.1 deprecates ``torch_dtype`` (FutureWarning on every load): stas passes ``dtype``."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*torch_dtype.*", category=FutureWarning)
        house = stas.load("house", device="cpu")
    assert wan_dir.transformer.dtype == wan_dir.text_encoder.dtype == torch.float32
    assert house.transformer.dtype == torch.float32 and house.vae.dtype == torch.float32


def test_native_call_on_cpu_warns_with_the_estimate(wan_dir):
    """A native-preset call over CPU_TOKEN_STEPS on the CPU warns with tokens, steps and how to
    shrink it, before any denoising; the quick preset, a fully given size and the house model's
    native call (128x128, 29 frames, 10 steps = 512 tokens x 10) do not."""
    import warnings

    from stas.load import CPU_TOKEN_STEPS, warn_cpu_native_call

    with pytest.warns(UserWarning, match=r"32760 video tokens x 50 steps = 1,638,000 token-steps") as w:
        kw = stas.call_settings(wan_dir)
    assert (kw["height"], kw["width"], kw["num_frames"], kw["num_inference_steps"]) == (480, 832, 81, 50)
    assert "--preset quick" in str(w[0].message) and "--size/--frames/--steps" in str(w[0].message)
    with pytest.warns(UserWarning, match=r"token-steps"):              # size given, frames and steps native
        stas.call_settings(wan_dir, height=480, width=832)
    calls = []
    hook = wan_dir.transformer.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            with pytest.raises(UserWarning, match="token-steps"):
                stas.generate(wan_dir, "a red ball", seed=0)
            q = stas.call_settings(wan_dir, "quick")                    # 1950 tokens x 10 steps: no warning
            small = dict(height=32, width=32, num_frames=9, num_inference_steps=2)
            assert stas.call_settings(wan_dir, **small)["num_inference_steps"] == 2
            stas.generate(wan_dir, "a red ball", seed=0, **small)
            house = stas.load("house", device="cpu")
            h = stas.call_settings(house)
    finally:
        hook.remove()
    assert len(calls) == 2 * 2                                          # only the small call ran (2 steps x CFG)
    assert (q["height"], q["width"], q["num_frames"], q["num_inference_steps"]) == (240, 416, 17, 10)
    assert (h["height"], h["width"], h["num_frames"], h["num_inference_steps"]) == (128, 128, 29, 10)
    assert not warn_cpu_native_call(house, h) and 512 * 10 < CPU_TOKEN_STEPS
