"""stas.record / stas.steer under diffusers' context parallelism.

Two CPU processes (gloo) run a tiny Wan split by ``enable_parallelism(ContextParallelConfig(
ulysses_degree=2))`` on the native attention backend (Ulysses' all-to-all runs on gloo; ring attention
needs a backend that returns the log-sum-exp, GPU only): recordings and steered videos equal a
one-process run, on every rank, eager and with ``compile_repeated_blocks(fullgraph=True)``. An uneven
split (27 tokens over 2 ranks, as ``ulysses_anything`` / ``ring_anything`` make it; diffusers' uneven
gather at ``proj_out`` does not run on gloo) is checked on the hooks' reductions with the same gloo
group. On GPUs (bf16, ring and Ulysses, a real size): ``benchmarks/context_parallel.py``.
"""

import time
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import stas
from stas.record import _sharded_block_stats
from stas.steer import steer_values
from stas.tracking import ContextParallelError, TokenShard

from conftest import call_kwargs, load_benchmark

PROMPT = "a red ball moves left"
CHANNELS = [3, 10]
STEER = stas.STASConfig(alpha=1.5, steps=2, blocks=(0, 1), channels=tuple(CHANNELS))


def _run(pipe, full=((1, 1),)):
    """What the one-process reference and every rank run: a recording (the chosen channels' tokens,
    whole hidden states at one (step, block), the median from a 100-entry sample, i.e. not every entry),
    then STAS on both blocks (first frame + boundary) with a recording of the steered outputs."""
    kw = call_kwargs(pipe, num_inference_steps=3)  # 9 x 32 x 32: 3 token-frames of 2 x 2 tokens = 12 tokens
    with stas.record(pipe, channels=CHANNELS, full=full, median_elems=100) as rec:
        stas.generate(pipe, PROMPT, seed=0, **kw)
    with stas.steer(pipe, STEER) as st, stas.record(pipe, channels=CHANNELS) as rec2:
        video = stas.generate(pipe, PROMPT, seed=0, **kw)
    return {"stats": rec.stats.data, "full": rec.stats.full, "steered": video, "steered_stats": rec2.stats.data,
            "clamped": st.clamped}


def _uneven_split(rank, world):
    """The hooks' reductions on rank ``rank``'s slice of a 27-token output (14 + 13 tokens), with the
    real process group, and their one-process values (no collective)."""
    shard = TokenShard(dist.group.WORLD, rank, world, 27)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 27, 24, generator=g)
    x[1, 20, 5] = -50.0  # a massive activation in rank 1's slice
    chan = torch.tensor(CHANNELS)
    out = {}
    for k in (100, 2000):  # a sample of 100 of the 1296 entries; 2000 > 1296: every entry, NaN padding
        key = torch.randint(2 ** 31 - 1, (k,), generator=g)
        for name, fn in (("one", lambda st, tok: torch.ops.stas.block_stats(x, torch.tensor([1]), st, tok, chan, key)),
                         ("cp", lambda st, tok: _sharded_block_stats(x[:, shard.lo:shard.hi], torch.tensor([1]),
                                                                     st, tok, chan, key, shard))):
            st, tok = torch.full((3, 48 + k), float("nan")), torch.full((3, 27, 2), float("nan"))
            fn(st, tok)
            out[f"{name}_stats_{k}"], out[f"{name}_tokens_{k}"] = st, tok
    v = x[..., chan]
    out["one_steer"] = steer_values(v, 1.5, False)[0]
    out["cp_steer"] = steer_values(v[:, shard.lo:shard.hi], 1.5, False, shard)[0]
    out["gathered"] = shard.gather_tokens(x[0, shard.lo:shard.hi])
    out["x"] = x
    return out


def _worker(rank, world, rendezvous, out_dir):
    from diffusers import ContextParallelConfig
    from torch._dynamo.utils import counters

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        # diffusers puts rank r on accelerator r % device_count(), which is 0 on a CPU-only torch
        torch.accelerator.device_count = lambda: 1
        pipe = stas.load("tiny-random-wan", device="cpu")
        pipe.transformer.set_attention_backend("native")
        pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
        res = {"eager": _run(pipe), "uneven": _uneven_split(rank, world)}
        try:
            with stas.enhance(pipe):
                pass
        except ContextParallelError as e:
            res["enhance_error"] = str(e)
        # after a first call (diffusers' split hook reads the block's signature then, which dynamo cannot trace)
        pipe.transformer.compile_repeated_blocks(backend="eager", fullgraph=True)
        res["compiled"] = _run(pipe, full=())  # full= is an eager-only opt-in
        n = counters["stats"]["unique_graphs"]
        _run(pipe, full=())
        res["graphs_added_by_a_second_run"] = counters["stats"]["unique_graphs"] - n  # a new TokenShard per call
        res["graph_breaks"] = sum(counters["graph_break"].values())
        torch.save(res, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    d = tmp_path_factory.mktemp("cp")
    with pytest.MonkeyPatch.context() as mpatch:
        mpatch.setenv("CUDA_VISIBLE_DEVICES", "")  # CPU workers also on a GPU machine (diffusers' mesh follows it)
        workers = mp.spawn(_worker, args=(2, str(d / "rendezvous"), str(d)), nprocs=2, join=False)
    deadline = time.monotonic() + 300
    while not workers.join(timeout=5):  # raises if a worker raised
        if time.monotonic() > deadline:  # a collective that never completes: stop our two workers
            for p in workers.processes:
                p.terminate()
            pytest.fail("context-parallel workers did not finish within 300 s")
    return [torch.load(d / f"rank{r}.pt") for r in range(2)]


@pytest.fixture(scope="module")
def single():
    pipe = stas.load("tiny-random-wan", device="cpu")
    stock = stas.generate(pipe, PROMPT, seed=0, **call_kwargs(pipe, num_inference_steps=3))
    return {**_run(pipe), "stock": stock}


def _same(a, b):
    """Bit-equal, NaN where the other is NaN."""
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0), b.nan_to_num(0)) \
        if a.is_floating_point() else torch.equal(a, b)


@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_recording_equals_one_process_on_every_rank(ranks, single, mode):
    for stats in ("stats", "steered_stats"):
        ref = single[stats]
        for name, val in ranks[0][mode][stats].items():
            torch.testing.assert_close(val, ref[name], rtol=1e-5, atol=1e-5, equal_nan=True, msg=f"{stats} {name}")
            assert _same(val, ranks[1][mode][stats][name]), f"ranks differ: {stats} {name}"
        assert torch.equal(ranks[0][mode][stats]["filled"], ref["filled"]) and ref["filled"].all()
    if mode == "eager":
        assert set(ranks[0]["eager"]["full"]) == {"0/1/1/cond", "0/1/1/uncond"} == set(single["full"])
        for k, v in single["full"].items():
            assert v.shape == (12, 24)
            torch.testing.assert_close(ranks[0]["eager"]["full"][k], v, rtol=1e-5, atol=1e-5)
            assert _same(ranks[0]["eager"]["full"][k], ranks[1]["eager"]["full"][k])


@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_steered_video_equals_one_process(ranks, single, mode):
    assert (single["steered"] - single["stock"]).abs().max() > 1e-2  # STAS changed the clip
    for r in ranks:
        torch.testing.assert_close(r[mode]["steered"], single["steered"], rtol=0, atol=1e-5)
        assert r[mode]["clamped"] == single["clamped"] == 0


def test_split_is_one_where_per_rank_reductions_differ(single):
    """The test above would catch a per-rank max: on the 12 tokens split 6 + 6, the per-rank max |h| of a
    chosen channel differs from the global one at some (step, block, branch) for each rank, and the
    boundary tokens of token-frame 1 (tokens 4 and 7) lie on different ranks."""
    tok = single["stats"]["tokens"].abs()                       # (run, step, block, branch, 12, 2)
    glob = tok.amax(-2)
    assert (tok[..., :6, :].amax(-2) < glob).any() and (tok[..., 6:, :].amax(-2) < glob).any()


def test_compiled_blocks_trace_the_collectives_without_graph_breaks_or_recompiles(ranks):
    for r in ranks:
        assert r["graph_breaks"] == 0 and r["graphs_added_by_a_second_run"] == 0


def test_uneven_split_reductions_equal_one_process(ranks):
    """27 tokens on 2 ranks (14 + 13, `tensor_split`): record's row (max, mean, sample at the global
    positions, chosen channels' tokens), STAS' values on each rank's slice and the gathered tokens."""
    for rank, r in enumerate(ranks):
        u = r["uneven"]
        lo, hi = (0, 14) if rank == 0 else (14, 27)
        for k in (100, 2000):
            one, cp = u[f"one_stats_{k}"], u[f"cp_stats_{k}"]
            assert _same(cp[[0, 2]], one[[0, 2]]) and torch.isnan(one[[0, 2]]).all()      # other rows untouched
            assert _same(cp[1, :24], one[1, :24])                                          # max: exact
            torch.testing.assert_close(cp[1, 24:48], one[1, 24:48], rtol=1e-6, atol=0)    # mean: sum order
            assert _same(cp[1, 48:], one[1, 48:])                                          # sample: exact
            assert _same(u[f"cp_tokens_{k}"], u[f"one_tokens_{k}"])
        assert torch.isnan(u["one_stats_2000"][1, 48 + 1296:]).all()  # the sample's padding past 2 x 27 x 24
        assert torch.equal(u["cp_steer"], u["one_steer"][:, lo:hi])
        assert torch.equal(u["gathered"], u["x"][0])


def test_unsupported_context_parallelism_raises_on_enter(ranks, monkeypatch):
    assert "stas.enhance does not support diffusers' context parallelism" in ranks[0]["enhance_error"]
    fake = SimpleNamespace(context_parallel_config=SimpleNamespace())
    wan = stas.tiny_random_pipeline("wan")
    monkeypatch.setattr(wan.transformer, "_parallel_config", fake)  # a plan that splits no block input
    with pytest.raises(ContextParallelError, match="does not split the video tokens at the input of the first block"):
        with stas.record(wan):
            pass
    cog = stas.tiny_random_pipeline("cogvideox")
    monkeypatch.setattr(cog.transformer, "_parallel_config", fake)
    with pytest.raises(ContextParallelError, match="Wan transformers only"):
        with stas.steer(cog, stas.STASConfig(steps=1, blocks=(0,), channels=(1,))):
            pass


@pytest.mark.parametrize("tokens,world", [(12, 2), (32760, 4), (27, 2), (10, 4), (7, 7)])
def test_token_shard_is_diffusers_split(tokens, world):
    """Rank r's [lo, hi) is ``tensor_split(world)[r]`` (ulysses/ring_anything) and, when ``world`` divides
    the tokens, ``chunk(world)[r]`` (diffusers' default equipartition)."""
    idx = torch.arange(tokens)
    for r in range(world):
        s = TokenShard(None, r, world, tokens)
        assert torch.equal(idx[s.lo:s.hi], idx.tensor_split(world)[r])
        if tokens % world == 0:
            assert torch.equal(idx[s.lo:s.hi], idx.chunk(world)[r])


def test_all_gather_runs_on_torch_without_all_gather_single(tmp_path, monkeypatch):
    """`TokenShard.all_gather` uses only functional collectives torch 2.11 has: it once called
    ``funcol.all_gather_single``, which torch 2.13 has (its ``all_gather_tensor`` calls it) and torch
    2.11 (the GPU machines') lacks, and every recorded block then raised AttributeError under context
    parallelism on GPUs. Here a call to it from stas raises as on torch 2.11."""
    import sys

    import torch.distributed._functional_collectives as funcol

    real = getattr(funcol, "all_gather_single", None)

    def as_on_torch_2_11(*a, **k):
        if real is None or sys._getframe(1).f_globals.get("__name__", "").startswith("stas"):
            raise AttributeError("module 'torch.distributed._functional_collectives' has no attribute "
                                 "'all_gather_single'")
        return real(*a, **k)

    monkeypatch.setattr(funcol, "all_gather_single", as_on_torch_2_11, raising=False)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdv'}", rank=0, world_size=1)
    try:
        t = torch.arange(6.0).view(2, 3)
        g = TokenShard(dist.group.WORLD, 0, 1, 2).all_gather(t)
    finally:
        dist.destroy_process_group()
    assert g.shape == (1, 2, 3) and torch.equal(g[0], t)


def test_readme_table_is_the_committed_gpu_results():
    """The README's context-parallelism table is `benchmarks/context_parallel.py`'s table of the committed
    2-GPU JSON, and that JSON says what the README text claims: Ulysses bit-equal to one GPU, the hooks'
    reductions exact."""
    import json

    bench = load_benchmark("context_parallel")
    res = json.loads(bench.RESULTS.read_text())
    assert bench.table(res) in (bench.ROOT / "README.md").read_text()
    u = res["modes"]["ulysses"]
    assert u["latents"]["none"]["max_abs"] == u["latents"]["STAS"]["max_abs"] == 0.0
    assert all(u["ok"].values()) and res["reduction"]["ok"]


def test_benchmark_counts_sign_flips_at_the_steered_block():
    """`benchmarks/context_parallel.py`'s sign count: a steered value that changes sign is a flip, and the
    relative difference is reported over the values whose sign held (rows: run, step, block, branch,
    token, channel)."""
    bench = load_benchmark("context_parallel")
    one = torch.full((1, 3, 4, 2, 5, 1), 2.0)
    one[0, 2] = float("nan")                    # a step past K: never compared
    many = one.clone()
    many[0, 0, 1, 0, 3, 0] = -2.0               # a flip at the steered block 1, step 0
    many[0, 1, 1, 1, 0, 0] = 2.5                # a value whose sign held, 0.25 of max |1 GPU|
    many[0, 0, 2, 0, 0, 0] = -9.0               # another block: not counted
    wrap = lambda t: {"STAS": {"stats": {"tokens": t}}}  # noqa: E731
    got = bench.sign_flips(wrap(one), wrap(many), block=1, steps=2)
    assert got == {"entries": 20, "sign_flips": 1, "max_rel_where_sign_held": 0.25}
