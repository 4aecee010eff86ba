import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import stas  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def wan():
    """Tiny random WanPipeline (CPU, float32) with a random 1-layer BERT text encoder."""
    return stas.load("tiny-random-wan", device="cpu")


@pytest.fixture(scope="session")
def cog():
    return stas.load("tiny-random-cogvideox", device="cpu")


def call_kwargs(pipe, **over):
    """Small, fast call arguments for a tiny pipeline."""
    kw = dict(stas.native_defaults(pipe))
    if "CogVideoX" in type(pipe).__name__:
        kw.update(height=32, width=32, num_frames=9, num_inference_steps=3, guidance_scale=2.0)
    kw.update(over)
    return kw


def load_benchmark(name: str):
    """The module ``benchmarks/<name>.py`` (benchmarks are scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
