"""Command line: ``python -m stas generate|figures|bench|evaluate ...`` (``-h`` on each for options)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cmd_generate(a):
    import stas

    pipe = stas.load(a.model)
    kw = {k: v for k, v in dict(num_frames=a.frames, num_inference_steps=a.steps, guidance_scale=a.guidance).items()
          if v is not None}
    ctx = _null()
    if a.channels is not None:  # STAS: the defaults of stas.defaults (house: chosen in notebook 07), overridable
        from .defaults import ma_channels, stas_config

        chans = a.channels or ma_channels(pipe)["ma"]
        over = {k: v for k, v in dict(alpha=a.alpha, steps=a.stas_steps,
                                      blocks=tuple(a.blocks) if a.blocks else None).items() if v is not None}
        n = kw.get("num_inference_steps", stas.native_defaults(pipe)["num_inference_steps"])
        cfg = stas_config(pipe, chans, n, **over)
        print(cfg)
        ctx = stas.steer(pipe, cfg)
    with ctx:
        video = stas.generate(pipe, a.prompt, seed=a.seed, **kw)
    print(stas.save_video(video, a.out))


def cmd_figures(a):
    nbs = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")) + sorted((ROOT / "notebooks").glob("explorer.ipynb"))
    for nb in nbs:
        print(f"== {nb.name}", flush=True)
        subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--inplace",
                        "--ExecutePreprocessor.timeout=-1", str(nb)], check=True, cwd=nb.parent)


def cmd_bench(a):
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{a.which}.py"), *a.args], check=True)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *e):
        return False


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m stas", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="generate one clip (optionally with STAS) and save it as MP4/GIF")
    g.add_argument("prompt")
    g.add_argument("--model", default=None, help="house (default, or $STAS_MODEL), a diffusers dir or hub id")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--frames", type=int, default=None)
    g.add_argument("--steps", type=int, default=None)
    g.add_argument("--guidance", type=float, default=None)
    g.add_argument("--channels", type=int, nargs="*", default=None,
                   help="enable STAS on these channels (given with no value: the MA channels measured on one clip)")
    g.add_argument("--blocks", type=int, nargs="+", default=None, help="steered blocks (default: stas.defaults)")
    g.add_argument("--alpha", type=float, default=None)
    g.add_argument("--stas-steps", type=int, default=None, help="K: steer the first K steps")
    g.add_argument("--out", default="video.mp4")
    g.set_defaults(fn=cmd_generate)
    f = sub.add_parser("figures", help="re-run every notebook in place (each writes its figures to figures/)")
    f.set_defaults(fn=cmd_figures)
    b = sub.add_parser("bench", help="run a benchmark script: overhead (GPU) or house_speed (CPU)")
    b.add_argument("which", choices=["overhead", "house_speed"])
    b.add_argument("args", nargs=argparse.REMAINDER)
    b.set_defaults(fn=cmd_bench)
    from .evaluate import add_cli  # `evaluate`: prompts x seeds x methods -> results table (accelerate-sharded)

    add_cli(sub)
    a = ap.parse_args(argv)
    a.fn(a)


if __name__ == "__main__":
    main()
