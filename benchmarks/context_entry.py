"""Does entering a stas context per forward slow a bare full-size Wan forward? (eager, bf16)

    python benchmarks/context_entry.py      # one GPU, ~1 min; prints medians of 12 interleaved forwards
"""
import statistics
import sys
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel
from diffusers.hooks.hooks import HookRegistry, ModelHook

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
import stas  # noqa: E402
from overhead import WAN21_1P3B, timer  # noqa: E402

dev = torch.device("cuda")
torch.manual_seed(0)
with torch.device(dev):
    t = WanTransformer3DModel(**WAN21_1P3B).to(torch.bfloat16).eval()
lay = stas.TokenLayout.from_video(81, 480, 832)
x = torch.randn(1, 16, lay.latent_frames, lay.latent_height, lay.latent_width, device=dev, dtype=torch.bfloat16)
ts = torch.tensor([500.0], device=dev); text = torch.randn(1, 512, 4096, device=dev, dtype=torch.bfloat16)
fwd = lambda: t(hidden_states=x, timestep=ts, encoder_hidden_states=text, return_dict=False)[0]
tm = timer(dev)
cfg = stas.STASConfig(alpha=1.0, steps=1, blocks=[15], channels=[0, 1])
class Null:
    def __enter__(self): return self
    def __exit__(self, *a): return False
class Probe:  # a do-nothing diffusers hook registry on the transformer, as tracking installs
    def __enter__(self):
        self.reg = HookRegistry.check_if_exists_or_initialize(t); self.reg.register_hook(ModelHook(), "p"); return self
    def __exit__(self, *a): self.reg.remove_hook("p", recurse=False); return False
V = {"none": Null, "probe only": Probe, "steer K=0": lambda: stas.steer(t, stas.STASConfig(alpha=1.0, steps=0, blocks=[15], channels=[0, 1])),
     "steer": lambda: stas.steer(t, cfg)}
res = {k: [] for k in V}
with torch.no_grad():
    for k, mk in V.items():
        with mk(): fwd(); fwd()
    for r in range(12):
        for k in list(V)[r % 4:] + list(V)[:r % 4]:
            with V[k]():
                res[k].append(tm(fwd))
    with stas.steer(t, cfg):  # one context, many forwards (each still a new run of a bare transformer)
        inside = [tm(fwd) for _ in range(12)]
base = statistics.median(res["none"])
for k, v in res.items():
    print(f"{k:12s} median {statistics.median(v):7.1f} ms  {100 * (statistics.median(v) / base - 1):+5.2f} %  range {min(v):.0f}-{max(v):.0f}")
print(f"steer, one context, 12 forwards: median {statistics.median(inside):7.1f} ms {100 * (statistics.median(inside) / base - 1):+5.2f} %")
