"""Command line: ``python -m stas generate|evaluate|figures|bench|save-tiny ...`` (``-h`` on each).

With the notebooks' parameter cells, the one place that reads environment variables: ``$STAS_MODEL``
is the default of ``--model`` (else ``house``); everything else is an option.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from .adapters import UnsupportedModelError

ROOT = Path(__file__).resolve().parents[1]


def cmd_generate(a):
    import stas

    pipe = stas.load(a.model)
    kw = stas.call_settings(pipe, a.preset, num_frames=a.frames, num_inference_steps=a.steps,
                            guidance_scale=a.guidance, height=a.size, width=a.size)
    ctx = _null()
    if a.channels is not None:  # STAS: the model's registered defaults, else the paper's scaled; overridable
        from .defaults import ma_channels, stas_config

        chans = a.channels
        if not chans:
            ch = ma_channels(pipe, call=kw)
            if ch["fallback"]:
                raise SystemExit(f"no channel passes the MA criteria on this model (top by peak/median: {ch['top']}); "
                                 "name channels with --channels C [C ...]")
            chans = ch["ma"]
        over = {k: v for k, v in dict(alpha=a.alpha, steps=a.stas_steps,
                                      blocks=tuple(a.blocks) if a.blocks else None).items() if v is not None}
        cfg = stas_config(pipe, chans, kw["num_inference_steps"], **over)
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


def cmd_save_tiny(a):
    import stas

    print(stas.save_tiny(a.family, a.dir, a.seed))


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
    g.add_argument("--model", default=None, help="a registered name, a diffusers dir or hub id (default $STAS_MODEL or house)")
    g.add_argument("--preset", default="native", choices=["native", "quick"], help="call settings preset")
    g.add_argument("--size", type=int, default=None, help="height = width")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--frames", type=int, default=None)
    g.add_argument("--steps", type=int, default=None)
    g.add_argument("--guidance", type=float, default=None)
    g.add_argument("--channels", type=int, nargs="*", default=None,
                   help="enable STAS on these channels (given with no value: the MA channels measured on one clip)")
    g.add_argument("--blocks", type=int, nargs="+", default=None, help="steered blocks (default: the model's)")
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
    t = sub.add_parser("save-tiny", help="write a tiny random diffusers pipeline to a directory (tests, CI)")
    t.add_argument("family", choices=["wan", "cogvideox"])
    t.add_argument("dir")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(fn=cmd_save_tiny)
    from .evaluate import add_cli  # `evaluate`: prompts x seeds x methods -> results table (accelerate-sharded)

    add_cli(sub)
    a = ap.parse_args(argv)
    if hasattr(a, "model") and a.model is None:
        a.model = os.environ.get("STAS_MODEL", "house")
    try:
        a.fn(a)
    except (ValueError, UnsupportedModelError) as e:  # a user's input the library refused: its message, no traceback
        if os.environ.get("STAS_TRACEBACK"):
            raise
        ap.exit(2, f"python -m stas {a.cmd}: error: {e}\n(STAS_TRACEBACK=1 shows the traceback)\n")


if __name__ == "__main__":
    main()
