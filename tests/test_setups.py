"""record and steer on the setups people run (issue 9): offloading, float16, CogVideoXDPMScheduler,
video-to-video with strength < 1, a scheduler swapped inside an open context. Each test carries the
right value of the fault it pins."""

import warnings

import pytest
import torch

import stas
from stas.adapters import get_adapter

from conftest import call_kwargs

PROMPT = "a red ball moves left"


def no_stas_hooks(pipe):
    """True when nothing of stas is left on the pipeline's transformers, blocks and scheduler."""
    ad = get_adapter(pipe)
    for t in ad.transformers:
        if t._forward_pre_hooks or any(b._forward_hooks or b._forward_pre_hooks for b in ad.blocks(t)):
            return False
        reg = getattr(t, "_diffusers_hook", None)
        if reg is not None and any(n.startswith("stas") for n in reg.hooks):
            return False
    return not ({"step", "set_timesteps"} & set(vars(pipe.scheduler)))


def tiny(family="wan"):
    """A fresh tiny random pipeline (seeded: the same weights every time)."""
    pipe = stas.tiny_random_pipeline(family)
    pipe.set_progress_bar_config(disable=True)
    pipe.stas_name = f"tiny-random-{family}"
    return pipe


def run(pipe, seed=0, **over):
    return stas.generate(pipe, PROMPT, seed=seed, **call_kwargs(pipe, **over))


def record_and_steer(pipe, cfg, **over):
    """(video, Recording, steer calls) of one generation under record + steer."""
    with stas.record(pipe, channels=[1]) as rec, stas.steer(pipe, cfg) as st:
        video = run(pipe, **over)
    return video, rec.stats, st.calls


# -- 1. offloading ------------------------------------------------------------------------------

STEER = stas.STASConfig(alpha=2.0, steps=2, blocks=[1], channels=[3, 7])


def test_sequential_cpu_offload_equals_plain(wan):
    """accelerate.cpu_offload (weights on meta until used): record and steer equal the plain pipeline;
    before the fix steer raised in block 0 and record raised on exit, leaving 6 hooks installed."""
    from accelerate import cpu_offload

    ref_video, ref_rec, ref_calls = record_and_steer(wan, STEER, num_inference_steps=2)
    stock = run(wan, num_inference_steps=2)

    off = tiny()  # same seed as the `wan` fixture: same weights
    cpu_offload(off.transformer, execution_device=torch.device("cpu"))
    assert next(off.transformer.parameters()).device.type == "meta"
    assert torch.equal(run(off, num_inference_steps=2), stock)  # offloading alone is bit-identical here
    video, rec, calls = record_and_steer(off, STEER, num_inference_steps=2)
    assert torch.equal(video, ref_video) and calls == ref_calls
    for k in ref_rec.data:
        assert torch.equal(rec[k], ref_rec[k]) if k == "filled" else torch.allclose(rec[k], ref_rec[k], equal_nan=True)
    assert no_stas_hooks(off)
    assert torch.equal(run(off, num_inference_steps=2), stock)  # and the offload hooks still work after exit


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (model / group offloading onto a GPU)")
@pytest.mark.parametrize("mode", ["model_cpu_offload", "group_offload"])
def test_gpu_offload_equals_plain(mode):
    """enable_model_cpu_offload / enable_group_offload(cuda, cpu, block_level): before the fix both crashed
    in the first transformer call (index / buffers on the device of a parameter read before onloading)."""
    plain = tiny().to("cuda")
    ref_video, ref_rec, ref_calls = record_and_steer(plain, STEER)
    off = tiny()
    if mode == "model_cpu_offload":
        off.enable_model_cpu_offload(device="cuda")
    else:
        off.to("cuda")
        off.transformer.to("cpu")
        off.transformer.enable_group_offload(torch.device("cuda"), torch.device("cpu"), "block_level",
                                             num_blocks_per_group=1)
    video, rec, calls = record_and_steer(off, STEER)
    assert calls == ref_calls
    torch.testing.assert_close(video, ref_video)
    for k in ("chan_max", "chan_mean", "median", "tokens"):
        torch.testing.assert_close(rec[k], ref_rec[k], equal_nan=True)
    assert no_stas_hooks(off)


def test_hooks_removed_when_finishing_a_recording_raises(wan):
    with pytest.raises(RuntimeError, match="finish failed"):
        with stas.record(wan, channels=[0]) as rec:
            run(wan)

            def boom():
                raise RuntimeError("finish failed")
            rec._finish_run = boom
    assert no_stas_hooks(wan)


# -- 2. float16 ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cog16():
    """Bare float16 tiny CogVideoX transformer and an input giving 192 video tokens (3 x 8 x 8)."""
    t = stas.tiny_random_pipeline("cogvideox", text_encoder=False).transformer.to(torch.float16)
    g = torch.Generator().manual_seed(0)
    kw = dict(hidden_states=torch.randn(1, 3, 4, 16, 16, generator=g).half(),
              encoder_hidden_states=torch.randn(1, 16, 32, generator=g).half(),
              timestep=torch.tensor([500]), return_dict=False)
    return t, kw


def _force_channel(block, c, value):
    """A forward hook (first in line) setting channel c of the block's video tokens to ``value``."""
    def f(module, args, output):
        output[0][..., c] = value
    return block.register_forward_hook(f, prepend=True)


def test_fp16_record_sums_in_float32(cog16):
    t, kw = cog16
    h = _force_channel(t.transformer_blocks[0], 5, 400.0)
    try:
        with torch.no_grad(), stas.record(t, blocks=[0]) as rec:
            t(**kw)
    finally:
        h.remove()
    s = rec.stats
    assert s.layout.num_tokens == 192
    assert s["chan_mean"].dtype == torch.float32
    assert s.get("chan_mean", run=0, step=0, block=0, branch="cond")[5] == 400.0   # was inf (192 x 400 > 65 504)
    assert s.get("chan_max", run=0, step=0, block=0, branch="cond")[5] == 400.0
    assert torch.isfinite(s.get("chan_mean", branch="cond")).all()
    assert stas.find_massive(s).channels == [5]                                     # was []


def test_fp16_steer_clamps_to_the_dtype_range_with_a_warning(cog16):
    t, kw = cog16
    cfg = stas.STASConfig(alpha=200.0, steps=1, blocks=[0], channels=[5], positions="all")  # 200 x 400 > 65 504
    after = []
    cap = t.transformer_blocks[0].register_forward_hook(lambda m, a, o: after.append(o[0][..., 5].clone()))
    try:
        with pytest.warns(RuntimeWarning, match="clamped"):
            with torch.no_grad(), stas.steer(t, cfg) as st:
                h = _force_channel(t.transformer_blocks[0], 5, -400.0)  # prepended after steer's: runs first
                t(**kw)
    finally:
        h.remove()
        cap.remove()
    assert torch.equal(after[0], torch.full_like(after[0], -65504.0))   # float16's largest finite value, sign kept
    assert st.clamped == 192
    with warnings.catch_warnings():                                    # in range: no warning, exact value
        warnings.simplefilter("error")
        with torch.no_grad(), stas.steer(t, stas.STASConfig(alpha=2.0, steps=1, blocks=[0], channels=[5],
                                                            positions="all")) as st:
            t(**kw)
    assert st.clamped == 0


# -- 3. CogVideoXDPMScheduler ------------------------------------------------------------------

def test_cogvideox_dpm_scheduler_k0_and_record_bit_identical():
    """The DPM scheduler draws seeded noise only when the pipeline sees `generator` in scheduler.step's
    signature: wrapping step lost it (max |delta| 1.0, same seed different videos)."""
    from diffusers import CogVideoXDPMScheduler

    pipe = tiny("cogvideox")
    pipe.scheduler = CogVideoXDPMScheduler.from_config(pipe.scheduler.config)
    stock = run(pipe, num_inference_steps=2)
    with stas.steer(pipe, stas.STASConfig(steps=0, blocks=[0], channels=[1])):
        assert torch.equal(run(pipe, num_inference_steps=2), stock)
    with stas.record(pipe) as rec:
        assert torch.equal(run(pipe, num_inference_steps=2), stock)
    assert rec.stats["filled"].all()
    with stas.steer(pipe, stas.STASConfig(steps=2, blocks=[0], channels=[1], alpha=3.0)):
        a, b = run(pipe, num_inference_steps=2), run(pipe, num_inference_steps=2)
    assert torch.equal(a, b) and not torch.equal(a, stock)
    assert no_stas_hooks(pipe)


# -- 4. video-to-video ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def v2v(wan):
    from diffusers import WanVideoToVideoPipeline

    p = WanVideoToVideoPipeline(tokenizer=wan.tokenizer, text_encoder=wan.text_encoder, vae=wan.vae,
                                transformer=wan.transformer, scheduler=wan.scheduler)
    p.set_progress_bar_config(disable=True)
    return p


def v2v_kwargs(**over):
    video = torch.rand(9, 32, 32, 3, generator=torch.Generator().manual_seed(0)).numpy()
    return dict(video=list(video), prompt=PROMPT, height=32, width=32, num_inference_steps=4, strength=0.5,
                guidance_scale=2.0, max_sequence_length=16, output_type="pt",
                generator=torch.Generator().manual_seed(0), **over)


def test_video_to_video_records_the_executed_steps(v2v):
    seen = []
    h = v2v.transformer.register_forward_pre_hook(lambda m, a, k: seen.append(float(k["timestep"][0])),
                                                  with_kwargs=True)
    try:
        with stas.record(v2v, blocks=[0]) as rec:
            v2v(**v2v_kwargs())
    finally:
        h.remove()
    s = rec.stats
    assert s.num_steps == 2 and s["filled"].all()                     # was 4 steps, the last two unfilled
    torch.testing.assert_close(s["timesteps"][0], torch.tensor([602.15, 8.93]), rtol=0, atol=0.01)  # was 1000.0, 857.69
    torch.testing.assert_close(s["timesteps"][0], torch.tensor(seen[::2]))


def test_video_to_video_k_against_executed_steps(v2v):
    with pytest.raises(ValueError, match="exceeds the 2 denoising steps"):
        with stas.steer(v2v, stas.STASConfig(steps=3, blocks=[0], channels=[1])):   # 3 <= 4 but > 2 executed
            v2v(**v2v_kwargs())
    with stas.steer(v2v, stas.STASConfig(steps=1, blocks=[0], channels=[1])) as st:
        v2v(**v2v_kwargs())
    assert st.calls == [(0, 0, ("cond",)), (0, 0, ("uncond",))]      # K = 1 steers the call at t = 602.15
    assert no_stas_hooks(v2v)


# -- 5. a scheduler swapped inside an open context ---------------------------------------------

def test_scheduler_swapped_inside_context_is_tracked():
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    pipe = tiny()
    cfg = stas.STASConfig(alpha=2.0, steps=2, blocks=[1], channels=[3])
    unipc = UniPCMultistepScheduler.from_config(pipe.scheduler.config, flow_shift=3.0, prediction_type="flow_prediction",
                                                use_flow_sigmas=True)
    euler = pipe.scheduler
    with stas.record(pipe, channels=[3]) as rec, stas.steer(pipe, cfg) as st:
        run(pipe, num_inference_steps=2)
        pipe.scheduler = unipc
        swapped = run(pipe, num_inference_steps=2)
    assert [r for r, _, _ in st.calls] == [0] * 4 + [1] * 4          # was: the second run neither steered ...
    assert rec.stats.num_runs == 2 and rec.stats["filled"].all()      # ... nor recorded
    pipe.scheduler = UniPCMultistepScheduler.from_config(unipc.config)  # the same swap before entering
    with stas.record(pipe, channels=[3]) as ref, stas.steer(pipe, cfg) as st_ref:
        before = run(pipe, num_inference_steps=2)
    assert torch.equal(swapped, before) and st_ref.calls == [(0, s, b) for _, s, b in st.calls[4:]]
    for k in ("chan_max", "chan_mean", "median", "tokens", "timesteps"):
        assert torch.equal(rec.stats[k][1], ref.stats[k][0])
    assert isinstance(euler, FlowMatchEulerDiscreteScheduler) and no_stas_hooks(pipe)


def test_transformer_swapped_inside_context_is_an_error():
    import copy

    pipe = tiny()
    with pytest.raises(RuntimeError, match="transformer was replaced"):
        with stas.record(pipe):
            pipe.transformer = tiny().transformer
    assert no_stas_hooks(pipe)
