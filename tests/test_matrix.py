"""record + steer over the pipelines and settings people run (issue 9): Wan, Wan2.2 (expand_timesteps,
two experts), CogVideoX with DDIM and DPM, CogVideoX 1.5 (temporal patch 2), float32 and float16,
compile_repeated_blocks, video-to-video, image-to-video.

Each setup runs the stock pipeline, then record + steer(K = 0) (video bit-identical to stock; every
recorded statistic equal to a brute-force reduction of the captured block outputs), then steer(K > 0)
(the steered block's output equals a hand computation on the steered calls and is untouched on the
others), and checks that no hook is left. The brute force maps transformer calls to (step, branch) by
the pipelines' known call order (Wan: cond then uncond per step; CogVideoX: one call, batch
[uncond, cond]), independently of `stas.tracking`.
"""

import pytest
import torch

import stas
from stas.adapters import get_adapter

from test_setups import no_stas_hooks, tiny

PROMPT = "a red ball moves left"
STEPS = 2


class Capture:
    """Clones the outputs of block ``block`` of every transformer of ``pipe``, with the index of the
    transformer call they belong to (calls counted over all transformers). ``first=True`` registers
    the hook ahead of every other (it then sees a block output before steering)."""

    def __init__(self, pipe, block, first=False):
        self.ad = get_adapter(pipe)
        self.calls, self.n = [], 0
        self.handles = []
        for t in self.ad.transformers:
            self.handles.append(t.register_forward_pre_hook(self._count))
            blk = self.ad.blocks(t)[block]
            self.handles.append(blk.register_forward_hook(self._keep, prepend=first))

    def _count(self, *a):
        self.n += 1

    def _keep(self, module, args, output):
        self.calls.append((self.n - 1, self.ad.video_tokens(output).detach().clone()))

    def close(self):
        for h in self.handles:
            h.remove()


def branches_of(family, call, cfg):
    """[(step, branch, batch slice)] of transformer call ``call`` by the pipelines' call order."""
    if family == "cogvideox":
        return [(call, "uncond", slice(0, 1)), (call, "cond", slice(1, 2))] if cfg else [(call, "cond", slice(None))]
    if cfg:
        return [(call // 2, ("cond", "uncond")[call % 2], slice(None))]
    return [(call, "cond", slice(None))]


def expected_steer(h, chans, mask, alpha):
    out = h.clone()
    for c in chans:
        d = h[:, :, c]
        ref = d.abs().amax(dim=1, keepdim=True).float()
        out[:, :, c] = torch.where(mask[None], (alpha * ref * torch.sign(d).float()).to(h.dtype), d)
    return out


# -- setups: name -> (pipe builder, call) ------------------------------------------------------------

def _wan_call(pipe, seed=0, **over):
    kw = dict(prompt=PROMPT, height=32, width=32, num_frames=9, num_inference_steps=STEPS, guidance_scale=2.0,
              max_sequence_length=16, output_type="pt", generator=torch.Generator().manual_seed(seed))
    kw.update(over)
    return pipe(**{k: v for k, v in kw.items() if v is not None}).frames[0]


def _wan_like(cls, base, **extra):
    p = cls(tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae, transformer=base.transformer,
            scheduler=base.scheduler, **extra)
    p.set_progress_bar_config(disable=True)
    return p


def _wan22_experts():
    from diffusers import WanPipeline

    base = tiny()
    second = stas.tiny_random_pipeline("wan", seed=1, text_encoder=False).transformer
    return _wan_like(WanPipeline, base, transformer_2=second, boundary_ratio=0.9)


def _cog(scheduler=None, dtype=None, temporal_patch=False):
    pipe = tiny("cogvideox")
    if scheduler == "dpm":
        from diffusers import CogVideoXDPMScheduler

        pipe.scheduler = CogVideoXDPMScheduler.from_config(pipe.scheduler.config)
    if temporal_patch:  # CogVideoX 1.5: temporal patch 2, rotary embeddings
        from diffusers import CogVideoXTransformer3DModel

        torch.manual_seed(0)
        pipe.transformer = CogVideoXTransformer3DModel(
            num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=2,
            text_embed_dim=32, num_layers=2, sample_width=4, sample_height=4, sample_frames=9, patch_size=2,
            patch_size_t=2, temporal_compression_ratio=4, max_text_seq_length=16,
            use_rotary_positional_embeddings=True)
    if dtype is not None:
        pipe.to(dtype=dtype)
    return pipe


def _v2v_call(pipe, seed=0):
    video = torch.rand(9, 32, 32, 3, generator=torch.Generator().manual_seed(0)).numpy()
    return _wan_call(pipe, seed, video=list(video), strength=0.5, num_inference_steps=2 * STEPS, num_frames=None)


def _i2v_call(pipe, seed=0):
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return _wan_call(pipe, seed, image=image)


def _setups():
    from diffusers import WanImageToVideoPipeline, WanPipeline, WanVideoToVideoPipeline

    def compiled():
        p = tiny()
        p.transformer.compile_repeated_blocks(backend="eager", fullgraph=True)
        return p

    def fp16_wan():
        p = tiny()
        p.transformer.to(torch.float16)
        return p

    return {
        "wan": (tiny, _wan_call),
        "wan-fp16": (fp16_wan, _wan_call),
        "wan22-expand-timesteps": (lambda: _wan_like(WanPipeline, tiny(), expand_timesteps=True), _wan_call),
        "wan22-two-experts": (_wan22_experts, _wan_call),
        "wan-compiled-blocks": (compiled, _wan_call),
        "wan-video-to-video": (lambda: _wan_like(WanVideoToVideoPipeline, tiny()), _v2v_call),
        "wan22-image-to-video": (lambda: _wan_like(WanImageToVideoPipeline, tiny(), expand_timesteps=True),
                                 _i2v_call),
        "cogvideox-ddim": (_cog, _wan_call),
        "cogvideox-dpm": (lambda: _cog("dpm"), _wan_call),
        "cogvideox-fp16": (lambda: _cog(dtype=torch.float16), _wan_call),
        "cogvideox15-temporal-patch": (lambda: _cog(temporal_patch=True), _wan_call),
    }


SETUPS = sorted(_setups())


@pytest.mark.parametrize("name", SETUPS)
def test_record_and_steer(name):
    build, call = _setups()[name]
    pipe = build()
    ad = get_adapter(pipe)
    fam = ad.family
    stock = call(pipe)

    # record + steer(K = 0): bit-identical video, statistics equal to brute force
    cap = Capture(pipe, 1)
    try:
        with stas.record(pipe, channels=[1, 5]) as rec, \
                stas.steer(pipe, stas.STASConfig(steps=0, blocks=[1], channels=[1])) as st0:
            video = call(pipe)
    finally:
        cap.close()
    assert torch.equal(video, stock)
    assert st0.calls == []
    s = rec.stats
    assert s.num_steps == STEPS and s["filled"].all(), (s.num_steps, s["filled"])
    assert s.layout.num_tokens == cap.calls[0][1].shape[1]
    seen = set()
    for c, h in cap.calls:
        for step, branch, sl in branches_of(fam, c, True):
            x = h[sl].float()
            flat = x.reshape(-1, x.shape[-1]).abs()
            got = lambda k: s.get(k, run=0, step=step, block=1, branch=branch)  # noqa: E731
            torch.testing.assert_close(got("chan_max"), flat.amax(0), rtol=0, atol=0)
            torch.testing.assert_close(got("chan_mean"), flat.mean(0), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got("median"), x.abs().flatten().median(), rtol=0, atol=0)
            torch.testing.assert_close(got("tokens"), x.mean(0)[:, [1, 5]], rtol=1e-6, atol=1e-6)
            seen.add((step, branch))
    assert len(seen) == 2 * STEPS
    assert no_stas_hooks(pipe)

    # steer(K = 1): the hand computation on step 0's calls, untouched afterwards
    cfg = stas.STASConfig(alpha=3.0, steps=1, blocks=[1], channels=[2, 6], positions=("first_frame", "boundary"))
    with stas.steer(pipe, cfg) as st:
        before, after = Capture(pipe, 1, first=True), Capture(pipe, 1)
        try:
            steered = call(pipe)
        finally:
            before.close(), after.close()
    mask = s.layout.position_mask(cfg.positions, cfg.boundary_width)
    n_steered = 0
    for (c, b), (_, a) in zip(before.calls, after.calls):
        if branches_of(fam, c, True)[0][0] < cfg.steps:
            torch.testing.assert_close(a, expected_steer(b, cfg.channels, mask, cfg.alpha), rtol=0, atol=0)
            n_steered += 1
        else:
            assert torch.equal(a, b)
    calls_per_step = 1 if fam == "cogvideox" else 2
    assert n_steered == calls_per_step
    assert [s_ for _, s_, _ in st.calls] == [0] * calls_per_step
    assert not torch.equal(steered, stock)
    assert no_stas_hooks(pipe)
