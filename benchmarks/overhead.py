"""Overhead of STAS and of full recording on a full-size Wan2.1-T2V-1.3B transformer.

    python benchmarks/overhead.py                 # on a GPU: 81 frames at 480x832 (32 760 tokens), text 512
    python benchmarks/overhead.py --small         # a seconds-long smoke run on the CPU

Random bf16 weights (timing does not depend on them). Times one transformer forward with no
hooks, with STAS on block 15, and with `stas.record` on all 30 blocks (2 channels of per-token
values), eager and with diffusers' per-block compilation (``compile_repeated_blocks(fullgraph=True)``).
Variants are interleaved round by round so drift hits them alike; medians are reported.
Whole-forward timing is noisy (~1 %), so the hooks' own work is also timed alone with CUDA events:
eager, by calling the hooks on a block-output-sized tensor; compiled, as the difference between
one compiled block with and without the hook (a block-level timing, far less noisy than a forward).
Also checks: no graph breaks (fullgraph=True would raise), the number of compiled graphs each
variant adds, no host synchronisation inside a hooked forward (CUDA sync debug mode), and the
recording memory per block and step. Prints a markdown table and writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import stas  # noqa: E402
from stas.record import _BlockRecorder  # noqa: E402
from stas.steer import _SteerHook  # noqa: E402

WAN21_1P3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                  out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
SMALL = dict(WAN21_1P3B, num_attention_heads=2, attention_head_dim=32, text_dim=64, ffn_dim=128, num_layers=4)


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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="tiny config on the CPU (smoke test)")
    ap.add_argument("--repeats", type=int, default=15, help="forwards per variant (median)")
    ap.add_argument("--modes", default="eager,compiled")
    ap.add_argument("--out", default=None, help="write results JSON here")
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() and not args.small else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = SMALL if args.small else WAN21_1P3B
    frames, h, w, text_len = (5, 64, 64, 16) if args.small else (81, 480, 832, 512)
    lay = stas.TokenLayout.from_video(frames, h, w)
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    with torch.device(device):
        t = WanTransformer3DModel(**cfg).to(dtype).eval()
    x = torch.randn(1, 16, lay.latent_frames, lay.latent_height, lay.latent_width, device=device, dtype=dtype)
    ts = torch.tensor([500.0], device=device)
    text = torch.randn(1, text_len, cfg["text_dim"], device=device, dtype=dtype)
    n_blocks, d = cfg["num_layers"], cfg["num_attention_heads"] * cfg["attention_head_dim"]
    mid = n_blocks // 2
    steer_cfg = stas.STASConfig(alpha=1.0, steps=1, blocks=[mid], channels=[0, 1])
    variants = {
        "none": lambda: _Null(),
        f"STAS (block {mid})": lambda: stas.steer(t, steer_cfg),
        f"record ({n_blocks} blocks)": lambda: stas.record(t, channels=[0, 1]),
    }
    tm = timer(device)
    fwd = lambda: t(hidden_states=x, timestep=ts, encoder_hidden_states=text, return_dict=False)[0]  # noqa: E731
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}; torch {torch.__version__}; "
          f"{lay.describe()}; text {text_len}; {sum(p.numel() for p in t.parameters()) / 1e6:.0f} M params", flush=True)
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "tokens": lay.num_tokens, "date": time.strftime("%Y-%m-%d"), "modes": {}}
    from torch._dynamo.utils import counters

    for mode in args.modes.split(","):
        if mode == "compiled":
            t.compile_repeated_blocks(fullgraph=True)
        graphs = {}
        with torch.no_grad():
            for name, make in variants.items():  # warm-up (and compile) each variant once
                before = counters["stats"]["unique_graphs"]
                with make():
                    fwd(), fwd()
                graphs[name] = counters["stats"]["unique_graphs"] - before
            times = {name: [] for name in variants}
            names = list(variants)
            for r in range(args.repeats):  # rotate the order every round: no variant always runs first
                for name in names[r % len(names):] + names[:r % len(names)]:
                    with variants[name]():
                        times[name].append(tm(fwd))
            sync_ok = {}
            if device.type == "cuda":  # any host sync inside a hooked forward raises in "error" mode
                for name, make in list(variants.items())[1:]:
                    with make():
                        fwd()
                        torch.cuda.synchronize()
                        torch.cuda.set_sync_debug_mode("error")
                        try:
                            fwd()
                            sync_ok[name] = True
                        except RuntimeError as e:
                            sync_ok[name] = f"sync: {e}"[:200]
                        finally:
                            torch.cuda.set_sync_debug_mode("default")
        base = statistics.median(times["none"])
        rows = {}
        for name in variants:
            med = statistics.median(times[name])
            rows[name] = {"median_ms": med, "overhead_pct": 100 * (med - base) / base, "new_graphs": graphs[name],
                          "no_host_sync": sync_ok.get(name), "all_ms": times[name]}
        rows["hook_work"] = hook_work(t, lay, d, n_blocks, mid, device, dtype, timer(device, hide_launches=True),
                                      compiled=(mode == "compiled"),
                                      text=text, ts=ts, x=x)
        for k in ("stas_ms", "record_ms"):
            rows["hook_work"][k.replace("_ms", "_pct")] = 100 * rows["hook_work"][k] / base
        rows["graph_breaks"] = sum(counters["graph_break"].values())
        results["modes"][mode] = rows
        print(f"[{mode}] " + json.dumps({k: (v if k == 'hook_work' else {kk: vv for kk, vv in v.items() if kk != 'all_ms'})
                                         if isinstance(v, dict) else v for k, v in rows.items()}), flush=True)
    # memory of one recording per block and step: chan_max + chan_mean (D) + median + tokens (L x C), float32
    results["record_bytes_per_block_step_branch"] = 4 * (2 * d + 1 + lay.num_tokens * 2)
    print(table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def hook_work(t, lay, d, n_blocks, mid, device, dtype, tm, compiled, text, ts, x):
    """The hooks' own time: eager = hooks called on a (1, L, D) tensor; compiled = block with - without."""
    out = {}
    if not compiled:
        h = torch.randn(1, lay.num_tokens, d, device=device, dtype=dtype)
        with stas.record(t, channels=[0, 1]) as rec, stas.steer(t, stas.STASConfig(steps=1, blocks=[mid], channels=[0, 1])) as st:
            with torch.no_grad():
                t(hidden_states=x, timestep=ts, encoder_hidden_states=text, return_dict=False)  # allocate, set state
            rhooks = [hk for b in t.blocks for hk in b._forward_hooks.values() if isinstance(hk, _BlockRecorder)]
            shook = next(hk for hk in t.blocks[mid]._forward_hooks.values() if isinstance(hk, _SteerHook))
            st.active = True
            for _ in range(3):
                [hk(None, None, h) for hk in rhooks], shook(None, None, h)
            # GPU time of one forward's worth of hooks (30 record hooks; 1 STAS hook), median of 5
            out["record_ms"] = statistics.median(tm(lambda: [hk(None, None, h) for hk in rhooks]) for _ in range(5))
            out["stas_ms"] = statistics.median(tm(lambda: shook(None, None, h)) for _ in range(5))
        return out
    # compiled: one block, with vs without each hook, many repeats
    blk = t.blocks[mid]
    captured = {}
    pre = blk.register_forward_pre_hook(lambda m, a: captured.setdefault("args", a))
    with torch.no_grad():
        t(hidden_states=x, timestep=ts, encoder_hidden_states=text, return_dict=False)
    pre.remove()
    a = captured["args"]
    run = lambda: blk(*a)  # noqa: E731
    with torch.no_grad():
        for _ in range(3):
            run()
        base = []
        rec_t, st_t = [], []
        with stas.record(t, channels=[0, 1]) as rec:
            t(hidden_states=x, timestep=ts, encoder_hidden_states=text, return_dict=False)
            for _ in range(3):
                run()
        with stas.steer(t, stas.STASConfig(steps=1, blocks=[mid], channels=[0, 1])) as st:
            t(hidden_states=x, timestep=ts, encoder_hidden_states=text, return_dict=False)
        for _ in range(9):
            base.append(tm(run, 10))
            with stas.record(t, channels=[0, 1]) as rec:
                t(hidden_states=x, timestep=ts, encoder_hidden_states=text, return_dict=False)
                rec_t.append(tm(run, 10))
            with stas.steer(t, stas.STASConfig(steps=1, blocks=[mid], channels=[0, 1])) as st:
                t(hidden_states=x, timestep=ts, encoder_hidden_states=text, return_dict=False)
                st.active = True
                st_t.append(tm(run, 10))
    b = statistics.median(base)
    out["block_ms"] = b
    out["record_ms"] = n_blocks * (statistics.median(rec_t) - b)   # 30 blocks' worth
    out["stas_ms"] = statistics.median(st_t) - b
    return out


def table(res) -> str:
    lines = [f"Overhead on {res['device']} ({res['date']}, torch {res['torch']}, {res['tokens']} tokens)", "",
             "| mode | variant | forward (ms, median) | overhead vs none | hooks' own work | new graphs | host sync |",
             "|---|---|---|---|---|---|---|"]
    for mode, rows in res["modes"].items():
        hw = rows["hook_work"]
        for name, r in rows.items():
            if name in ("hook_work", "graph_breaks"):
                continue
            own = "" if name == "none" else \
                f"{hw['stas_pct' if name.startswith('STAS') else 'record_pct']:+.3f} %"
            sync = {True: "none", None: "n/a"}.get(r["no_host_sync"], str(r["no_host_sync"]))
            lines.append(f"| {mode} | {name} | {r['median_ms']:.1f} | {r['overhead_pct']:+.2f} % | {own} | "
                         f"{r['new_graphs']} | {sync} |")
        lines.append(f"| {mode} | graph breaks | {rows['graph_breaks']} | | | | |")
    lines.append(f"\nrecording memory per block, step and branch: {res['record_bytes_per_block_step_branch'] / 1024:.0f} KiB "
                 "(chan_max, chan_mean, median, 2 channels x tokens; float32)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
