"""Overhead of `stas.record` and `stas.steer` on a full-size Wan2.1-T2V-1.3B transformer.

    python benchmarks/overhead.py                     # GPU, ~6 min: writes benchmarks/results/overhead.json
    python benchmarks/overhead.py --small             # seconds-long smoke run on the CPU (writes nothing)
    python benchmarks/overhead.py --readme            # README performance table from the committed JSON
    python benchmarks/overhead.py --parts compiled_profile && python benchmarks/overhead.py --readme
        # GPU, ~2 min at 5 repeats (measured), ~3 at the default 15: only the profiler part, merged into the
        # committed JSON (other parts kept), README table

Random bf16 weights and text embeddings (timing does not depend on them); 81 frames at 480 x 832
(32 760 tokens), text length 512. Parts, in this order (``--parts``; the JSON is rewritten after each
part, so a run cut short keeps what it measured):

* ``kernel``: the per-block reduction alone on a block-output-sized bf16 tensor, for each backend
  (``torch`` eager ops, ``torch_compiled`` = the same function through torch.compile, ``triton`` =
  `stas._kernels`): GPU time per call, its error against a float64 brute force (bf16 and fp16), the
  median estimate's rank against the exact median; a sweep of Triton tiles (the fastest is used for
  the rest of the run and printed as the line to commit); the one-read floor (``torch.sum``).
* ``eager`` / ``compiled``: whole forwards with no hooks, STAS on block 15, record on all 30 blocks
  (2 channels of per-token values), interleaved round by round, medians; the hooks' own GPU time with
  CUDA events per reduction backend (eager: the 30 record hooks called on a block-output-sized tensor,
  launches queued behind a GPU spin; compiled, ``compile_repeated_blocks(fullgraph=True)``: one
  compiled block with minus without the hook, paired over >= 15 interleaved rounds, x 30, with its
  spread); graphs added, graph breaks, host syncs (CUDA sync debug mode "error").
* ``pipeline``: 10 steps of ``WanPipeline`` (CFG, ``prompt_embeds``, latents out) without hooks,
  with record on all blocks, with STAS, as ratios to no hooks, and the device memory record took.
* ``compiled_profile``: record's GPU kernel time in compiled blocks without wall-clock noise.
  ``torch.profiler`` (``ProfilerActivity.CUDA``; on the CPU ``ProfilerActivity.CPU``, ops' self time)
  records ``--profile-forwards`` compiled forwards without hooks and as many with record on all blocks,
  per reduction backend, ``--profile-repeats`` times (order rotated). Kernels are matched by name
  between the two profiles (`canonical_kernel`: inductor's per-graph index dropped); the hook's time
  per forward is that of the kernel launches the hooked forward runs beyond the hook-free one, minus
  those it no longer runs (`attribute`): the Triton kernels of `stas._kernels` (``_main_pass``,
  ``_final_pass``) or the torch reduction's kernels, plus anything the compiled graph adds for the
  hook. Reported per block and as % of the hook-free forward's total kernel time, median and spread
  over the repeats, with the raw difference of total kernel time as a cross-check.

A run with a subset of ``--parts`` writing to an existing results file keeps that file's other parts
(and its header; the profiler part carries its own date and versions).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import stas  # noqa: E402
from stas import _kernels  # noqa: E402
from stas.record import _BlockRecorder, median_from_sample, median_rank_band, recording_bytes  # noqa: E402
from stas.steer import _SteerHook  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "overhead.json"
WAN21_1P3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                  out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
SMALL = dict(WAN21_1P3B, num_attention_heads=2, attention_head_dim=32, text_dim=64, ffn_dim=128, num_layers=4)
CHANNELS = [0, 1]
# Triton tiles tried at the real shape: (block_n, block_d, rows_per_program, num_warps, acc2d, stages)
_TILES = [(16, 256, 512, 4, True, 3), (16, 256, 256, 4, True, 3), (16, 256, 512, 4, True, 1),
          (16, 256, 256, 4, True, 1), (32, 256, 256, 8, True, 3), (32, 256, 512, 8, True, 1),
          (32, 256, 512, 8, True, 2), (16, 512, 512, 8, True, 3), (16, 512, 1024, 8, True, 1),
          (32, 128, 512, 4, True, 3), (64, 128, 1024, 8, True, 3), (32, 256, 256, 4, False, 1),
          (64, 128, 512, 8, True, 3), (64, 128, 2048, 8, True, 3), (128, 128, 1024, 8, True, 3),
          (64, 128, 1024, 8, True, 4), (64, 64, 1024, 4, True, 3), (32, 128, 1024, 4, True, 3)]
SWEEP = [dict(block_n=bn, block_d=bd, rows_per_program=r, num_warps=w, acc2d=a, stages=st)
         for bn, bd, r, w, a, st in _TILES]
MARKERS = ("<!-- overhead-table:begin -->", "<!-- overhead-table:end -->")
PARTS = ("kernel", "eager", "pipeline", "compiled", "compiled_profile")  # the default order


def timer(device, hide_launches=False):
    """fn -> ms per call. On CUDA with ``hide_launches`` the GPU first spins ~50 ms so that every launch
    below is queued before the start event runs: the time is then the kernels' GPU time alone, as
    inside a real forward where the CPU runs ahead of the GPU."""
    if device.type == "cuda":
        def run(fn, n=1):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            if hide_launches:
                torch.cuda._sleep(100_000_000)
            s.record()
            for _ in range(n):
                fn()
            e.record()
            torch.cuda.synchronize()
            return s.elapsed_time(e) / n
    else:
        def run(fn, n=1):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            return (time.perf_counter() - t0) * 1e3 / n
    return run


class Bench:
    """Shared state of one benchmark run: model, inputs, results (written after every part)."""

    def __init__(self, args):
        from diffusers import WanTransformer3DModel

        self.args = args
        self.t0 = time.perf_counter()
        self.device = torch.device("cuda" if torch.cuda.is_available() and not args.small else "cpu")
        self.cuda = self.device.type == "cuda"
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.cfg = SMALL if args.small else WAN21_1P3B
        self.frames, self.height, self.width, self.text_len = (5, 64, 64, 16) if args.small else (81, 480, 832, 512)
        self.layout = stas.TokenLayout.from_video(self.frames, self.height, self.width)
        self.n_blocks = self.cfg["num_layers"]
        self.d = self.cfg["num_attention_heads"] * self.cfg["attention_head_dim"]
        self.mid = self.n_blocks // 2
        # torch_compiled and triton on CUDA; triton also on the CPU under TRITON_INTERPRET=1 (smoke tests)
        self.backends = ["torch"] + (["torch_compiled"] if self.cuda else []) + \
            (["triton"] if _kernels.available(torch.empty(0, device=self.device)) else [])
        torch.manual_seed(0)
        with torch.device(self.device):
            self.t = WanTransformer3DModel(**self.cfg).to(self.dtype).eval()
        lay = self.layout
        self.x = torch.randn(1, 16, lay.latent_frames, lay.latent_height, lay.latent_width, device=self.device,
                             dtype=self.dtype)
        self.ts = torch.tensor([500.0], device=self.device)
        self.text = torch.randn(1, self.text_len, self.cfg["text_dim"], device=self.device, dtype=self.dtype)
        self.tm = timer(self.device)
        self.tm_gpu = timer(self.device, hide_launches=True)
        self.steer_cfg = stas.STASConfig(alpha=1.0, steps=1, blocks=[self.mid], channels=CHANNELS)
        self.compiled = False  # blocks compiled (`compile_blocks`)
        import diffusers

        self.res = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name() if self.cuda else "cpu",
                    "torch": torch.__version__, "diffusers": diffusers.__version__,
                    "triton": getattr(_kernels.triton, "__version__", None), "cuda": torch.version.cuda,
                    "small": args.small, "shape": [lay.num_tokens, self.d], "tokens": lay.num_tokens,
                    "blocks": self.n_blocks, "channels": CHANNELS, "cuda_backend": _kernels.CUDA_BACKEND,
                    "triton_config": dict(_kernels.CONFIG), "median_elems": 16384,
                    "median_rank_band_99": median_rank_band(16384, 0.99)}
        self.log(f"{self.res['device']}; torch {torch.__version__}; diffusers {diffusers.__version__}; "
                 f"{lay.describe()}; {sum(p.numel() for p in self.t.parameters()) / 1e6:.0f} M params")

    def log(self, msg):
        print(f"[{time.perf_counter() - self.t0:6.1f} s] {msg}", flush=True)

    def save(self):
        if self.args.out:
            Path(self.args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(self.args.out).write_text(json.dumps(self.res, indent=1))

    def forward(self):
        return self.t(hidden_states=self.x, timestep=self.ts, encoder_hidden_states=self.text, return_dict=False)[0]

    def variants(self, steer=True):
        v = {"none": _Null}
        if steer:
            v[f"STAS (block {self.mid})"] = lambda: stas.steer(self.t, self.steer_cfg)
        v[f"record ({self.n_blocks} blocks)"] = lambda: stas.record(self.t, channels=CHANNELS)
        return v

    def block_output(self, dtype=None):
        """A block-output-like (1, L, D) tensor: Gaussian bulk, two massive channels on the first tokens."""
        g = torch.Generator(device=self.device).manual_seed(0)
        h = torch.randn(1, self.layout.num_tokens, self.d, device=self.device, generator=g)
        h[:, :4, 3] = 900.0
        h[:, :, 7] -= 40.0
        return h.to(dtype or self.dtype)


def compile_blocks(b: Bench):
    """diffusers' ``compile_repeated_blocks(fullgraph=True)`` on the transformer, once per run (backend
    "eager" on the CPU)."""
    if not b.compiled:
        b.t.compile_repeated_blocks(fullgraph=True, **({} if b.cuda else {"backend": "eager"}))
        b.compiled = True


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def use_backend(name):
    _kernels.BACKEND = name


# -- parts --------------------------------------------------------------------------------------

def part_kernel(b: Bench):
    """The reduction alone: time and error per backend, Triton tile sweep, one-read floor."""
    out = b.res.setdefault("kernel", {})
    h = b.block_output()
    L, D = h.shape[1:]
    k = 16384
    key = torch.randint(2 ** 31 - 1, (k,), generator=torch.Generator().manual_seed(0)).to(b.device)
    chan = torch.tensor(CHANNELS, device=b.device)
    at = torch.zeros(1, dtype=torch.long, device=b.device)
    stats = torch.full((2, 2 * D + k), float("nan"), device=b.device)
    tokens = torch.full((2, L, len(CHANNELS)), float("nan"), device=b.device)
    op = lambda: torch.ops.stas.block_stats(h, at, stats, tokens, chan, key)  # noqa: E731
    flat = h.reshape(L, D)
    out["read_floor_us"] = 1e3 * statistics.median(b.tm_gpu(lambda: flat.sum(0, dtype=torch.float32), 30) for _ in range(5))
    out["bytes"] = h.numel() * h.element_size()
    if "triton" in b.backends and not b.args.no_sweep:
        sweep = []
        for cfg in SWEEP:
            try:
                _kernels.block_stats(h, at, stats, tokens, chan, key, config=cfg)
                us = 1e3 * statistics.median(b.tm_gpu(lambda: _kernels.block_stats(h, at, stats, tokens, chan, key,
                                                                                    config=cfg), 30) for _ in range(3))
            except Exception as e:  # a tile the compiler rejects (e.g. out of registers): skipped, noted
                sweep.append({**cfg, "error": str(e)[:200]})
                continue
            sweep.append({**cfg, "us": us})
            b.log(f"triton tile {cfg}: {us:.1f} us")
        ok = [s for s in sweep if "us" in s]
        if not ok:
            raise RuntimeError(f"every Triton tile failed: {sweep}")
        best = min(ok, key=lambda s: s["us"])
        _kernels.CONFIG = {kk: best[kk] for kk in SWEEP[0]}
        out["sweep"] = sweep
        b.res["triton_config"] = dict(_kernels.CONFIG)
        b.log(f"fastest tile {_kernels.CONFIG} ({best['us']:.1f} us); used below. To make it the default: "
              f"CONFIG = dict({', '.join(f'{kk}={v}' for kk, v in _kernels.CONFIG.items())}) in stas/_kernels.py")
    exact = {}
    for dt in ([torch.bfloat16, torch.float16] if b.cuda else [b.dtype]):
        hx = h if dt == h.dtype else b.block_output(dt)
        a = hx.double().abs().reshape(L, D)
        med = a.flatten().median()
        exact[str(dt)] = (hx, a.amax(0), a.mean(0), hx.double()[0][:, CHANNELS], a.flatten(), med)
    band = median_rank_band(k, 0.99)
    for name in b.backends:
        use_backend(name)
        row = {}
        try:
            measure_backend(b, row, exact, op, stats, tokens, at, chan, key, D, band)
        except Exception as e:  # one failing backend must not cost the others' numbers
            row["error"] = f"{type(e).__name__}: {e}"[:300]
        out.setdefault("backends", {})[name] = row
        b.log(f"reduction {name}: {json.dumps(row)}")
    use_backend(None)
    b.log(f"one-read floor (flat.sum): {out['read_floor_us']:.1f} us")
    b.save()


def measure_backend(b, row, exact, op, stats, tokens, at, chan, key, D, band):
    """Error against float64 (each dtype) and GPU time per call of the current backend."""
    for dt, (hx, mx, mean, tok, aflat, med) in exact.items():
            stats.fill_(float("nan"))
            torch.ops.stas.block_stats(hx, at, stats, tokens, chan, key)
            est = median_from_sample(stats[0], D).double()
            rank = [(aflat < est).double().mean().item(), (aflat <= est).double().mean().item()]
            row[dt] = {"max_rel_err": ((stats[0, :D] - mx) / mx).abs().max().item(),
                       "mean_rel_err": ((stats[0, D:2 * D] - mean) / mean).abs().max().item(),
                       "tokens_max_abs_err": (tokens[0] - tok).abs().max().item(),
                       "median_rel_err": (est / med - 1).item(), "median_rank": rank,
                       "median_in_band_99": rank[1] >= 0.5 - band and rank[0] <= 0.5 + band}
    op()
    row["us_per_block"] = 1e3 * statistics.median(b.tm_gpu(op, 30) for _ in range(5))


def _hooks_eager(b: Bench):
    """GPU time of the 30 record hooks and of the STAS hook called on a block-output-sized tensor."""
    h = b.block_output()
    out = {}
    with torch.no_grad(), stas.record(b.t, channels=CHANNELS), stas.steer(b.t, b.steer_cfg) as st:
        b.forward()  # allocate, set positions
        rhooks = [hk for blk in b.t.blocks for hk in blk._forward_hooks.values() if isinstance(hk, _BlockRecorder)]
        shook = next(hk for hk in b.t.blocks[b.mid]._forward_hooks.values() if isinstance(hk, _SteerHook))
        st.active = True
        for name in b.backends:
            use_backend(name)
            try:
                for _ in range(2):
                    [hk(None, None, h) for hk in rhooks]
                ms = statistics.median(b.tm_gpu(lambda: [hk(None, None, h) for hk in rhooks]) for _ in range(5))
                out[name] = {"us_per_block": 1e3 * ms / len(rhooks), "ms_all_blocks": ms}
            except Exception as e:
                out[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
        use_backend(None)
        shook(None, None, h)
        out["stas_ms"] = statistics.median(b.tm_gpu(lambda: shook(None, None, h)) for _ in range(5))
    return out


def _hooks_compiled(b: Bench, rounds):
    """One compiled block with minus without the record hook (paired per round), per backend, x 30."""
    blk = b.t.blocks[b.mid]
    cap = {}
    pre = blk.register_forward_pre_hook(lambda m, a, kw: cap.setdefault("a", (a, kw)), with_kwargs=True)
    with torch.no_grad():
        b.forward()
    pre.remove()
    a, kw = cap["a"]
    run = lambda: blk(*a, **kw)  # noqa: E731
    n = 3 if b.args.small else 10
    times = {name: [] for name in ["none"] + b.backends}
    with torch.no_grad(), stas.record(b.t, channels=CHANNELS):
        b.forward()
        hooks = dict(blk._forward_hooks)
        failed = {}
        for name in b.backends:  # warm-up (compiles torch_compiled's function once)
            use_backend(name)
            try:
                run(), run()
            except Exception as e:
                failed[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
                del times[name]
        for r in range(rounds):
            order = times if r % 2 == 0 else dict(reversed(list(times.items())))
            for name in order:
                if name == "none":
                    blk._forward_hooks.clear()
                    times[name].append(b.tm(run, n))
                    blk._forward_hooks.update(hooks)
                else:
                    use_backend(name)
                    times[name].append(b.tm(run, n))
        use_backend(None)
    out = {"block_ms": statistics.median(times["none"]), "rounds": rounds, "calls_per_round": n, **failed}
    for name in [be for be in b.backends if be not in failed]:
        diff = sorted(1e3 * (t - t0) for t, t0 in zip(times[name], times["none"]))
        q = statistics.quantiles(diff, n=4) if len(diff) > 1 else [diff[0]] * 3
        out[name] = {"us_per_block": statistics.median(diff), "q25": q[0], "q75": q[2], "min": diff[0],
                     "max": diff[-1], "rounds_us": diff}
    # STAS needs its own compiled graph; measured only with --compiled-steer (compile time)
    return out


def part_mode(b: Bench, mode):
    """Whole forwards per variant (interleaved), hooks' own time, graphs, host syncs, in one mode."""
    from torch._dynamo.utils import counters

    compiled = mode == "compiled"
    if compiled:
        compile_blocks(b)
    variants = b.variants(steer=not compiled or b.args.compiled_steer)
    rows, graphs = {}, {}
    with torch.no_grad():
        for name, make in variants.items():  # warm-up (and compile) each variant
            before = counters["stats"]["unique_graphs"]
            with make():
                b.forward(), b.forward()
            graphs[name] = counters["stats"]["unique_graphs"] - before
            b.log(f"[{mode}] warm-up {name}: {graphs[name]} graph(s) added")
        names = list(variants)
        times = {name: [] for name in names}
        for r in range(b.args.repeats):  # rotate the order every round: no variant always runs first
            for name in names[r % len(names):] + names[:r % len(names)]:
                with variants[name]():
                    times[name].append(b.tm(b.forward))
        b.log(f"[{mode}] forwards timed")
        sync = {}
        if b.cuda:  # any host sync inside a hooked forward raises in "error" mode
            checks = [(n, None) for n in names[1:-1]] + [(names[-1], be) for be in b.backends]
            for name, be in checks:
                use_backend(be)
                with variants[name]():
                    b.forward()
                    torch.cuda.synchronize()
                    torch.cuda.set_sync_debug_mode("error")
                    try:
                        b.forward()
                        sync[name if be is None else f"{name} [{be}]"] = True
                    except RuntimeError as e:
                        sync[name if be is None else f"{name} [{be}]"] = f"sync: {e}"[:300]
                    finally:
                        torch.cuda.set_sync_debug_mode("default")
            use_backend(None)
    base = statistics.median(times["none"])
    for name in names:
        med = statistics.median(times[name])
        rows[name] = {"median_ms": med, "vs_none_pct": 100 * (med - base) / base, "graphs_added": graphs[name],
                      "all_ms": times[name]}
    out = {"forward": rows, "no_host_sync": sync, "backend_used": _kernels.backend(b.x),
           "triton_config": dict(_kernels.CONFIG)}
    b.res[mode] = out
    b.save()
    before = counters["stats"]["unique_graphs"]
    out["hooks"] = _hooks_compiled(b, b.args.block_rounds) if compiled else _hooks_eager(b)
    out["graphs_added_while_timing_hooks"] = counters["stats"]["unique_graphs"] - before  # 0: no recompiles
    for name in b.backends:
        hw = out["hooks"][name]
        if "error" in hw:
            b.log(f"[{mode}] record hooks, {name}: {hw['error']}")
            continue
        hw["pct_of_forward"] = 100 * b.n_blocks * hw["us_per_block"] / 1e3 / base
        b.log(f"[{mode}] record hooks, {name}: {hw['us_per_block']:.1f} us per block = {hw['pct_of_forward']:.3f} % "
              f"of the forward ({b.n_blocks} blocks)")
    if "stas_ms" in out["hooks"]:
        out["hooks"]["stas_pct_of_forward"] = 100 * out["hooks"]["stas_ms"] / base
    out["graph_breaks"] = sum(counters["graph_break"].values())
    b.log(f"[{mode}] graph breaks: {out['graph_breaks']}; host syncs: {sync or 'n/a (CPU)'}")
    b.save()


def part_pipeline(b: Bench):
    """10 steps of WanPipeline without hooks, with record on all blocks, with STAS; ratios."""
    from diffusers import UniPCMultistepScheduler, WanPipeline

    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=b.t, vae=None, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator(device=b.device).manual_seed(1)
    pe = torch.randn(1, b.text_len, b.cfg["text_dim"], device=b.device, dtype=b.dtype, generator=g)
    npe = torch.randn(1, b.text_len, b.cfg["text_dim"], device=b.device, dtype=b.dtype, generator=g)
    steps = b.args.pipeline_steps
    cfg = stas.STASConfig(alpha=1.0, steps=steps // 2, blocks=[b.mid], channels=CHANNELS)
    variants = {"none": _Null, "record": lambda: stas.record(pipe, channels=CHANNELS),
                "STAS": lambda: stas.steer(pipe, cfg)}
    mem = {}

    def call():
        return pipe(prompt_embeds=pe, negative_prompt_embeds=npe, height=b.height, width=b.width, num_frames=b.frames,
                    num_inference_steps=steps, guidance_scale=5.0, output_type="latent",
                    generator=torch.Generator(device=b.device).manual_seed(0)).frames

    times = {n: [] for n in variants}
    with torch.no_grad():
        if b.compiled:  # compiled blocks: compile every variant's graph before timing
            for name, make in variants.items():
                with make():
                    call()
            b.log("pipeline: compiled variants warmed up")
        for r in range(b.args.pipeline_repeats):
            names = list(variants)
            for name in names[r % 3:] + names[:r % 3]:
                if b.cuda:
                    torch.cuda.synchronize()
                before = torch.cuda.memory_allocated() if b.cuda else 0
                with variants[name]() as ctx:
                    t0 = time.perf_counter()
                    call()
                    if b.cuda:
                        torch.cuda.synchronize()
                    times[name].append(time.perf_counter() - t0)
                    if name == "record" and b.cuda:
                        mem["measured_bytes"] = torch.cuda.memory_allocated() - before
                    if name == "record":
                        assert ctx.stats["filled"].all()  # every step and branch recorded
                b.log(f"pipeline {name}: {times[name][-1]:.2f} s")
    base = statistics.median(times["none"])
    mem["formula_bytes"] = recording_bytes(b.n_blocks, b.d, b.layout.num_tokens, steps, channels=len(CHANNELS))
    b.res["pipeline"] = {"mode": "compiled" if b.compiled else "eager", "steps": steps, "cfg": True,
                         "repeats": b.args.pipeline_repeats, "seconds": times,
                         "ratio": {n: statistics.median(v) / base for n, v in times.items()}, "record_memory": mem}
    b.log(f"pipeline ratios: {json.dumps(b.res['pipeline']['ratio'])}; record memory {mem}")
    b.save()


# -- compiled_profile: the hook's kernel time from torch.profiler -----------------------------------

STAS_KERNELS = ("_main_pass", "_final_pass")  # the Triton kernels of stas/_kernels.py, as the profiler names them
DEVICE_ACTIVITIES = ("kernel", "gpu_memcpy", "gpu_memset")  # kineto activity types of GPU work (not annotations)


def canonical_kernel(name: str) -> str:
    """A kernel's name without what differs between two compiled graphs of the same code: inductor's
    per-graph kernel index (``triton_poi_fused_add_mul_3`` -> ``triton_poi_fused_add_mul``) and the
    frame / graph id of a compiled region (``Torch-Compiled Region: 0/1`` -> ``Torch-Compiled Region``).
    Other names (CUDA library kernels, ``_main_pass``, ``Memcpy DtoD ...``, ``aten::`` ops) are kept."""
    if name.startswith("triton_"):
        return re.sub(r"_\d+$", "", name)
    return re.sub(r"^(Torch-Compiled Region|CompiledFunction).*$", r"\1", name)


def is_stas_kernel(name: str) -> bool:
    """Whether a profiled kernel is one of `stas._kernels`' Triton kernels (with or without a
    ``triton_`` prefix or an index suffix)."""
    n = canonical_kernel(name).removeprefix("triton_").lstrip("_")
    return n in {k.lstrip("_") for k in STAS_KERNELS}


def _event_us(e, device: bool) -> float:
    """Duration of one profiler event in µs: a GPU event's own duration (its time range; else the
    ``self_device_time_total`` / ``device_time_total`` attributes of torch >= 2.4, else the older
    ``cuda_time_total``), a CPU op's self time (``self_cpu_time_total``)."""
    if not device:
        return float(e.self_cpu_time_total)
    tr = getattr(e, "time_range", None)
    if tr is not None:
        return float(tr.end - tr.start)
    for a in ("self_device_time_total", "device_time_total", "self_cuda_time_total", "cuda_time_total"):
        v = getattr(e, a, None)
        if v is not None:
            return float(v)
    raise AttributeError(f"profiler event {e.name!r} has no duration attribute")


def kernel_times(events, device: bool = True) -> dict:
    """``{canonical name: [launches, µs]}`` of a profile's events (``prof.events()``, `FunctionEvent`).

    ``device``: GPU kernels, memcpys and memsets (events whose ``device_type`` is not CPU; annotations
    that kineto mirrors on the GPU timeline, ``gpu_user_annotation``, and ``cuda_sync`` waits are left
    out: they span kernels already counted), each with its own duration. Else (a CPU profile) CPU ops
    with their self time (user annotations and Python functions left out), so that nested ops are
    counted once. Names: `canonical_kernel`."""
    from torch.autograd import DeviceType

    out = {}
    for e in events:
        act = getattr(e, "activity_type", None)
        if getattr(e, "is_user_annotation", False) or getattr(e, "is_python_function", False) \
                or getattr(e, "is_async", False) or (isinstance(act, str) and "annotation" in act):
            continue
        on_device = getattr(e, "device_type", DeviceType.CPU) != DeviceType.CPU
        if on_device != device or (device and isinstance(act, str) and act not in DEVICE_ACTIVITIES):
            continue
        row = out.setdefault(canonical_kernel(e.name), [0, 0.0])
        row[0] += 1
        row[1] += _event_us(e, device)
    return out


def attribute(with_hook: dict, without: dict, forwards_with: int = 1, forwards_without: int = 1) -> dict:
    """GPU time per forward that a hook adds, from two `kernel_times` tables (``forwards_with`` hooked
    forwards, ``forwards_without`` hook-free ones).

    Per name, launches and time are divided by the forwards. A name launched more often with the hook
    adds its extra launches at their mean duration with the hook (a name only in the hooked profile:
    all its time); a name launched less often removes its missing launches at their mean duration
    without the hook (e.g. a kernel fused differently once the hook is in the graph). Names launched
    equally often add nothing: their differences are run-to-run noise. Returns (µs per forward)
    ``us`` = added - removed, ``added_us``, ``removed_us``, ``stas_us`` (the `stas._kernels` launches
    among the added), ``diff_us`` = total with - total without (all kernels, noise included),
    ``total_with_us``, ``total_without_us``, and ``added`` / ``removed``: ``{name: {"calls", "us"}}``."""
    per = lambda tab, n: {k: (c / n, t / n) for k, (c, t) in tab.items()}  # noqa: E731
    w, o = per(with_hook, forwards_with), per(without, forwards_without)
    added, removed = {}, {}
    for name in sorted(set(w) | set(o)):
        (cw, tw), (co, to) = w.get(name, (0, 0.0)), o.get(name, (0, 0.0))
        if cw - co > 1e-9:
            added[name] = {"calls": cw - co, "us": (cw - co) * tw / cw}
        elif co - cw > 1e-9:
            removed[name] = {"calls": co - cw, "us": (co - cw) * to / co}
    add, rem = sum(v["us"] for v in added.values()), sum(v["us"] for v in removed.values())
    tot_w, tot_o = sum(t for _, t in w.values()), sum(t for _, t in o.values())
    return {"us": add - rem, "added_us": add, "removed_us": rem,
            "stas_us": sum(v["us"] for k, v in added.items() if is_stas_kernel(k)),
            "diff_us": tot_w - tot_o, "total_with_us": tot_w, "total_without_us": tot_o,
            "added": added, "removed": removed}


def spread(values) -> dict:
    """Median, quartiles, min and max of a list of numbers."""
    v = sorted(values)
    q = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else [v[0]] * 3
    return {"median": statistics.median(v), "q25": q[0], "q75": q[2], "min": v[0], "max": v[-1]}


def _merge_tables(tables) -> dict:
    out = {}
    for tab in tables:
        for name, (c, t) in tab.items():
            row = out.setdefault(name, [0, 0.0])
            row[0] += c
            row[1] += t
    return out


def part_compiled_profile(b: Bench):
    """Compiled blocks: record's kernel time per block from torch.profiler, per backend (module doc)."""
    from torch._dynamo.utils import counters
    from torch.profiler import ProfilerActivity, profile

    compile_blocks(b)
    k, reps, nb = b.args.profile_forwards, b.args.profile_repeats, b.n_blocks
    act = ProfilerActivity.CUDA if b.cuda else ProfilerActivity.CPU
    # CPU activity on CUDA too (a defensive choice, as in tritonbench's profiler mode: kernel events went
    # missing from some CUDA-only traces); kernel_times keeps the GPU events, without kineto's GPU mirrors
    # of CPU ranges (annotations)
    acts = [ProfilerActivity.CPU] + ([act] if b.cuda else [])
    sync = torch.cuda.synchronize if b.cuda else (lambda: None)
    rec = lambda: stas.record(b.t, channels=CHANNELS)  # noqa: E731

    def profiled(name):
        """kernel_times of k forwards, wall ms per forward (under the profiler)."""
        with torch.no_grad(), (_Null() if name == "none" else rec()):
            use_backend(None if name == "none" else name)
            try:
                if name != "none":
                    b.forward()  # the first call of a record context allocates the run's buffers
                sync()
                with profile(activities=acts) as p:
                    t0 = time.perf_counter()
                    for _ in range(k):
                        b.forward()
                    sync()
                    wall = (time.perf_counter() - t0) * 1e3 / k
            finally:
                use_backend(None)
        tab = kernel_times(p.events(), device=b.cuda)
        if not tab:
            raise RuntimeError(f"torch.profiler recorded no {act.name} events for {name!r}")
        return tab, wall

    names, failed = ["none"], {}
    with torch.no_grad():  # warm-up: compile each variant's graph (once: the backend runs inside the op)
        b.forward(), b.forward()
        for name in b.backends:
            try:
                with rec():
                    use_backend(name)
                    b.forward(), b.forward()
                names.append(name)
            except Exception as e:  # one failing backend must not cost the others' numbers
                failed[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
            finally:
                use_backend(None)
    b.log(f"[compiled_profile] warmed up: {names[1:]}; profiling {reps} x {k} forwards per variant")
    before = counters["stats"]["unique_graphs"]
    tables, walls = {n: [] for n in names}, {n: [] for n in names}
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            tab, wall = profiled(name)
            tables[name].append(tab)
            walls[name].append(wall)
    none_tot = [sum(t for _, t in tab.values()) / k for tab in tables["none"]]
    out = {"date": time.strftime("%Y-%m-%d"), "device": b.res["device"], "torch": torch.__version__,
           "triton": getattr(_kernels.triton, "__version__", None), "triton_config": dict(_kernels.CONFIG),
           "activity": act.name, "time": "GPU kernel time" if b.cuda else "CPU ops' self time",
           "forwards_per_profile": k, "repeats": reps, "blocks": nb,
           "forward_kernel_ms": statistics.median(none_tot) / 1e3,
           "forward_wall_ms_profiled": statistics.median(walls["none"]),
           "graphs_added_while_profiling": counters["stats"]["unique_graphs"] - before, "backends": dict(failed)}
    for name in names[1:]:
        runs = [attribute(tw, to, k, k) for tw, to in zip(tables[name], tables["none"])]
        us = spread([a["us"] / nb for a in runs])
        pct = spread([100 * a["us"] / a["total_without_us"] for a in runs])
        diff = spread([a["diff_us"] / nb for a in runs])
        pooled = attribute(_merge_tables(tables[name]), _merge_tables(tables["none"]), k * reps, k * reps)
        top = lambda d: dict(sorted(d.items(), key=lambda kv: -kv[1]["us"])[:12])  # noqa: E731
        out["backends"][name] = {
            "us_per_block": us["median"], **{f"us_{q}": us[q] for q in ("q25", "q75", "min", "max")},
            "pct_of_forward_kernels": pct["median"], "pct_min": pct["min"], "pct_max": pct["max"],
            "stas_kernels_us_per_block": statistics.median(a["stas_us"] / nb for a in runs),
            "diff_us_per_block": diff["median"], "diff_q25": diff["q25"], "diff_q75": diff["q75"],
            "repeats_us_per_block": [a["us"] / nb for a in runs],
            "forward_wall_ms_profiled": statistics.median(walls[name]),
            "kernels_added": top(pooled["added"]), "kernels_removed": top(pooled["removed"])}
        row = out["backends"][name]
        kern = ", ".join(f"{n} {v['calls']:g}x {v['us']:.0f} us" for n, v in list(row["kernels_added"].items())[:4])
        b.log(f"[compiled_profile] record, {name}: {row['us_per_block']:.1f} us per block [{us['min']:.1f}, "
              f"{us['max']:.1f}] = {row['pct_of_forward_kernels']:.3f} % of the forward's kernel time; "
              f"total kernel-time difference {row['diff_us_per_block']:.1f} us per block; added per forward: {kern}; "
              f"removed: {list(row['kernels_removed'])[:4] or 'none'}")
    b.log(f"[compiled_profile] hook-free forward: {out['forward_kernel_ms']:.1f} ms of kernel time, "
          f"{out['forward_wall_ms_profiled']:.1f} ms wall under the profiler; graphs added while profiling: "
          f"{out['graphs_added_while_profiling']}")
    if b.cuda and out["forward_kernel_ms"] > 1.02 * out["forward_wall_ms_profiled"]:
        b.log("[compiled_profile] WARNING: kernel time exceeds wall time: events counted twice? (see kernel_times)")
    b.res["compiled_profile"] = out
    b.save()


def decide(res: dict, margin: float = 1.2):
    """Which reduction to make the CUDA default: Triton if its kernel is at least ``margin`` x faster
    than the faster torch path (and its errors are within 1e-3), else the faster torch path."""
    rows = {k: v for k, v in res.get("kernel", {}).get("backends", {}).items() if "us_per_block" in v}
    torch_rows = {k: v["us_per_block"] for k, v in rows.items() if k != "triton"}
    if "triton" not in rows or not torch_rows:
        return None
    best_torch = min(torch_rows, key=torch_rows.get)
    tri = rows["triton"]
    exact = all(max(v["max_rel_err"], v["mean_rel_err"]) <= 1e-3 for v in tri.values() if isinstance(v, dict))
    speedup = torch_rows[best_torch] / tri["us_per_block"]
    fastest = "triton" if speedup >= 1 else best_torch
    recommend = "triton" if speedup >= margin and exact else best_torch
    return {"fastest": fastest, "speedup_vs_best_torch": speedup, "best_torch": best_torch,
            "recommend_cuda_backend": recommend,
            "line": f'CUDA_BACKEND = "{recommend}"  # stas/_kernels.py'}


# rough H200 wall times of the parts, compile included
EST_S = {"kernel": 90, "eager": 60, "compiled": 180, "compiled_profile": 180}  # kernel: 18 tiles (36 took < 90 s)


def fits(b: Bench, part: str, later) -> bool:
    """Whether ``part`` fits the budget, keeping room for the compiled part if it comes later; the
    pipeline part drops to one repeat before it is skipped. A skipped part is noted in the JSON."""
    left = b.args.budget_s - (time.perf_counter() - b.t0) - (EST_S["compiled"] if "compiled" in later else 0)
    fwd_s = b.res.get("eager", {}).get("forward", {}).get("none", {}).get("median_ms", 650) / 1e3
    pipe_s = lambda reps: 3 * reps * 2 * b.args.pipeline_steps * fwd_s * 1.1 + 20  # noqa: E731
    need = pipe_s(b.args.pipeline_repeats) if part == "pipeline" else EST_S.get(part, 0)
    if b.args.small or need <= left:
        return True
    if part == "pipeline" and pipe_s(1) <= left:
        b.args.pipeline_repeats = 1
        b.log("pipeline: one repeat per variant (budget)")
        return True
    b.res.setdefault("skipped", {})[part] = f"needed ~{need:.0f} s, {left:.0f} s left of --budget-s"
    b.log(f"skipping part {part}: {b.res['skipped'][part]}")
    return False


# -- the README table ----------------------------------------------------------------------------

def _tile(cfg: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in cfg.items())


def table(res: dict) -> str:
    """The README's performance section body (markdown) from a results dict (overhead.json)."""
    f = lambda v, fmt: "—" if v is None else format(v, fmt)  # noqa: E731
    pct = lambda v: "—" if v is None else f"{v:.3f} %"  # noqa: E731
    lines = [f"Measured {res['date']} on {res['device']} (torch {res['torch']}, diffusers {res['diffusers']}, "
             f"triton {res.get('triton')}), {res['tokens']} tokens x {res['shape'][1]} channels, "
             f"`python benchmarks/overhead.py`.", ""]
    kern = res.get("kernel", {})
    if kern:
        tile = _tile(res.get("triton_config", {}))
        lines += [f"`record` on all {res['blocks']} blocks, hooks' own GPU time by reduction backend "
                  f"(default on CUDA: `{res['cuda_backend']}`; Triton tile {tile}; one read of the block output "
                  f"(`flat.sum(0)`): {kern['read_floor_us']:.1f} µs):", "",
                  "| reduction | kernel alone, µs/block | eager, µs/block | eager, % of forward | "
                  "compiled, wall clock, µs/block (median [IQR]) | compiled, wall clock, % of forward | "
                  "max rel. error (max, mean) vs float64 |",
                  "|---|---|---|---|---|---|---|"]
        for name, row in kern.get("backends", {}).items():
            e = res.get("eager", {}).get("hooks", {}).get(name, {})
            c = res.get("compiled", {}).get("hooks", {}).get(name, {})
            errs = [v for v in row.values() if isinstance(v, dict)]
            err = max(max(v["max_rel_err"], v["mean_rel_err"]) for v in errs) if errs else None
            comp = "—" if "us_per_block" not in c else f"{c['us_per_block']:.1f} [{c['q25']:.1f}, {c['q75']:.1f}]"
            lines.append(f"| `{name}` | {f(row.get('us_per_block'), '.1f')} | {f(e.get('us_per_block'), '.1f')} | "
                         f"{pct(e.get('pct_of_forward'))} | {comp} | {pct(c.get('pct_of_forward'))} | "
                         f"{f(err, '.1e')} |")
        dec = res.get("decision")
        if dec:
            lines.append(f"\nTriton kernel alone: {dec['speedup_vs_best_torch']:.2f}x the speed of the best torch path "
                         f"(`{dec['best_torch']}`); CUDA default by this run: `{dec['recommend_cuda_backend']}`.")
        other = [f"{m} columns: tile {_tile(res[m]['triton_config'])}" for m in ("eager", "compiled")
                 if m in res and res[m].get("triton_config", res.get("triton_config")) != res.get("triton_config")]
        if other:
            lines.append(f"\nMeasured with another Triton tile than the kernel column (a later `--parts kernel` "
                         f"run changed it): {'; '.join(other)}.")
        rounds = res.get("compiled", {}).get("hooks", {}).get("rounds")
        if rounds:
            lines.append(f"\nCompiled, wall clock: one compiled block with minus without the hook, paired over "
                         f"{rounds} interleaved rounds (median and interquartile range), x blocks.")
    lines += profile_table(res)
    fw = [(m, res[m]) for m in ("eager", "compiled") if m in res]
    if fw:
        lines += ["", "| mode | variant | forward, ms (median) | vs none | graphs added | host syncs in forward |",
                  "|---|---|---|---|---|---|"]
        for mode, r in fw:
            for name, row in r["forward"].items():
                syncs = [v for k, v in r.get("no_host_sync", {}).items() if k.startswith(name)]
                sync = "—" if not syncs else ("none" if all(v is True for v in syncs) else "; ".join(map(str, syncs)))
                vs = "—" if name == "none" else f"{row['vs_none_pct']:+.2f} %"
                lines.append(f"| {mode} | {name} | {row['median_ms']:.1f} | {vs} | {row['graphs_added']} | {sync} |")
            lines.append(f"| {mode} | graph breaks | {r.get('graph_breaks', '—')} | | | |")
    p = res.get("pipeline")
    if p:
        ratios = ", ".join(f"{n} {v:.4f}" for n, v in p["ratio"].items())
        lines += ["", f"Whole pipeline ({p['mode']}, {p['steps']} steps of `WanPipeline` with CFG, median of "
                      f"{p['repeats']}), time relative to no hooks: {ratios}."]
        m = p.get("record_memory", {})
        if m.get("measured_bytes") is not None:
            lines.append(f"`record` took {m['measured_bytes'] / 1e6:.0f} MB of device memory for this run "
                         f"(`recording_bytes` formula: {m['formula_bytes'] / 1e6:.0f} MB).")
    if res.get("skipped"):
        lines += ["", "Not measured in this run (time budget): " + "; ".join(f"{k} ({v})" for k, v in res["skipped"].items())]
    return "\n".join(lines)


def profile_table(res: dict) -> list:
    """The README lines of the ``compiled_profile`` part (profiler kernel time), [] if not measured."""
    prof = res.get("compiled_profile", {})
    if not prof.get("backends"):
        return []
    short = lambda n: f"`{n}`" if len(n) <= 40 else f"`{n[:37]}...`"  # noqa: E731
    unit = "GPU kernel time" if prof["activity"] == "CUDA" else "CPU ops' self time"
    when = "" if (prof["date"], prof["torch"]) == (res.get("date"), res.get("torch")) else \
        f"; measured {prof['date']} on {prof['device']}, torch {prof['torch']}, triton {prof.get('triton')}"
    if prof.get("triton_config", res.get("triton_config")) != res.get("triton_config"):
        when += f"; Triton tile {_tile(prof['triton_config'])}"
    lines = ["", f"Compiled, `record`'s {unit} from `torch.profiler` (`ProfilerActivity.{prof['activity']}`; the "
                 f"durations of the kernels, not wall clock{when}; `--parts compiled_profile`): {prof['repeats']} "
                 f"profiles of {prof['forwards_per_profile']} forward(s) with record on all {prof['blocks']} blocks "
                 f"and as many without, per reduction; the hook's kernels are the launches the hooked forward runs "
                 f"beyond the hook-free one, matched by kernel name, minus any it no longer runs; % of the hook-free "
                 f"forward's {unit} ({prof['forward_kernel_ms']:.1f} ms):", "",
             "| reduction | profiler: hook's kernels, µs/block (median [min, max]) | % of the forward's kernel time "
             "(median [min, max]) | total kernel time with minus without, µs/block (median [IQR]) | "
             "kernels added per forward (launches, µs) |", "|---|---|---|---|---|"]
    for name, row in prof["backends"].items():
        if "error" in row:
            lines.append(f"| `{name}` | {row['error']} | | | |")
            continue
        kern = "; ".join(f"{short(n)} {v['calls']:g}x {v['us']:.0f}" for n, v in list(row["kernels_added"].items())[:3])
        if row["kernels_removed"]:
            kern += "; removed: " + "; ".join(f"{short(n)} {v['calls']:g}x {v['us']:.0f}"
                                              for n, v in list(row["kernels_removed"].items())[:2])
        lines.append(f"| `{name}` | {row['us_per_block']:.1f} [{row['us_min']:.1f}, {row['us_max']:.1f}] | "
                     f"{row['pct_of_forward_kernels']:.3f} % [{row['pct_min']:.3f}, {row['pct_max']:.3f}] | "
                     f"{row['diff_us_per_block']:.1f} [{row['diff_q25']:.1f}, {row['diff_q75']:.1f}] | {kern} |")
    return lines


def replace_between(readme: Path, markers: tuple, block: str) -> None:
    """Replace the text between the two ``markers`` lines of ``readme`` by ``block`` (generated tables)."""
    text = readme.read_text()
    a, b = text.index(markers[0]) + len(markers[0]), text.index(markers[1])
    readme.write_text(text[:a] + "\n" + block + "\n" + text[b:])


def update_readme(res: dict, readme: Path = ROOT / "README.md") -> None:
    """Replace the text between the overhead-table markers in the README by `table(res)`."""
    replace_between(readme, MARKERS, table(res))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="tiny config on the CPU (smoke test)")
    ap.add_argument("--parts", default=",".join(PARTS), help="which parts, in this order")
    ap.add_argument("--repeats", type=int, default=10, help="forwards per variant (median)")
    ap.add_argument("--block-rounds", type=int, default=15, help="compiled: interleaved block rounds per backend")
    ap.add_argument("--pipeline-steps", type=int, default=10)
    ap.add_argument("--pipeline-repeats", type=int, default=2)
    ap.add_argument("--profile-repeats", type=int, default=15, help="compiled_profile: profiles per variant "
                    "(spread; issue 12 asks >= 15 repeats)")
    ap.add_argument("--profile-forwards", type=int, default=2, help="compiled_profile: forwards per profile")
    ap.add_argument("--no-sweep", action="store_true", help="skip the Triton tile sweep")
    ap.add_argument("--compiled-steer", action="store_true", help="also compile and time STAS (one more graph)")
    ap.add_argument("--budget-s", type=float, default=540, help="wall-time budget: a part that would not fit is "
                                                                "shortened or skipped (and noted in the JSON)")
    ap.add_argument("--out", default=None, help=f"results JSON (default on a GPU: {RESULTS.relative_to(ROOT)})")
    ap.add_argument("--readme", action="store_true", help="write the README table from --out (or the committed "
                                                           "JSON) and exit; no GPU needed")
    args = ap.parse_args()
    if args.readme:
        update_readme(json.loads(Path(args.out or RESULTS).read_text()))
        return
    if args.out is None and torch.cuda.is_available() and not args.small:
        args.out = str(RESULTS)
    if args.small:
        args.repeats, args.block_rounds, args.pipeline_steps, args.pipeline_repeats = 2, 3, 2, 1
        args.profile_repeats, args.profile_forwards = 2, 1
    order = args.parts.split(",")
    unknown = [p for p in order if p not in PARTS]
    if unknown:
        ap.error(f"unknown parts {unknown}; choose from {list(PARTS)}")
    b = Bench(args)
    parts = {"kernel": part_kernel, "eager": lambda b: part_mode(b, "eager"),
             "compiled": lambda b: part_mode(b, "compiled"), "pipeline": part_pipeline,
             "compiled_profile": part_compiled_profile}
    merged = merge_previous(b, order)
    for i, name in enumerate(order):
        b.res.get("skipped", {}).pop(name, None)
        if not fits(b, name, order[i + 1:]):
            continue
        b.log(f"part {name}")
        parts[name](b)
    b.res["decision"] = decide(b.res)
    if b.res["decision"]:
        b.log(f"decision: {b.res['decision']}")
    if not merged:
        b.res["wall_s"] = time.perf_counter() - b.t0
    b.save()
    print(table(b.res))


def merge_previous(b: Bench, order) -> bool:
    """A run of some of the parts into an existing results file of the same configuration keeps that
    file's other parts and header (e.g. ``--parts compiled_profile`` after a full run). True if merged."""
    out = Path(b.args.out) if b.args.out else None
    if out is None or not out.exists() or set(PARTS) <= set(order):
        return False
    old = json.loads(out.read_text())
    if old.get("small") != b.res["small"] or old.get("shape") != b.res["shape"]:
        b.log(f"{out} holds another configuration: rewritten, not merged")
        return False
    b.res = {**b.res, **{k: v for k, v in old.items() if k not in order}}
    b.log(f"keeping {[p for p in PARTS if p in old and p not in order]} and the header of {out}")
    return True


if __name__ == "__main__":
    main()
