"""stas.steer: exact edit, exact firing, bit-identity when off or after exit, clear errors."""

import pytest
import torch

import stas
from stas.adapters import get_adapter

from conftest import call_kwargs

PROMPT = "a red square moves left"


class Around:
    """Clones a block's output before (prepended, so it runs before steer's hook) and after steering."""

    def __init__(self, pipe, block):
        ad = get_adapter(pipe)
        blk = ad.blocks(ad.transformers[0])[block]
        self.before, self.after = [], []
        self.handles = [
            blk.register_forward_hook(lambda m, a, o: self.before.append(ad.video_tokens(o).detach().clone()),
                                      prepend=True),
            blk.register_forward_hook(lambda m, a, o: self.after.append(ad.video_tokens(o).detach().clone())),
        ]

    def close(self):
        for h in self.handles:
            h.remove()


def expected(h, chans, mask, alpha):
    """Hand computation of STAS on one (B, L, D) block output."""
    out = h.clone()
    for c in chans:
        d = h[:, :, c]                                   # (B, L)
        ref = d.abs().amax(dim=1, keepdim=True)          # global max over tokens, per sample
        out[:, :, c] = torch.where(mask[None], alpha * ref * torch.sign(d), d)
    return out


@pytest.fixture(scope="module")
def stock(wan):
    return stas.generate(wan, PROMPT, seed=0, **call_kwargs(wan))


def test_steer_edit_equals_hand_computation(wan):
    cfg = stas.STASConfig(alpha=1.5, steps=2, blocks=[1], channels=[3, 10], positions=("first_frame", "boundary"),
                          boundary_width=1, branches=("cond", "uncond"))
    with stas.steer(wan, cfg) as st:
        cap = Around(wan, 1)
        try:
            stas.generate(wan, PROMPT, seed=0, **call_kwargs(wan))
        finally:
            cap.close()
    lay = get_adapter(wan).layout((), {"hidden_states": torch.zeros(1, 16, 3, 4, 4)})
    mask = lay.position_mask(cfg.positions, cfg.boundary_width)
    n_steps = call_kwargs(wan)["num_inference_steps"]
    assert len(cap.before) == n_steps * 2
    for i, (b, a) in enumerate(zip(cap.before, cap.after)):
        step = i // 2
        if step < cfg.steps:
            torch.testing.assert_close(a, expected(b, cfg.channels, mask, 1.5), rtol=0, atol=0)
            other = torch.ones(a.shape[-1], dtype=torch.bool)
            other[list(cfg.channels)] = False
            assert torch.equal(a[..., other], b[..., other])           # other channels untouched
            assert torch.equal(a[:, ~mask][..., list(cfg.channels)], b[:, ~mask][..., list(cfg.channels)])
            assert not torch.equal(a, b)
        else:
            assert torch.equal(a, b)                                     # steps >= K untouched
    assert [(s, br) for _, s, br in st.calls] == [(0, ("cond",)), (0, ("uncond",)), (1, ("cond",)), (1, ("uncond",))]


@pytest.mark.parametrize("branches,per_step", [(("cond",), 1), (("uncond",), 1), (("cond", "uncond"), 2)])
def test_fires_on_exactly_k_steps_times_branches(wan, branches, per_step):
    cfg = stas.STASConfig(alpha=1.0, steps=3, blocks=[0, 1], channels=[2], branches=branches)
    with stas.steer(wan, cfg) as st:
        stas.generate(wan, PROMPT, seed=0, **call_kwargs(wan))
    assert len(st.calls) == 3 * per_step
    assert sorted({s for _, s, _ in st.calls}) == [0, 1, 2]
    assert all(set(b) <= set(branches) for _, _, b in st.calls)


def test_cogvideox_batched_branches(cog):
    cfg = stas.STASConfig(alpha=1.0, steps=2, blocks=[0], channels=[5], branches=("cond",))
    with stas.steer(cog, cfg) as st:
        cap = Around(cog, 0)
        try:
            stas.generate(cog, PROMPT, seed=0, **call_kwargs(cog))
        finally:
            cap.close()
    assert [s for _, s, _ in st.calls] == [0, 1]
    b, a = cap.before[0], cap.after[0]
    assert torch.equal(a[0], b[0])                       # uncond half untouched
    assert not torch.equal(a[1], b[1])                   # cond half steered


def test_k0_is_bit_identical_and_exit_restores(wan, stock):
    kw = call_kwargs(wan)
    with stas.steer(wan, stas.STASConfig(steps=0, blocks=[1], channels=[3])):
        assert torch.equal(stas.generate(wan, PROMPT, seed=0, **kw), stock)
    with stas.steer(wan, stas.STASConfig(steps=2, blocks=[1], channels=[3], alpha=3.0)):
        steered = stas.generate(wan, PROMPT, seed=0, **kw)
    assert not torch.equal(steered, stock)
    assert torch.equal(stas.generate(wan, PROMPT, seed=0, **kw), stock)   # normal exit restores
    with pytest.raises(RuntimeError, match="mid-run"):
        with stas.steer(wan, stas.STASConfig(steps=2, blocks=[1], channels=[3], alpha=3.0)):
            def cb(pipe, i, t, kw):
                raise RuntimeError("mid-run")
            stas.generate(wan, PROMPT, seed=0, callback_on_step_end=cb, **kw)
    assert torch.equal(stas.generate(wan, PROMPT, seed=0, **kw), stock)   # exit by exception restores
    for blk in wan.transformer.blocks:
        assert not blk._forward_hooks
    assert "step" not in wan.scheduler.__dict__


def test_same_seed_same_video(wan, stock):
    cfg = stas.STASConfig(steps=2, blocks=[1], channels=[3], alpha=2.0)
    with stas.steer(wan, cfg):
        a = stas.generate(wan, PROMPT, seed=0, **call_kwargs(wan))
        b = stas.generate(wan, PROMPT, seed=0, **call_kwargs(wan))
    assert torch.equal(a, b)
    assert torch.equal(stas.generate(wan, PROMPT, seed=0, **call_kwargs(wan)), stock)
    assert not torch.equal(stas.generate(wan, PROMPT, seed=1, **call_kwargs(wan)), stock)


def test_record_sees_steered_values(wan):
    cfg = stas.STASConfig(alpha=2.0, steps=1, blocks=[1], channels=[3], positions="all")
    with stas.record(wan, blocks=[1], channels=[3]) as rec, stas.steer(wan, cfg):
        stas.generate(wan, PROMPT, seed=0, **call_kwargs(wan))
    s = rec.stats
    tok = s.get("tokens", run=0, step=0, block=1, branch="cond", channel=3)
    peak = s.get("chan_max", run=0, step=0, block=1, branch="cond")[3]
    # all tokens set to +-2*max|h| -> |value| is constant = recorded max
    torch.testing.assert_close(tok.abs(), torch.full_like(tok, float(peak)))


def test_zero_mode(wan):
    cfg = stas.STASConfig(steps=1, blocks=[0], channels=[4], positions="first_frame", mode="zero")
    with stas.steer(wan, cfg):
        cap = Around(wan, 0)
        try:
            stas.generate(wan, PROMPT, seed=0, **call_kwargs(wan))
        finally:
            cap.close()
    a = cap.after[0]
    tokens_per_frame = a.shape[1] // 3  # 9 frames -> 3 latent frames
    assert torch.equal(a[:, :tokens_per_frame, 4], torch.zeros_like(a[:, :tokens_per_frame, 4]))
    assert torch.equal(a[:, tokens_per_frame:, 4], cap.before[0][:, tokens_per_frame:, 4])


@pytest.mark.parametrize("kwargs,match", [
    (dict(alpha=0.0), "alpha"), (dict(alpha=-1.0), "alpha"), (dict(alpha=float("nan")), "alpha"),
    (dict(steps=-1), "steps"), (dict(channels=()), "channels"), (dict(blocks=()), "blocks"),
    (dict(positions=()), "positions"), (dict(positions=("edges",)), "positions"),
    (dict(positions=("boundary",), boundary_width=0), "boundary"), (dict(branches=("both",)), "branches"),
    (dict(channels=(1, 1)), "duplicates"),
])
def test_config_validation(kwargs, match):
    base = dict(alpha=1.0, steps=2, blocks=(0,), channels=(1,))
    with pytest.raises(ValueError, match=match):
        stas.STASConfig(**{**base, **kwargs})


class CountCalls:
    """Counts calls of the transformer's first block (a block that ran did denoising work)."""

    def __init__(self, pipe):
        self.n = 0
        self.h = pipe.transformer.blocks[0].register_forward_pre_hook(lambda *a: setattr(self, "n", self.n + 1))


def test_errors_before_any_denoising(wan):
    kw = call_kwargs(wan)
    cnt = CountCalls(wan)
    try:
        with pytest.raises(ValueError, match="out of range"):
            with stas.steer(wan, stas.STASConfig(steps=1, blocks=[2], channels=[0])):
                pass
        with pytest.raises(ValueError, match="out of range"):
            with stas.steer(wan, stas.STASConfig(steps=1, blocks=[0], channels=[24])):
                pass
        with pytest.raises(ValueError, match="exceeds"):
            with stas.steer(wan, stas.STASConfig(steps=kw["num_inference_steps"] + 1, blocks=[0], channels=[0])):
                stas.generate(wan, PROMPT, seed=0, **kw)
        with pytest.raises(ValueError, match="1 \\+ 4k"):
            stas.generate(wan, PROMPT, seed=0, **{**kw, "num_frames": 10})
        with pytest.raises(ValueError, match="multiples"):
            stas.generate(wan, PROMPT, seed=0, **{**kw, "height": 40})
        # a positions set that is empty for this layout: boundary of width > half a frame
        with pytest.raises(ValueError, match="token-frame"):
            with stas.steer(wan, stas.STASConfig(steps=1, blocks=[0], channels=[0], positions="boundary",
                                                 boundary_width=3)):
                stas.generate(wan, PROMPT, seed=0, **kw)
        # a branch that never runs: 'uncond' without guidance
        with pytest.raises(ValueError, match="never run"):
            with stas.steer(wan, stas.STASConfig(steps=1, blocks=[0], channels=[0], branches="uncond")):
                stas.generate(wan, PROMPT, seed=0, **{**kw, "guidance_scale": 1.0})
        assert cnt.n == 0  # each raised in the first transformer call's pre-hook, before any block ran
    finally:
        cnt.h.remove()
    with pytest.raises(TypeError, match="STASConfig"):
        stas.steer(wan, {"alpha": 1})


def test_unsupported_model_error():
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.pipelines import DDPMPipeline

    pipe = DDPMPipeline(unet=UNet2DModel(sample_size=8, block_out_channels=(4, 4), norm_num_groups=2,
                                         layers_per_block=1, down_block_types=("DownBlock2D",) * 2,
                                         up_block_types=("UpBlock2D",) * 2), scheduler=DDPMScheduler())
    with pytest.raises(stas.UnsupportedModelError, match="wan .*cogvideox"):
        stas.steer(pipe, stas.STASConfig(steps=1, blocks=[0], channels=[0]))
    with pytest.raises(stas.UnsupportedModelError):
        stas.record(pipe)


def _wan22(wan, **extra):
    from diffusers import WanPipeline

    p = WanPipeline(tokenizer=wan.tokenizer, text_encoder=wan.text_encoder, vae=wan.vae,
                    transformer=wan.transformer, scheduler=wan.scheduler, **extra)
    p.stas_name = "tiny-random-wan"
    p.set_progress_bar_config(disable=True)
    return p


def test_wan22_expand_timesteps(wan):
    """Wan2.2-TI2V passes one timestep per token; layout, steps and branches are unchanged."""
    p = _wan22(wan, expand_timesteps=True)
    with stas.record(p, channels=[1]) as rec, stas.steer(p, stas.STASConfig(steps=2, blocks=[1], channels=[3])) as st:
        stas.generate(p, PROMPT, seed=0, **call_kwargs(p))
    assert rec.stats["filled"].all() and rec.stats.layout.num_tokens == 3 * 2 * 2
    assert len(st.calls) == 2 * 2


def test_wan22_two_transformers(wan):
    """Wan2.2-A14B switches to transformer_2 for low-noise steps: both are hooked, steps keep counting."""
    import copy

    p = _wan22(wan, transformer_2=copy.deepcopy(wan.transformer), boundary_ratio=0.5)
    calls2 = []
    h = p.transformer_2.register_forward_pre_hook(lambda *a: calls2.append(1))
    with stas.record(p, blocks=[0]) as rec:
        stas.generate(p, PROMPT, seed=0, **call_kwargs(p))
    h.remove()
    assert calls2 and rec.stats["filled"].all()
    assert not torch.isnan(rec.stats["chan_max"]).any()                # block 0 of both transformers wrote
    assert all(b[0]._forward_hooks == {} for b in (p.transformer.blocks, p.transformer_2.blocks))


def test_two_contexts_on_one_block_refused_before_denoising(wan, stock):
    """Nested steer contexts would steer a shared block twice (the later-entered hook runs first, the
    earlier one re-steers its output): refused at the second __enter__, naming the block; the first
    context still unhooks, and a plain call afterwards is bit-identical to stock."""
    kw = call_kwargs(wan)
    a = stas.STASConfig(steps=2, blocks=[0, 1], channels=[3], alpha=3.0)
    b = stas.STASConfig(steps=2, blocks=[1], channels=[5])
    with pytest.raises(ValueError, match=r"block\(s\) \[1\] of WanTransformer3DModel are already steered"):
        with stas.steer(wan, a), stas.steer(wan, b):
            raise AssertionError("the body must not run")
    for blk in wan.transformer.blocks:
        assert not blk._forward_hooks
    assert torch.equal(stas.generate(wan, PROMPT, seed=0, **kw), stock)
    with stas.steer(wan, a):                   # the refused context left no claim behind
        pass
    with stas.steer(wan, b):
        pass


def test_two_contexts_on_different_blocks_equal_one_config(wan, stock):
    """Nested contexts on different blocks both steer: the clip equals one STASConfig with both blocks."""
    kw = call_kwargs(wan)
    one = dict(steps=2, channels=[3], alpha=3.0)
    with stas.steer(wan, stas.STASConfig(blocks=[0, 1], **one)):
        both = stas.generate(wan, PROMPT, seed=0, **kw)
    with stas.steer(wan, stas.STASConfig(blocks=[0], **one)) as s0, \
            stas.steer(wan, stas.STASConfig(blocks=[1], **one)) as s1:
        nested = stas.generate(wan, PROMPT, seed=0, **kw)
    with stas.steer(wan, stas.STASConfig(blocks=[1], **one)):
        only1 = stas.generate(wan, PROMPT, seed=0, **kw)
    assert torch.equal(nested, both) and not torch.equal(nested, only1) and not torch.equal(nested, stock)
    assert s0.calls == s1.calls and len(s0.calls) == 4          # 2 steps x (cond, uncond) calls each
    assert torch.equal(stas.generate(wan, PROMPT, seed=0, **kw), stock)
