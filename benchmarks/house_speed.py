"""Seconds per default house clip on this CPU (target <= 10 s on 2 cores).

    PYTHONPATH=. python benchmarks/house_speed.py [--variant causal] [--repeats 3] [--root FOLDER_WITH_VARIANTS]

Prints the text-encode + denoise + VAE-decode split of one pipe(prompt=...) call with the model's
defaults (stas.house.DEFAULTS), the median over repeats after one warm-up, and the torch threads used.
"""
import argparse
import statistics
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="causal")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--root", default=None, help="folder with <variant>/{transformer,vae} (default: the shipped weights)")
    ap.add_argument("--prompt", default="a red square moves left past a blue circle")
    ap.add_argument("--components", type=int, default=0,
                    help="also time N transformer forwards and N VAE decodes alone and print the fastest of each: "
                         "on a shared machine the minimum is the best estimate of the idle-machine cost")
    a = ap.parse_args()
    from stas.house import DEFAULTS, load_pipeline

    t = time.time()
    pipe = load_pipeline(a.variant, device="cpu", root=a.root)
    print(f"load_pipeline: {time.time() - t:.2f} s")
    kw = dict(DEFAULTS[a.variant])
    parts = {}

    def timed(mod, name):
        orig = mod.forward

        def f(*args, **kwargs):
            t0 = time.perf_counter()
            out = orig(*args, **kwargs)
            parts[name] = parts.get(name, 0.0) + time.perf_counter() - t0
            return out
        mod.forward = f

    timed(pipe.transformer, "transformer")
    timed(pipe.text_encoder, "text_encoder")
    orig_decode = pipe.vae.decode

    def dec(*args, **kwargs):
        t0 = time.perf_counter()
        out = orig_decode(*args, **kwargs)
        parts["vae_decode"] = parts.get("vae_decode", 0.0) + time.perf_counter() - t0
        return out
    pipe.vae.decode = dec
    if a.components:
        from stas.house.text import encode

        d = kw
        lat_shape = (1, 16, 1 + (d["num_frames"] - 1) // 4, d["height"] // 8, d["width"] // 8)
        x = torch.randn(lat_shape, generator=torch.Generator().manual_seed(0))
        e = encode(pipe.tokenizer, pipe.text_encoder, [a.prompt], d["max_sequence_length"])
        fw, de = [], []
        with torch.no_grad():
            for _ in range(a.components):
                t0 = time.perf_counter()
                pipe.transformer(x, torch.tensor([500.0]), e, return_dict=False)
                fw.append(time.perf_counter() - t0)
            for _ in range(max(2, a.components // 2)):
                t0 = time.perf_counter()
                pipe.vae.decode(x)
                de.append(time.perf_counter() - t0)
        n_fwd = d["num_inference_steps"] * (2 if d["guidance_scale"] > 1 else 1)
        est = n_fwd * min(fw) + min(de)
        print(f"components: transformer forward min {min(fw):.3f} s (median {statistics.median(fw):.3f}), "
              f"VAE decode min {min(de):.2f} s (median {statistics.median(de):.2f})")
        print(f"estimated seconds per default clip from the minima: {n_fwd} x {min(fw):.3f} + {min(de):.2f} = {est:.2f}")
        if a.repeats == 0:
            return
    times, cpus = [], []
    for i in range(a.repeats + 1):
        parts.clear()
        c0 = time.process_time()
        t0 = time.perf_counter()
        v = pipe(prompt=a.prompt, generator=torch.Generator().manual_seed(i), output_type="pt", **kw).frames[0]
        dt = time.perf_counter() - t0
        cpu = time.process_time() - c0
        if i:
            times.append(dt)
            cpus.append(cpu)
        print(f"run {i}{' (warm-up)' if i == 0 else ''}: {dt:.2f} s (process CPU {cpu:.2f} s)  " +
              "  ".join(f"{k} {s:.2f}" for k, s in parts.items()), flush=True)
    print(f"threads {torch.get_num_threads()}  call {kw}  output {tuple(v.shape)}")
    n = torch.get_num_threads()
    print(f"process CPU seconds per clip / threads: {statistics.median(cpus) / n:.2f} "
          "(the wall time to expect on an otherwise idle machine with that many cores)")
    print(f"house[{a.variant}] seconds per default clip: {statistics.median(times):.2f} (median of {len(times)})")


if __name__ == "__main__":
    main()
