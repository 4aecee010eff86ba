"""stas.tracking: steps and branches read from what the pipeline says at call time; one tracker per
context; blocks skipped by diffusers' step caches are neither recorded nor steered; compiled blocks
share one graph."""

import torch

import stas

from test_matrix import Capture, _wan_call
from test_setups import no_stas_hooks, tiny


def test_first_block_cache_skips_are_not_recorded_or_steered():
    """FirstBlockCache with a huge threshold computes step 0 and skips every block afterwards."""
    from diffusers import FirstBlockCacheConfig

    pipe = tiny()
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=1e3))
    stock = _wan_call(pipe, num_inference_steps=3)
    with stas.record(pipe, channels=[1]) as rec, \
            stas.steer(pipe, stas.STASConfig(steps=0, blocks=[1], channels=[1])):
        assert torch.equal(_wan_call(pipe, num_inference_steps=3), stock)
    s = rec.stats
    assert not torch.isnan(s["chan_max"][0, 0]).any()                  # step 0: both blocks ran
    assert torch.isnan(s["chan_max"][0, 1:]).all()                     # steps 1, 2: skipped, left NaN
    assert torch.isnan(s["tokens"][0, 1:]).all() and s["filled"].all()
    with stas.steer(pipe, stas.STASConfig(steps=3, blocks=[1], channels=[1])) as st:
        _wan_call(pipe, num_inference_steps=3)
    assert st.calls == [(0, 0, ("cond",)), (0, 0, ("uncond",))]
    assert st.skipped == [(0, 1, 1), (0, 1, 1), (0, 2, 1), (0, 2, 1)]
    assert no_stas_hooks(pipe)
    assert [n for n in pipe.transformer._diffusers_hook.hooks] == []   # FBC keeps its own hooks on the blocks
    assert pipe.transformer.blocks[1]._diffusers_hook.hooks


def test_contexts_track_independently(wan):
    """Nested contexts each have their own tracker: the inner one's exit leaves the outer one working."""
    with stas.record(wan, blocks=[0]) as outer:
        _wan_call(wan)
        with stas.record(wan, blocks=[0]) as inner:
            _wan_call(wan)
        _wan_call(wan)
    assert outer.stats.num_runs == 3 and inner.stats.num_runs == 1
    assert torch.equal(outer.stats["chan_max"][1], inner.stats["chan_max"][0])
    assert torch.equal(outer.stats["chan_max"][0], outer.stats["chan_max"][2])
    assert no_stas_hooks(wan) and "forward" not in vars(wan.transformer)  # the class's forward again


def test_steps_from_the_call_without_a_cache_context(wan):
    """A pipeline that sets no cache context (video-to-video, custom loops): a new `_current_timestep`
    object starts a step, call order gives the branch."""
    from diffusers import WanVideoToVideoPipeline

    p = WanVideoToVideoPipeline(tokenizer=wan.tokenizer, text_encoder=wan.text_encoder, vae=wan.vae,
                                transformer=wan.transformer, scheduler=wan.scheduler)
    p.set_progress_bar_config(disable=True)
    video = list(torch.rand(9, 32, 32, 3, generator=torch.Generator().manual_seed(0)).numpy())
    kw = dict(video=video, prompt="a ball", height=32, width=32, num_inference_steps=3, strength=1.0,
              guidance_scale=2.0, max_sequence_length=16, output_type="pt")
    cap = Capture(p, 1)
    try:
        with stas.record(p, blocks=[1]) as rec:
            p(**kw, generator=torch.Generator().manual_seed(0))
    finally:
        cap.close()
    s = rec.stats
    assert s.num_steps == 3 and s["filled"].all() and len(cap.calls) == 6
    torch.testing.assert_close(s["timesteps"][0], p.scheduler.timesteps.float())
    for c, h in cap.calls:  # call 2k: step k cond; call 2k + 1: step k uncond
        got = s.get("chan_max", run=0, step=c // 2, block=1, branch=("cond", "uncond")[c % 2])
        assert torch.equal(got, h.abs().reshape(-1, h.shape[-1]).amax(0))


def test_bare_transformer_is_one_step(wan):
    t = wan.transformer
    x = torch.randn(1, 16, 3, 4, 4)
    kw = dict(timestep=torch.tensor([500.0]), encoder_hidden_states=torch.randn(1, 16, 32), return_dict=False)
    with torch.no_grad(), stas.record(t, blocks=[0]) as rec, \
            stas.steer(t, stas.STASConfig(steps=1, blocks=[0], channels=[0])) as st:
        t(x, **kw)
        t(x, timestep=torch.tensor([400.0]), **{k: v for k, v in kw.items() if k != "timestep"})
    assert rec.stats.num_runs == 1 and rec.stats.num_steps == 1
    assert st.calls == [(0, 0, ("cond",)), (0, 0, ("cond",))]


def test_compiled_blocks_share_one_graph():
    """compile_repeated_blocks(fullgraph=True): recording all blocks adds one graph, shared by every block
    (the record hook is one custom op), and no graph break (fullgraph would raise)."""
    from torch._dynamo.utils import counters

    pipe = tiny()
    pipe.transformer.compile_repeated_blocks(backend="eager", fullgraph=True)
    graphs = lambda: counters["stats"]["unique_graphs"]  # noqa: E731
    _wan_call(pipe)
    n0 = graphs()
    with stas.record(pipe, channels=[1]) as rec:
        _wan_call(pipe)
        _wan_call(pipe)
    assert graphs() - n0 == 1 and rec.stats.num_runs == 2
    assert torch.equal(rec.stats["chan_max"][0], rec.stats["chan_max"][1])
