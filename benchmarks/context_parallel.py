"""`stas.record` and `stas.steer` on 1 GPU vs W GPUs under diffusers' context parallelism.

    torchrun --nproc_per_node 2 benchmarks/context_parallel.py           # 2 GPUs, ~3 min: writes
                                                                          # benchmarks/results/context_parallel.json
    torchrun --nproc_per_node 2 benchmarks/context_parallel.py --small   # 2 CPU processes (gloo), ~1 min, no file
    python benchmarks/context_parallel.py --readme                        # README table from the committed JSON
    torchrun --nproc_per_node 2 benchmarks/context_parallel.py --modes ring --reference-backend _native_cudnn \
        --out benchmarks/results/context_parallel_ring_ref.json          # ring against a reference on its own kernel

A full-size Wan2.1-T2V-1.3B transformer with random bf16 weights (seeded: the same on every rank) in a
``WanPipeline`` (``prompt_embeds``, CFG 5.0, latents out), 81 frames at 480 x 832 (32 760 tokens),
``--steps`` denoising steps. Every rank first runs the one-GPU reference on its own GPU, with no
collective: stock, ``stas.record`` of all 30 blocks (2 channels of per-token values) and STAS on the
middle block (the 2 channels of largest max |h| in the reference recording, K = steps / 2) with a
recording of the steered outputs. Then, for each mode (``--modes``: ``ulysses``, ``ring``), a fresh
transformer with the same weights is split with ``enable_parallelism(config=ContextParallelConfig(...))``
over the W ranks and the same three calls run. Printed (rank 0) and written to the JSON:

* ``seconds`` and ``speedup`` (1-GPU seconds / W-GPU seconds, medians of ``--repeats``) per call;
* ``latents``: max |W-GPU - 1-GPU| of the denoised latents (the video before the VAE), for the stock
  call (the noise floor that context parallelism itself brings in bf16: other kernels, other sum
  orders) and the steered one, each also relative to max |latent|;
* ``stats``: per recorded statistic, max |W-GPU - 1-GPU| / max |1-GPU| (``chan_max``, ``chan_mean``,
  ``median``, ``tokens``), for the stock and the steered recording; ``steer_max_rel``: the same for
  the steered channels' per-token values;
* ``steered_block_signs``: at the steered block over the steered steps, how many of the steered
  channels' recorded values changed sign between 1 and W GPUs (`sign_flips`: one flip moves a STAS
  value by twice its magnitude) and the relative difference where the sign held;
* ``reduction``: the record / steer reductions alone on one seeded bf16 block output of 32 761 tokens
  (an uneven split, as ``ulysses_anything`` makes it) split over the ranks with the real process group,
  against the same reduction of the whole tensor on one GPU (the CUDA path: `stas._kernels`' Triton
  kernel with the token offset): max, sample and tokens must be bit-equal, the mean within float32
  summation order.

``ok`` in the JSON: stats within 1e-3 (relative to the statistic's max), steered latents within
twice the stock floor (or one bf16 ulp of the largest latent), reductions exact.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import stas  # noqa: E402
from overhead import SMALL, WAN21_1P3B, replace_between  # noqa: E402
from stas.record import _sharded_block_stats  # noqa: E402
from stas.steer import steer_values  # noqa: E402
from stas.tracking import TokenShard  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "context_parallel.json"
CHANNELS = [0, 1]
STATS = ("chan_max", "chan_mean", "median", "tokens")


def log(msg):
    if dist.get_rank() == 0:
        print(msg, flush=True)


class Run:
    """The model, inputs and the three timed calls, on this rank's device."""

    def __init__(self, args, device, dtype):
        self.args, self.device, self.dtype = args, device, dtype
        self.cfg = SMALL if args.small else WAN21_1P3B
        self.size = dict(num_frames=5, height=64, width=64) if args.small else \
            dict(num_frames=81, height=480, width=832)
        text_len = 16 if args.small else 512
        g = torch.Generator(device=device).manual_seed(1)
        self.pe = torch.randn(1, text_len, self.cfg["text_dim"], device=device, dtype=dtype, generator=g)
        self.npe = torch.randn(1, text_len, self.cfg["text_dim"], device=device, dtype=dtype, generator=g)
        self.mid = self.cfg["num_layers"] // 2

    def pipeline(self):
        from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

        torch.manual_seed(0)
        with torch.device(self.device):
            t = WanTransformer3DModel(**self.cfg).to(self.dtype).eval()
        sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
        pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=t, vae=None, scheduler=sched)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def call(self, pipe, steps=None):
        return pipe(prompt_embeds=self.pe, negative_prompt_embeds=self.npe,
                    num_inference_steps=steps or self.args.steps, guidance_scale=5.0, output_type="latent",
                    generator=torch.Generator(self.device).manual_seed(0), **self.size).frames

    def timed(self, pipe, make_ctx):
        """[(seconds, latents, recording or None)] over --repeats, the context entered fresh each time."""
        out = []
        for _ in range(self.args.repeats):
            sync(self.device)
            dist.barrier()
            t0 = time.perf_counter()
            with make_ctx() as ctx:
                lat = self.call(pipe)
                sync(self.device)
            rec = ctx.stats if isinstance(ctx, stas.record) else ctx.rec.stats if isinstance(ctx, SteerAndRecord) \
                else None
            out.append((time.perf_counter() - t0, lat.float().cpu(), None if rec is None else rec.data))
        return out

    def three(self, pipe, steer_cfg):
        """Seconds (median), latents and recordings of stock, record and STAS (+ record) calls."""
        with torch.no_grad():
            self.call(pipe, steps=2)  # warm-up (and diffusers' context-parallel hooks read the signature)
            res = {"none": self.timed(pipe, Null),
                   "record": self.timed(pipe, lambda: stas.record(pipe, channels=CHANNELS))}
            if steer_cfg is None:  # the reference: channels of the largest max |h| at the steered block
                chans = [[int(c) for c in res["record"][0][2]["chan_max"][0, 0, self.mid, 0].topk(2).indices]]
                dist.broadcast_object_list(chans, 0)  # rank 0's choice, in case the ranks' references differ
                steer_cfg = stas.STASConfig(alpha=1.0, steps=max(1, self.args.steps // 2), blocks=(self.mid,),
                                            channels=tuple(chans[0]))
            res["STAS"] = self.timed(pipe, lambda: SteerAndRecord(pipe, steer_cfg))
        return {k: {"seconds": statistics.median(r[0] for r in v), "latents": v[0][1], "stats": v[0][2]}
                for k, v in res.items()}, steer_cfg


class Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


class SteerAndRecord:
    """STAS with a recording of the steered outputs (record hooks run after steer's, which is prepended)."""

    def __init__(self, pipe, cfg):
        self.st, self.rec = stas.steer(pipe, cfg), stas.record(pipe, channels=list(cfg.channels))

    def __enter__(self):
        self.st.__enter__()
        self.rec.__enter__()
        return self

    def __exit__(self, *exc):
        self.rec.__exit__(*exc)
        self.st.__exit__(*exc)
        return False


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| over the entries both have (NaN = never written, the same in both)."""
    m = ~(a.isnan() | b.isnan())
    return float((a[m] - b[m]).abs().max() / b[m].abs().max().clamp_min(1e-30))


def sign_flips(one: dict, many: dict, block: int, steps: int) -> dict:
    """At the steered block over the steered steps of the STAS runs: how many recorded per-token values of
    the steered channels have another sign on W GPUs than on 1 (STAS writes alpha * max|h| * sign(h), so
    one flip moves a value by twice the steered magnitude), and max |W - 1| / max |1| over the entries
    whose sign held."""
    a, b = (r["STAS"]["stats"]["tokens"][:, :steps, block] for r in (many, one))
    m = ~(a.isnan() | b.isnan())
    flip = m & (a.sign() != b.sign())
    held = m & ~flip
    return {"entries": int(m.sum()), "sign_flips": int(flip.sum()),
            "max_rel_where_sign_held": float((a[held] - b[held]).abs().max() / b[m].abs().max().clamp_min(1e-30))}


def compare(one: dict, many: dict) -> dict:
    out = {"seconds_1": {k: v["seconds"] for k, v in one.items()},
           "seconds_W": {k: v["seconds"] for k, v in many.items()}}
    out["speedup"] = {k: one[k]["seconds"] / many[k]["seconds"] for k in one}
    lat = {}
    for k in ("none", "STAS"):
        a, b = many[k]["latents"], one[k]["latents"]
        lat[k] = {"max_abs": float((a - b).abs().max()), "max_rel": rel(a, b)}
    lat["STAS_vs_stock_1gpu_max_abs"] = float((one["STAS"]["latents"] - one["none"]["latents"]).abs().max())
    out["latents"] = lat
    out["stats"] = {k: {s: rel(many[k]["stats"][s], one[k]["stats"][s]) for s in STATS}
                    for k in ("record", "STAS")}
    out["filled_equal"] = all(torch.equal(many[k]["stats"]["filled"], one[k]["stats"]["filled"])
                              for k in ("record", "STAS"))
    floor = max(2 * lat["none"]["max_abs"], 2 ** -8 * float(one["none"]["latents"].abs().max()))
    out["ok"] = {"stats_within_1e-3": all(v <= 1e-3 for d in out["stats"].values() for v in d.values()),
                 "steered_latents_within_bf16_noise": lat["STAS"]["max_abs"] <= floor}
    return out


def reduction_check(device, dtype, d, group) -> dict:
    """record's row and STAS' values on this rank's slice of one seeded (1, 32761, d) block output,
    against the whole tensor's (no collective there). The same on every rank."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    L = 32761 if device.type == "cuda" else 333
    g = torch.Generator(device=device).manual_seed(0)
    x = (torch.randn(1, L, d, device=device, generator=g) * 2).to(dtype)
    x[0, L - 5, 7] = -600.0  # a massive activation on the last rank
    key = torch.randint(2 ** 31 - 1, (16384,), device=device, generator=g)
    chan = torch.tensor([7, 3], device=device)
    sh = TokenShard(group, rank, world, L)
    rows = {}
    for name in ("one", "W"):
        st = torch.full((2, 2 * d + key.numel()), float("nan"), device=device)
        tok = torch.full((2, L, 2), float("nan"), device=device)
        at = torch.tensor([1], device=device)
        if name == "one":
            torch.ops.stas.block_stats(x, at, st, tok, chan, key)
        else:
            _sharded_block_stats(x[:, sh.lo:sh.hi], at, st, tok, chan, key, sh)
        rows[name] = (st.cpu(), tok.cpu())
    (s1, t1), (sw, tw) = rows["one"], rows["W"]
    same = lambda a, b: bool(torch.equal(a.nan_to_num(-1), b.nan_to_num(-1)))  # noqa: E731
    v = x[..., chan]
    new1 = steer_values(v, 1.0, False)[0][:, sh.lo:sh.hi]
    neww = steer_values(v[:, sh.lo:sh.hi], 1.0, False, sh)[0]
    res = {"tokens": L, "sizes": sh.sizes, "max_equal": same(sw[:, :d], s1[:, :d]),
           "mean_max_rel": rel(sw[1, d:2 * d], s1[1, d:2 * d]), "sample_equal": same(sw[:, 2 * d:], s1[:, 2 * d:]),
           "tokens_equal": same(tw, t1), "steer_equal": bool(torch.equal(new1, neww))}
    flags = [res[k] for k in ("max_equal", "sample_equal", "tokens_equal", "steer_equal")]
    res["ok"] = all(flags) and res["mean_max_rel"] <= 1e-5
    return res


MARKERS = ("<!-- context-parallel-table:begin -->", "<!-- context-parallel-table:end -->")


def table(res: dict) -> str:
    """The README's context-parallelism table (markdown) from a results dict (context_parallel.json)."""
    w = res["world"]
    red = res["reduction"]
    lines = [f"Measured {res['date']} on {w} x {res['device']} (torch {res['torch']}, diffusers {res['diffusers']}), "
             f"{'a small Wan, float32' if res['small'] else 'Wan2.1-1.3B size, random bf16 weights'}, "
             f"{res['tokens']} tokens, {res['steps']} steps with CFG, "
             f"`torchrun --nproc_per_node {w} benchmarks/context_parallel.py`. Speed-up = 1-GPU time / {w}-GPU time "
             f"of the same call; latents: max |{w} GPUs - 1 GPU| (stock = what context parallelism alone changes "
             f"in {res['dtype'][6:]}); statistics: max |difference| / max |value| over the whole recording.", "",
             f"| split | attention | speed-up stock / record / STAS | stock latents | STAS latents | "
             f"record stats (max rel.) | STAS-run stats (max rel.) |", "|---|---|---|---|---|---|---|"]
    for mode, m in res["modes"].items():
        if "error" in m:
            lines.append(f"| {mode} | `{m['attention_backend']}` | failed: {m['error'][:120]} | | | | |")
            continue
        sp = " / ".join(f"{m['speedup'][k]:.2f}x" for k in ("none", "record", "STAS"))
        st = {k: max(m["stats"][k].values()) for k in ("record", "STAS")}
        lines.append(f"| {mode} | `{m['attention_backend']}` | {sp} | {m['latents']['none']['max_abs']:.2g} | "
                     f"{m['latents']['STAS']['max_abs']:.2g} | {st['record']:.1e} | {st['STAS']:.1e} |")
    lines += ["", f"The reductions alone on a {red['tokens']}-token {res['dtype'][6:]} block output split "
                  f"{red['sizes']}: max, median "
                  f"sample, per-token values and STAS values bit-equal to one GPU: {red['ok']}; mean within "
                  f"{red['mean_max_rel']:.1e}."]
    return "\n".join(lines)


def update_readme(res: dict, readme: Path = ROOT / "README.md") -> None:
    replace_between(readme, MARKERS, table(res))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="tiny config on CPU processes over gloo (smoke test)")
    ap.add_argument("--modes", default=None, help="comma list of ulysses, ring (default: both; --small: ulysses)")
    ap.add_argument("--ring-backend", default="_native_cudnn",
                    help="attention backend for ring (it needs the log-sum-exp: _native_cudnn, _native_flash, flash)")
    ap.add_argument("--reference-backend", default="native",
                    help="attention backend of the 1-GPU reference (the ring backend isolates what the split changes)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=1, help="timed calls per variant (median)")
    ap.add_argument("--out", default=None, help=f"results JSON (default on GPUs: {RESULTS.relative_to(ROOT)})")
    ap.add_argument("--readme", action="store_true", help="write the README table from --out (or the committed "
                                                           "JSON) and exit; no GPU, no torchrun")
    args = ap.parse_args()
    if args.readme:
        update_readme(json.loads(Path(args.out or RESULTS).read_text()))
        return
    cuda = torch.cuda.is_available() and not args.small
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)
        dist.init_process_group("gloo")
        torch.accelerator.device_count = lambda: 1  # diffusers: rank r on accelerator r % count (0 on CPU torch)
        args.steps, args.repeats = min(args.steps, 3), 1
    if args.out is None and cuda:
        args.out = str(RESULTS)
    modes = (args.modes or ("ring,ulysses" if cuda else "ulysses")).split(",")
    dtype = torch.bfloat16 if cuda else torch.float32
    from diffusers import ContextParallelConfig

    import diffusers

    t0 = time.perf_counter()
    r = Run(args, device, dtype)
    res = {"date": time.strftime("%Y-%m-%d"), "world": world, "small": args.small, "steps": args.steps,
           "repeats": args.repeats, "torch": torch.__version__, "diffusers": diffusers.__version__,
           "device": torch.cuda.get_device_name(device) if cuda else "cpu", "size": r.size,
           "tokens": stas.TokenLayout.from_video(**r.size).num_tokens, "dtype": str(dtype)}
    d = r.cfg["num_attention_heads"] * r.cfg["attention_head_dim"]
    res["reduction"] = reduction_check(device, dtype, d, dist.group.WORLD)
    log(f"reduction check on a {res['reduction']['tokens']}-token split {res['reduction']['sizes']}: "
        f"{json.dumps(res['reduction'])}")
    pipe = r.pipeline()
    pipe.transformer.set_attention_backend(args.reference_backend)
    res["reference_backend"] = args.reference_backend
    one, cfg = r.three(pipe, None)
    res["steer"] = {"blocks": list(cfg.blocks), "channels": list(cfg.channels), "steps": cfg.steps}
    del pipe
    log(f"1 GPU: {json.dumps({k: round(v['seconds'], 3) for k, v in one.items()})} s")
    res["modes"] = {}
    for mode in modes:
        pipe = r.pipeline()
        kw = {"ring_degree": world} if mode == "ring" else {"ulysses_degree": world}
        backend = args.ring_backend if mode == "ring" else "native"
        try:  # a backend that cannot run fails on every rank alike: record it, go on with the next mode
            pipe.transformer.set_attention_backend(backend)
            pipe.transformer.enable_parallelism(config=ContextParallelConfig(**kw))
            many, _ = r.three(pipe, cfg)
        except Exception as e:  # noqa: BLE001
            res["modes"][mode] = {"error": f"{type(e).__name__}: {e}"[:2000], "attention_backend": backend}
            log(f"{mode}: failed: {res['modes'][mode]['error']}")
            continue
        res["modes"][mode] = cmp = compare(one, many)
        cmp["steered_block_signs"] = sign_flips(one, many, cfg.blocks[0], cfg.steps)
        cmp["attention_backend"] = backend
        log(f"{mode} x{world}: speedup {json.dumps({k: round(v, 3) for k, v in cmp['speedup'].items()})}; "
            f"latents max |diff| stock {cmp['latents']['none']['max_abs']:.3g}, "
            f"STAS {cmp['latents']['STAS']['max_abs']:.3g} (STAS vs stock on 1 GPU "
            f"{cmp['latents']['STAS_vs_stock_1gpu_max_abs']:.3g}); stats rel diff {json.dumps(cmp['stats'])}; "
            f"steered block: {json.dumps(cmp['steered_block_signs'])}; "
            f"ok {cmp['ok']}")
        del pipe
        if cuda:
            torch.cuda.empty_cache()
    res["wall_s"] = time.perf_counter() - t0
    if rank == 0:
        print(table(res), flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(res, indent=1))
            log(f"wrote {args.out}; README table: python benchmarks/context_parallel.py --readme")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
