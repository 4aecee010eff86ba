"""A small video classifier trained on the house world, used as the feature extractor of a
Fréchet distance between generated and real house-world clips ("FID for MNIST").

    python -m stas.house.featnet train            # renders clips, trains on CPU in a few minutes
    feats = stas.house.featnet.features(videos)   # (N, 64) float32, deterministic

Input: any clip (F, 3, H, W) in [0, 1] is nearest-resampled to 15 frames evenly spread over the
clip (every 2nd frame of the world's 29) and area-resized to 48 x 48, so the house model's
128 x 128 x 29 clips and the tiny test pipelines' clips go through the same path. Training clips are
rendered by `stas.house.world` at 96 x 96 (geometry scales with size) and pooled to 48 x 48.

Network (~0.35 M parameters, ~1.4 MB in float32): RGB + temporal difference + x/y coordinate input
channels, four 3D convolutions (24, 48, 96, 64 channels; strides 1x2x2, 2x2x2, 2x2x2, 1x2x2;
GroupNorm + SiLU), average pooling over space (the 4 remaining time steps are kept), a 64-d linear
layer whose SiLU outputs are the features, and linear heads for the ground truth the world knows:

* ``colours`` / ``shapes`` / ``motions``: which palette colours, shapes and motions occur among
  the clip's objects (multi-label, 7 + 3 + 6 sigmoids);
* ``main_colour`` / ``main_shape`` / ``main_motion``: the first (caption-named) object's colour,
  shape, motion (softmax). With 2-3 objects the first one is only marked by being drawn at the
  back, so these are harder than the multi-label heads by construction.

Held-out accuracies are written next to the weights (``data/featnet/featnet.json``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import world

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "featnet"
WEIGHTS = DATA_DIR / "featnet.safetensors"
SIZE, FRAMES, RENDER_SIZE = 48, 15, 96  # input 15 frames (every 2nd of 29) x 48 x 48
HEADS = {"colours": len(world.COLOURS), "shapes": len(world.SHAPES), "motions": len(world.MOTIONS),
         "main_colour": len(world.COLOURS), "main_shape": len(world.SHAPES), "main_motion": len(world.MOTIONS)}
MULTI = ("colours", "shapes", "motions")
TRAIN_SEED0, TEST_SEED0 = 3_000_000_000, 3_100_000_000  # disjoint from the house model's seeds


class FeatNet(nn.Module):
    """(B, 3, 15, 48, 48) in [0, 1] -> features (B, 64) and per-head logits.

    The input gets 5 extra channels: the temporal difference x[t] - x[t-1] (0 at t = 0) and the pixel
    x / y coordinates (CoordConv), and the last feature map is pooled over space only, keeping its 4
    time steps, so "where is the object at time t" and hence the direction of motion stay linearly
    readable."""

    def __init__(self, width=(24, 48, 96, 64), dim=64):
        super().__init__()
        c1, c2, c3, c4 = width
        def conv(i, o, stride):
            return nn.Sequential(nn.Conv3d(i, o, 3, stride=stride, padding=1), nn.GroupNorm(4, o), nn.SiLU())
        self.body = nn.Sequential(conv(8, c1, (1, 2, 2)), conv(c1, c2, 2), conv(c2, c3, 2), conv(c3, c4, (1, 2, 2)))
        self.proj = nn.Linear(c4 * 4, dim)
        self.heads = nn.ModuleDict({k: nn.Linear(dim, n) for k, n in HEADS.items()})

    def features(self, x):
        b, _, t, h, w = x.shape
        diff = torch.cat([torch.zeros_like(x[:, :, :1]), x[:, :, 1:] - x[:, :, :-1]], 2)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        coords = torch.stack([xs, ys]).to(x)[None, :, None].expand(b, 2, t, h, w)
        z = self.body(torch.cat([(x - 0.5) * 2, diff * 4, coords], 1)).mean((3, 4))   # (B, c4, 4)
        return F.silu(self.proj(z.flatten(1)))

    def forward(self, x):
        f = self.features(x)
        return f, {k: head(f) for k, head in self.heads.items()}


def prepare(videos) -> torch.Tensor:
    """Clips -> (B, 3, 15, 48, 48) float32 network input (15 frames evenly spaced over the clip).

    ``videos``: a (F, 3, H, W) clip, a list of clips, or a (B, F, 3, H, W) tensor, in [0, 1].
    """
    if isinstance(videos, torch.Tensor) and videos.dim() == 4:
        videos = [videos]
    out = []
    for v in videos:
        v = torch.as_tensor(v).float()
        idx = torch.linspace(0, v.shape[0] - 1, FRAMES).round().long()   # nearest-frame resampling
        v = F.interpolate(v[idx], size=(SIZE, SIZE), mode="area") if v.shape[-1] != SIZE else v[idx]
        out.append(v.permute(1, 0, 2, 3))
    return torch.stack(out)


_CACHE = {}


def load(path=None) -> FeatNet:
    """The trained network (cached), in eval mode on the CPU."""
    from safetensors.torch import load_file

    path = Path(path or WEIGHTS)
    if path not in _CACHE:
        if not path.exists():
            raise FileNotFoundError(f"no featnet weights at {path}: run `python -m stas.house.featnet train`")
        net = FeatNet()
        net.load_state_dict(load_file(str(path)))
        _CACHE[path] = net.eval()
    return _CACHE[path]


def info(path=None) -> dict:
    """The training record written next to the weights (held-out accuracies, sizes, seconds)."""
    return json.loads(Path(path or WEIGHTS).with_suffix(".json").read_text())


@torch.no_grad()
def features(videos, net: FeatNet | None = None, batch: int = 32) -> np.ndarray:
    """(N, 64) float32 features of N clips (see `prepare` for the accepted shapes)."""
    net = net or load()
    x = prepare(videos)
    return torch.cat([net.features(x[i:i + batch]) for i in range(0, len(x), batch)]).numpy()


# ------------------------------------------------------------------------------------- training
def labels(params: world.ClipParams) -> dict:
    """Ground-truth targets of a batch of world clips."""
    act = torch.as_tensor(params.active)
    out = {}
    for key, arr in (("colours", params.colour), ("shapes", params.shape), ("motions", params.motion)):
        a = torch.as_tensor(arr)
        hot = F.one_hot(a, HEADS[key]).float() * act[..., None]
        out[key] = hot.amax(1)
        out["main_" + key[:-1]] = a[:, 0]
    return out


def render(seeds, chunk: int = 64, device="cpu"):
    """Pooled uint8 clips (B, 3, 15, 48, 48) and their labels for the given world seeds."""
    xs, ys = [], []
    for i in range(0, len(seeds), chunk):
        p = world.sample_params(seeds[i:i + chunk], size=RENDER_SIZE)
        fr = torch.linspace(0, world.NUM_FRAMES - 1, FRAMES).round().long().tolist()
        v, _, _ = world.render_batch(p, world.NUM_FRAMES, RENDER_SIZE, device=device, frames=fr)  # (b, 15, 3, 96, 96)
        v = F.avg_pool2d(v.flatten(0, 1), RENDER_SIZE // SIZE).unflatten(0, v.shape[:2])
        xs.append((v.permute(0, 2, 1, 3, 4) * 255).round().to(torch.uint8))
        ys.append({k: t.to(device) for k, t in labels(p).items()})
    return torch.cat(xs), {k: torch.cat([y[k] for y in ys]) for k in ys[0]}


def loss_fn(logits, y):
    return sum(F.binary_cross_entropy_with_logits(logits[k], y[k]) if k in MULTI else F.cross_entropy(logits[k], y[k])
               for k in HEADS)


@torch.no_grad()
def accuracy(net, x, y, batch=128) -> dict:
    """Held-out accuracy per head: exact-set match for multi-label heads, top-1 otherwise; and the
    mean per-label accuracy of the multi-label heads."""
    net.eval()
    logits = {k: [] for k in HEADS}
    for i in range(0, len(x), batch):
        _, lg = net(x[i:i + batch].float() / 255)
        for k in HEADS:
            logits[k].append(lg[k])
    acc = {}
    for k in HEADS:
        lg = torch.cat(logits[k])
        if k in MULTI:
            pred = lg > 0
            acc[k] = float((pred == y[k].bool()).all(1).float().mean())
            acc[k + "_per_label"] = float((pred == y[k].bool()).float().mean())
        else:
            acc[k] = float((lg.argmax(1) == y[k]).float().mean())
    return acc


def train(n_train=1500, n_test=300, epochs=5, batch=32, lr=3e-3, out=DATA_DIR, seed=0, device="cpu", log=print):
    """Render, train, evaluate, save weights + metrics after every epoch. Returns the metrics dict."""
    torch.manual_seed(seed)
    t0 = time.time()
    xtr, ytr = render(list(range(TRAIN_SEED0, TRAIN_SEED0 + n_train)), device=device)
    xte, yte = render(list(range(TEST_SEED0, TEST_SEED0 + n_test)), device=device)
    log(f"rendered {n_train}+{n_test} clips in {time.time() - t0:.0f}s")
    net = FeatNet().to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (n_train // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.15)
    g = torch.Generator().manual_seed(seed)
    for ep in range(epochs):
        net.train()
        perm = torch.randperm(n_train, generator=g).to(device)
        tot = 0.0
        for i in range(n_train // batch):
            idx = perm[i * batch:(i + 1) * batch]
            x = xtr[idx].float() / 255
            if torch.rand((), generator=g) < 0.5:  # left-right flip: swap the left/right labels
                x, yb = x.flip(-1), flip_labels({k: v[idx] for k, v in ytr.items()})
            else:
                yb = {k: v[idx] for k, v in ytr.items()}
            _, lg = net(x)
            loss = loss_fn(lg, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach())
        acc = accuracy(net, xte, yte)
        log(f"epoch {ep + 1}/{epochs} loss {tot / (n_train // batch):.3f} held-out "
            + " ".join(f"{k} {v:.2f}" for k, v in acc.items()) + f" ({time.time() - t0:.0f}s)")
        meta = save(net, out, dict(held_out_accuracy=acc, epochs_done=ep + 1, n_train=n_train, n_test=n_test,
                                   epochs=epochs, batch=batch, seconds=round(time.time() - t0), device=str(device),
                                   train_seeds=[TRAIN_SEED0, TRAIN_SEED0 + n_train],
                                   test_seeds=[TEST_SEED0, TEST_SEED0 + n_test]))  # every epoch: usable early
    _CACHE.clear()
    return meta


def save(net, out, meta) -> dict:
    """Write ``featnet.safetensors`` and ``featnet.json`` (``meta`` + size facts) into ``out``."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(out / "featnet.safetensors"))
    meta = dict(meta, parameters=sum(p.numel() for p in net.parameters()), input=f"3x{FRAMES}x{SIZE}x{SIZE}")
    (out / "featnet.json").write_text(json.dumps(meta, indent=1))
    _CACHE.clear()
    return meta


def flip_labels(y):
    """Labels of horizontally flipped clips: left <-> right (triangles point up: unchanged)."""
    y = dict(y)
    L, R = world.MOTIONS.index("left"), world.MOTIONS.index("right")
    m = y["motions"].clone()
    m[:, [L, R]] = m[:, [R, L]]
    y["motions"] = m
    mm = y["main_motion"].clone()
    mm[y["main_motion"] == L], mm[y["main_motion"] == R] = R, L
    y["main_motion"] = mm
    return y


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m stas.house.featnet", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="render world clips and train the feature network (CPU, minutes)")
    t.add_argument("--n-train", type=int, default=1500)
    t.add_argument("--n-test", type=int, default=300)
    t.add_argument("--epochs", type=int, default=5)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--device", default="cpu")
    t.add_argument("--out", default=str(DATA_DIR))
    t.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    meta = train(a.n_train, a.n_test, a.epochs, a.batch, out=a.out, device=a.device)
    print(json.dumps(meta["held_out_accuracy"], indent=1))


if __name__ == "__main__":
    main()
