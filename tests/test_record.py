"""stas.record equals a brute-force reference that keeps full hidden states."""

import pytest
import torch

import stas
from stas.adapters import get_adapter
from stas.record import Recording, median_from_sample, median_rank_band, recording_bytes

from conftest import call_kwargs


class BruteForce:
    """Keeps every block output of every transformer call, with the step it belongs to."""

    def __init__(self, pipe):
        self.ad = get_adapter(pipe)
        self.calls = []  # (call index, block, hidden (B, L, D))
        self.n = 0
        self.handles = [self.ad.transformers[0].register_forward_pre_hook(self._pre)]
        for i, blk in enumerate(self.ad.blocks(self.ad.transformers[0])):
            self.handles.append(blk.register_forward_hook(self._hook(i)))

    def _pre(self, module, args):
        self.n += 1

    def _hook(self, i):
        def f(module, args, output):
            self.calls.append((self.n - 1, i, self.ad.video_tokens(output).detach().clone()))
        return f

    def close(self):
        for h in self.handles:
            h.remove()


def _reference(h):
    flat = h.reshape(-1, h.shape[-1]).abs()
    return flat.amax(0), flat.mean(0), h.abs().flatten().median()


def test_record_equals_bruteforce_wan(wan):
    kw = call_kwargs(wan, num_inference_steps=3)
    chans = [1, 7]
    bf = BruteForce(wan)
    try:
        with stas.record(wan, channels=chans) as rec:
            stas.generate(wan, "a red square moves left", seed=0, **kw)
    finally:
        bf.close()
    s = rec.stats
    D = get_adapter(wan).hidden_size
    L = s.layout.num_tokens
    assert s["chan_max"].shape == (1, 3, 2, 2, D)
    assert s["tokens"].shape == (1, 3, 2, 2, L, 2)
    assert s["filled"].all()
    # Wan: call 2k is step k cond, call 2k+1 is step k uncond
    for call, block, h in bf.calls:
        step, branch = divmod(call, 2)
        mx, mean, med = _reference(h)
        torch.testing.assert_close(s["chan_max"][0, step, block, branch], mx)
        torch.testing.assert_close(s["chan_mean"][0, step, block, branch], mean)
        torch.testing.assert_close(s["median"][0, step, block, branch], med)
        torch.testing.assert_close(s["tokens"][0, step, block, branch], h[0][:, chans])
    assert len(bf.calls) == 3 * 2 * 2  # steps x branches x blocks


def test_record_cogvideox_batched_cfg(cog):
    kw = call_kwargs(cog)
    bf = BruteForce(cog)
    try:
        with stas.record(cog, channels=[3]) as rec:
            stas.generate(cog, "a blue circle", seed=1, **kw)
    finally:
        bf.close()
    s = rec.stats
    assert s["filled"].all()
    for call, block, h in bf.calls:  # one call per step; batch = [uncond, cond]
        unc, cond = h[:1], h[1:]
        torch.testing.assert_close(s.get("chan_max", run=0, step=call, block=block, branch="uncond"), _reference(unc)[0])
        torch.testing.assert_close(s.get("chan_max", run=0, step=call, block=block, branch="cond"), _reference(cond)[0])
        torch.testing.assert_close(s.get("tokens", run=0, step=call, block=block, branch="cond", channel=3), cond[0, :, 3])


def test_no_guidance_leaves_uncond_empty(wan):
    with stas.record(wan, blocks=[1]) as rec:
        stas.generate(wan, "a ball", seed=0, **call_kwargs(wan, guidance_scale=1.0))
    s = rec.stats
    assert s["filled"][0, :, 0].all() and not s["filled"][0, :, 1].any()
    assert torch.isnan(s["chan_max"][0, :, 0, 1]).all() and not torch.isnan(s["chan_max"][0, :, 0, 0]).any()
    assert s.blocks == [1]


def test_runs_save_load_roundtrip(wan, tmp_path):
    kw = call_kwargs(wan)
    with stas.record(wan, channels=[0], full=[(0, 1)]) as rec:
        for seed in (0, 1):
            rec.label(prompt="a ball", seed=seed)
            stas.generate(wan, "a ball", seed=seed, **kw)
    s = rec.stats
    assert s.num_runs == 2 and s.meta["runs"] == [{"prompt": "a ball", "seed": 0}, {"prompt": "a ball", "seed": 1}]
    assert not torch.equal(s["chan_max"][0], s["chan_max"][1])  # different seeds, different stats
    assert set(s.full) == {"0/0/1/cond", "0/0/1/uncond", "1/0/1/cond", "1/0/1/uncond"}
    torch.testing.assert_close(s.full["1/0/1/cond"][:, 0], s.get("tokens", run=1, step=0, block=1, branch="cond")[:, 0])
    path = s.save(tmp_path / "rec.safetensors")
    r = Recording.load(path)
    assert r.blocks == s.blocks and r.channels == s.channels and r.layout == s.layout and r.meta == s.meta
    for k in s.data:
        assert torch.equal(r[k], s[k]) if k == "filled" else torch.allclose(r[k], s[k], equal_nan=True)
    both = Recording.cat([s, r])
    assert both.num_runs == 4


def test_recording_is_deterministic(wan):
    kw = call_kwargs(wan)
    outs = []
    for _ in range(2):
        with stas.record(wan) as rec:
            stas.generate(wan, "a ball", seed=3, **kw)
        outs.append(rec.stats["chan_max"])
    assert torch.equal(outs[0], outs[1])


def test_full_at_a_step_the_run_never_reaches_is_an_error(wan):
    with pytest.raises(ValueError, match=r"steps \[5\], but this run executes 4"):
        with stas.record(wan, full=[(5, 0)]):
            stas.generate(wan, "a ball", seed=0, **call_kwargs(wan))
    assert not wan.transformer.blocks[0]._forward_hooks


def test_record_validates_and_unhooks(wan):
    with pytest.raises(ValueError, match="out of range"):
        stas.record(wan, blocks=[5])
    with pytest.raises(ValueError, match="out of range"):
        stas.record(wan, channels=[24])
    blk = wan.transformer.blocks[0]
    with pytest.raises(RuntimeError, match="boom"):
        with stas.record(wan):
            raise RuntimeError("boom")
    assert not blk._forward_hooks and not wan.transformer._forward_pre_hooks
    assert "step" not in wan.scheduler.__dict__ and "set_timesteps" not in wan.scheduler.__dict__


# -- the per-call reduction against a float64 brute force ------------------------------------------

def _stats_row(x, k, chans=(1, 4)):
    """Run the record op (torch path) on x (b, L, D): (max, mean, median estimate, tokens) as float32."""
    d = x.shape[-1]
    key = torch.randint(2 ** 31 - 1, (k,), generator=torch.Generator().manual_seed(0))
    stats = torch.full((3, 2 * d + k), float("nan"))
    tokens = torch.full((3, x.shape[1], len(chans)), float("nan"))
    torch.ops.stas.block_stats(x, torch.tensor([1]), stats, tokens, torch.tensor(chans), key)
    assert torch.isnan(stats[[0, 2]]).all() and torch.isnan(tokens[[0, 2]]).all()
    return stats[1, :d], stats[1, d:2 * d], median_from_sample(stats[1], d), tokens[1]


def _block_output_like(shape, dtype, seed):
    """Gaussian bulk with a few massive activations (two channels, first tokens), like a DiT block output."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * 0.8
    x[:, :3, 2] = 400.0
    x[:, :, 5] -= 60.0
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape,k", [((1, 64, 32), 4096), ((2, 40, 24), 4096), ((1, 1500, 96), 4096)])
def test_block_stats_equal_float64_bruteforce(dtype, shape, k):
    x = _block_output_like(shape, dtype, seed=k + shape[1])
    mx, mean, med, tok = _stats_row(x, k)
    a = x.double().abs()
    ref_max, ref_mean = a.flatten(0, 1).amax(0), a.flatten(0, 1).mean(0)
    assert torch.equal(mx.double(), ref_max)                               # an element: exact
    torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-5, atol=0)  # float32 accumulation
    torch.testing.assert_close(tok.double(), x.double()[..., [1, 4]].mean(0), rtol=1e-6, atol=0)
    flat = a.flatten()
    if flat.numel() <= k:  # every entry in the sample: the exact (lower) median
        assert med.double() == flat.median()
    else:                  # the sample's median: a quantile within the stated rank band, and close in value
        delta = median_rank_band(k, confidence=1 - 1e-6)
        assert (flat <= med).double().mean() >= 0.5 - delta and (flat < med).double().mean() <= 0.5 + delta
        assert abs(med.double() / flat.median() - 1) <= 2.33 * delta


def test_median_rank_band_covers_as_stated():
    """Over many tensors and sample positions, the estimate's population rank falls within the 90 %
    band at least about 90 % of the time (stratified sampling: a little more)."""
    k = 101
    assert abs(median_rank_band(16384, 0.99) - 2.5758 / (2 * 16384 ** 0.5)) < 2e-4  # ~ z / (2 sqrt(k))
    delta = median_rank_band(k, 0.9)
    from scipy.stats import binom  # the band's miss probability, by scipy: 0.1 at delta, more just inside it
    miss = lambda d: binom.cdf(50, k, 0.5 + d) + binom.sf(50, k, 0.5 - d)  # noqa: E731
    assert miss(delta) <= 0.1 + 1e-9 and miss(delta - 1e-6) > 0.1
    inside = []
    for seed in range(300):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(1, 200, 64, generator=g) * torch.rand(1, 200, 1, generator=g)  # tokens of varied scale
        key = torch.randint(2 ** 31 - 1, (k,), generator=g)
        stats = torch.full((1, 2 * 64 + k), float("nan"))
        torch.ops.stas.block_stats(x, torch.tensor([0]), stats, None, torch.tensor([0]), key)
        med, a = median_from_sample(stats[0], 64), x.abs().flatten()
        inside.append(bool((a <= med).double().mean() >= 0.5 - delta and (a < med).double().mean() <= 0.5 + delta))
    assert sum(inside) / len(inside) >= 0.86, sum(inside)


def test_recording_bytes_is_what_record_allocates(wan):
    kw = call_kwargs(wan, num_inference_steps=2)
    ad = get_adapter(wan)
    with stas.record(wan, channels=[0, 3], median_elems=1000) as rec:
        stas.generate(wan, "a ball", seed=0, **kw)
        used = sum(v.numel() * v.element_size() for hk in rec._hooks.values() for v in hk.bufs.values())
        L = rec.layout.num_tokens
    assert used == recording_bytes(ad.num_blocks, ad.hidden_size, L, 2, channels=2, median_elems=1000)
    assert recording_bytes(30, 1536, 32760, 50, channels=2) == 1_019_712_000  # Wan2.1-1.3B, full size (README)
    assert recording_bytes(30, 1536, 32760, 50) == 233_472_000


def test_compiled_blocks_one_graph_for_runs_of_any_length():
    """compile_repeated_blocks(fullgraph=True): runs of 2 and then 3 steps (buffers of 4 and 6 rows) share
    one recording graph: the buffers' row count is dynamic, so a new run length does not recompile."""
    from torch._dynamo.utils import counters

    from test_setups import tiny

    pipe = tiny()
    pipe.transformer.compile_repeated_blocks(backend="eager", fullgraph=True)
    kw = dict(prompt="a ball", height=32, width=32, num_frames=9, guidance_scale=2.0, max_sequence_length=16,
              output_type="pt")
    pipe(num_inference_steps=2, **kw)
    n0 = counters["stats"]["unique_graphs"]
    try:
        with stas.record(pipe, channels=[1]) as rec:
            pipe(num_inference_steps=2, **kw)
            first = rec.stats
            n1 = counters["stats"]["unique_graphs"]
            pipe(num_inference_steps=3, **kw)
        assert n1 - n0 <= 1 and counters["stats"]["unique_graphs"] == n1  # (0 if an earlier test compiled it)
    finally:
        torch._dynamo.reset()  # later tests count the graphs they compile themselves
    assert first.num_steps == 2 and first["filled"].all()


def test_statistics_as_attributes_are_the_item_tensors(tmp_path):
    """``rec.stats`` prints its statistics like fields: ``stats.chan_max`` is ``stats["chan_max"]``
    (the same tensor object), read-only; an unknown name is an AttributeError naming the statistics;
    copying and a save/load round trip keep working."""
    import copy

    from stas.layout import TokenLayout

    data = {"chan_max": torch.rand(1, 2, 3, 2, 8), "chan_mean": torch.rand(1, 2, 3, 2, 8),
            "median": torch.rand(1, 2, 3, 2), "timesteps": torch.tensor([[999.0, 500.0]]),
            "filled": torch.ones(1, 2, 2, dtype=torch.bool)}
    s = Recording(data, [0, 1, 2], [], TokenLayout(2, 2, 2))
    for k in data:
        assert getattr(s, k) is s[k] is data[k]
    assert "chan_max" in dir(s) and "chan_max(1, 2, 3, 2, 8)" in repr(s)
    with pytest.raises(AttributeError, match="read-only"):
        s.chan_max = torch.zeros(1)
    assert s.chan_max is data["chan_max"]
    with pytest.raises(AttributeError, match=r"no attribute 'tokens'; statistics: \['chan_max'"):
        s.tokens                                            # not recorded here; the message lists what is
    assert copy.deepcopy(s).chan_max.equal(s.chan_max) and copy.copy(s).median is s.median
    r = Recording.load(s.save(tmp_path / "r.safetensors"))
    assert torch.equal(r.chan_max, s.chan_max) and r.blocks == [0, 1, 2]
