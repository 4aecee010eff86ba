"""Train the house VAE on full-length world clips: ``python -m stas.house.train_vae {bench,train}``.

Why a second VAE trainer (issue 8): the causal AutoencoderKLWan trained on 9-frame clips does not
generalise past the latent frames it saw (29-frame clips: frames 9-28 at 12-14 dB), so the causal
variant trains on whole 29-frame clips, with random spatial crops to keep a step cheap. The uniform
variant is an image VAE (every latent frame is one pixel frame encoded alone), so it trains on single
frames. A diffusers VAE step is mostly fixed cost (encode and decode run chunk by chunk with a
feature cache: thousands of small kernels), so the whole step (forward, backward, clipping, AdamW,
EMA) can be captured once as a CUDA graph and replayed (``--graph``; PyTorch's "whole network
capture" recipe). ``bench`` times the step for a list of settings and prints the step rate.

    python -m stas.house.train_vae bench --variant causal --batch 32 128 --crop 64 128 --graph 0 1
    python -m stas.house.train_vae train --variant causal --minutes 9 --ckpt runs/vae-causal --export runs/export

``train`` resumes from ``--ckpt`` (model, EMA, AdamW state, data-stream position, cumulative history);
without one it starts from ``--init`` (an earlier export and its report) or fresh. ``--dt`` adds an L1
loss on frame-to-frame change (reconstruction's minus input's) against flicker (``--dt-first``: its
share over transitions; ``--dt-still``: a term on the input's still pixels alone; ``--still-frac``:
still clips in the batch); ``--freeze-encoder`` trains the decoder alone (pass it on every run that
should keep the latent space); ``--steps`` stops a run at a step count and ``--lr-end`` decays the
learning rate over it (cosine). ``--export`` writes the EMA weights with latent statistics from
held-out clips (``save_pretrained``, safetensors) and ``vae_report.json`` (held-out PSNR per frame);
``gate`` measures issue 8's gate 1; ``ab`` trains an A/B's arms side by side and gates each arm's EMA
and live weights.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import world
from ..layout import crosses_latent_frames
from .models import NUM_FRAMES, SIZE, VAE_CONFIG, VARIANTS, make_vae, pixel_frames
from .train import EVAL_SEED0, load_ckpt, load_export_weights, log, save_ckpt, vae_encode


def psnr(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of a mean squared error over values in [-1, 1] (peak-to-peak 2)."""
    return -10 * torch.log10(mse / 4)


class Batches:
    """Training inputs from a reproducible world-clip stream (``seed`` is the stream position).

    causal: clips (B, 3, 29, crop, crop), one random crop per clip; with ``still_frac`` the first
    round(still_frac * B) clips are still clips (their frame 0 repeated: a reconstruction of them should
    not change at all). uniform: single frames (B, 3, 1, crop, crop), the frames the uniform VAE encodes
    (0, 4, ..., 28) of B/8 clips, each clip's frames consecutive in the batch and cut at one crop (so
    ``temporal_diff`` can pair them). Raises ValueError for ``still_frac`` with the uniform variant.
    """

    def __init__(self, variant, batch, crop, seed, device, still_frac=0.0):
        if still_frac and variant != "causal":
            raise ValueError("still clips are for the causal variant (the uniform VAE sees single frames)")
        self.variant, self.batch, self.crop, self.device = variant, batch, crop, device
        self.n_still = round(still_frac * batch)
        self.stream = world.ClipStream(start_seed=seed, num_frames=NUM_FRAMES, size=SIZE, device=device)
        self.rng = np.random.default_rng(seed)

    def next(self):
        if self.variant == "causal":
            video, _ = self.stream.next(self.batch)
            if self.n_still:
                video[:self.n_still] = video[:self.n_still, :, :1].clone()  # broadcast over frames
        else:
            fr = pixel_frames("uniform")
            clips, _ = self.stream.next(max(1, self.batch // len(fr)))
            video = clips[:, :, fr].transpose(1, 2).reshape(-1, 3, 1, SIZE, SIZE)[: self.batch]
        c = self.crop
        if c >= SIZE:
            return video
        group = 1 if self.variant == "causal" else len(pixel_frames(self.variant))
        ij = np.repeat(self.rng.integers(0, SIZE - c + 1, size=(-(-video.shape[0] // group), 2)), group, axis=0)
        return torch.stack([v[..., i:i + c, j:j + c] for v, (i, j) in zip(video, ij)])


def temporal_diff(v: torch.Tensor, group: int) -> torch.Tensor:
    """Frame-to-frame differences of a training batch. ``v``: (B, C, T, H, W). With T > 1 (causal
    clips): v[:, :, 1:] - v[:, :, :-1]. With T == 1 (uniform: single frames, ``group`` consecutive batch
    items per clip, ``Batches``' order): differences between consecutive items of a group; B must be a
    multiple of ``group`` (ValueError otherwise)."""
    if v.shape[2] > 1:
        return v[:, :, 1:] - v[:, :, :-1]
    if v.shape[0] % group:
        raise ValueError(f"batch {v.shape[0]} is not a whole number of {group}-frame clips")
    g = v.reshape(-1, group, *v.shape[1:])
    return g[:, 1:] - g[:, :-1]


DT_FIRST = 4  # transitions 0 -> 1 ... 3 -> 4: into and within the causal VAE's latent frame 1
STILL_MAX = 0.02  # a still pixel: no channel changes by more than this ([0, 1] scale) at any transition


def still_mask(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, 1, H, W) float32: 1 on the pixels of clips ``x`` ((B, C, T, H, W), T > 1, in [-1, 1]) that
    no channel changes by more than `STILL_MAX` ([0, 1] scale) at any transition: `gate`'s still pixels."""
    return ((x[:, :, 1:] - x[:, :, :-1]).abs().amax(dim=(1, 2), keepdim=True) / 2 <= STILL_MAX).float()


def recon_loss(rec, x, dt_weight=0.0, grad_weight=0.0, group=1, dt_first=1.0, dt_still=0.0):
    """The VAE's reconstruction loss, a 0-dim float32 tensor: mean |rec - x| + mean (rec - x)^2
    + ``dt_weight`` * mean |temporal_diff(rec) - temporal_diff(x)| (flicker the per-pixel terms allow)
    + ``grad_weight`` * sum over H, W of mean |d(rec) - d(x)| (gradient difference loss, Mathieu et al.
    2016, arXiv 1511.05440: sharp edges). ``rec``, ``x``: (B, C, T, H, W) float32 in [-1, 1].

    ``dt_first``: the first `DT_FIRST` transitions weigh that many times the others in the frame-change
    term, the weights scaled to mean 1 (the term's total weight stays ``dt_weight``; only its share over
    transitions moves). Needs clips (T > DT_FIRST + 1); ValueError otherwise.

    ``dt_still``: + that weight * mean of |temporal_diff(rec)| * `still_mask` (x) over all values: the
    reconstruction's change on the pixels the input keeps still, without the moving pixels' terms. Needs
    clips (T > 1); ValueError otherwise."""
    loss = (rec - x).abs().mean() + F.mse_loss(rec, x)
    if dt_weight:
        err = (temporal_diff(rec, group) - temporal_diff(x, group)).abs()
        if dt_first != 1.0:
            if rec.shape[2] <= DT_FIRST + 1:
                raise ValueError(f"dt_first needs clips of more than {DT_FIRST + 1} frames, got {rec.shape[2]}")
            w = torch.ones(err.shape[2], device=err.device)
            w[:DT_FIRST] = dt_first
            err = err * (w / w.mean()).view(1, 1, -1, 1, 1)
        loss = loss + dt_weight * err.mean()
    if dt_still:
        if rec.shape[2] < 2:
            raise ValueError("dt_still needs clips (T > 1)")
        loss = loss + dt_still * ((rec[:, :, 1:] - rec[:, :, :-1]).abs() * still_mask(x)).mean()
    if grad_weight:
        for d in (-1, -2):
            loss = loss + grad_weight * (rec.diff(dim=d) - x.diff(dim=d)).abs().mean()
    return loss


class Step:
    """One training step (loss, backward, clip, AdamW, EMA), eager or replayed as a CUDA graph.

    ``run(x)`` -> (mse, kl) as 0-dim float32 device tensors (no host sync). The graph is captured on the
    first call after three warm-up steps (they train too); inputs are copied into a static buffer.
    """

    def __init__(self, vae, opt, ema, kl_weight, graph, ema_decay=0.999, dt_weight=0.0, group=1, grad_weight=0.0,
                 channels_last=False, **loss_kw):
        self.vae, self.opt, self.ema, self.kl_weight = vae, opt, ema, kl_weight
        self.dt_weight, self.group, self.grad_weight = dt_weight, group, grad_weight
        self.loss_kw = loss_kw  # further `recon_loss` keywords (dt_first, dt_still)
        self.params = [p for p in vae.parameters() if p.requires_grad]
        self.ema_list = [ema[n] for n, p in vae.named_parameters() if p.requires_grad]
        self.decay = ema_decay
        self.ema_w = torch.zeros((), device=self.params[0].device)  # 1 - decay of this step, set by run()
        self.use_graph, self.graph, self.static_x, self.out = graph, None, None, None
        self.channels_last = channels_last

    def _step(self, x):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda, cache_enabled=False):
            post = self.vae.encode(x).latent_dist
            z = post.sample()
            rec = self.vae.decode(z).sample
        rec = rec.float()
        mse = F.mse_loss(rec, x)
        kl = post.kl().mean() / float(np.prod(z.shape[1:]))
        loss = recon_loss(rec, x, self.dt_weight, self.grad_weight, self.group, **self.loss_kw) + self.kl_weight * kl
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0, foreach=True)
        self.opt.step()
        d = torch._foreach_sub([p.detach() for p in self.params], self.ema_list)
        torch._foreach_mul_(d, self.ema_w)
        torch._foreach_add_(self.ema_list, d)
        return mse.detach(), kl.detach()

    def run(self, x, step: int):
        """One step; ``step`` (completed steps so far) sets the EMA decay min(0.999, (1+n)/(10+n))."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        self.ema_w.fill_(1 - min(self.decay, (1 + step) / (10 + step)))
        if not self.use_graph:
            self.opt.zero_grad(set_to_none=True)
            return self._step(x)
        if self.graph is None:
            self.static_x = x.clone()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    self.opt.zero_grad(set_to_none=True)
                    self._step(self.static_x)
            torch.cuda.current_stream().wait_stream(s)
            self.graph = torch.cuda.CUDAGraph()
            self.opt.zero_grad(set_to_none=True)
            with torch.cuda.graph(self.graph):
                self.out = self._step(self.static_x)
        self.static_x.copy_(x)
        self.graph.replay()
        return self.out


ENCODER = ("encoder.", "quant_conv.")  # AutoencoderKLWan's parameters that define the latent space


def freeze_encoder_(vae, ema) -> int:
    """In place: the encoder and ``quant_conv`` take their EMA weights (those an EMA export ships) and
    stop training, so the latent space of that export stays fixed (a DiT trained on its latents stays
    valid) while the decoder trains on. Call before building `Step` (it trains what requires grad).
    Returns the number of frozen parameter tensors."""
    n = 0
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.startswith(ENCODER):
                p.copy_(ema[name])
                p.requires_grad_(False)
                n += 1
    return n


def _block_keys(nrb: int, stages: int) -> dict:
    """``{(module, stage, kind, j): state-dict prefix}`` of AutoencoderKLWan's residual and resample
    blocks for ``num_res_blocks = nrb``: the encoder's flat ``down_blocks`` list holds per stage ``nrb``
    residual blocks, then a resample (not after the last stage); decoder stage ``s`` holds
    ``up_blocks.s.resnets.0 ... nrb`` (``nrb + 1`` blocks)."""
    keys, i = {}, 0
    for s in range(stages):
        for j in range(nrb):
            keys[("encoder", s, "res", j)] = f"encoder.down_blocks.{i}."
            i += 1
        if s != stages - 1:
            keys[("encoder", s, "resample", 0)] = f"encoder.down_blocks.{i}."
            i += 1
        for j in range(nrb + 1):
            keys[("decoder", s, "res", j)] = f"decoder.up_blocks.{s}.resnets.{j}."
    return keys


def grow_res_blocks(weights: dict, vae, from_nrb: int) -> dict:
    """A state dict for ``vae`` (built with more ``num_res_blocks`` than ``from_nrb``) that computes what
    ``weights`` (a state dict of the ``from_nrb`` model) computes: every block of the smaller model keeps
    its weights, under its new index; each added residual block is an identity (its ``conv2`` zeroed,
    the zero-initialised residual branch of Goyal et al. 2017), the rest of it keeps ``vae``'s fresh
    initialisation. So training continues from the smaller model's reconstructions with more decoder
    (and encoder) capacity; the latent space is unchanged until the encoder trains."""
    nrb, stages = vae.config.num_res_blocks, len(vae.config.dim_mult)
    if nrb < from_nrb:
        raise ValueError(f"cannot shrink num_res_blocks {from_nrb} -> {nrb}")
    old, new = _block_keys(from_nrb, stages), _block_keys(nrb, stages)
    out = {k: v.clone() for k, v in vae.state_dict().items()}
    moved = {}
    for k, v in weights.items():
        src = next((b for b in old.values() if k.startswith(b)), None)
        key = k if src is None else new[next(i for i, b in old.items() if b == src)] + k[len(src):]
        if key not in out or out[key].shape != v.shape:
            raise ValueError(f"{k} -> {key}: not in the grown model or another shape")
        moved[key] = v
    for i, b in new.items():
        if i not in old and i[2] == "res":
            for k in out:
                if k.startswith(b + "conv2."):
                    out[k].zero_()
    out.update(moved)
    return out


def image_only_(vae):
    """Zero every causal conv's taps on past frames, in place: each frame is then encoded and decoded
    alone, also when a whole clip is decoded at once (as WanPipeline does). The uniform variant trains on
    single frames, where those taps only ever see zero padding: their gradient is 0, so they stay 0.
    Returns the number of convolutions changed."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    n = 0
    with torch.no_grad():
        for m in vae.modules():
            if isinstance(m, WanCausalConv3d) and m.kernel_size[0] > 1:
                m.weight[:, :, :-1] = 0
                n += 1
    return n


def _norm_silu(x, gamma, bias, scale: float, dim: int):
    """``WanRMS_norm`` followed by SiLU, op for op as diffusers computes them (float32 normalise)."""
    y = F.normalize(x.float(), dim=dim).to(x.dtype) * scale * gamma + bias
    return F.silu(y)


_norm_silu_compiled = None


class FusedRMSNormSiLU(nn.Module):
    """Drop-in for a residual block's ``WanRMS_norm`` + SiLU pair: the same parameters (``gamma``,
    ``bias``: state-dict keys unchanged), both ops in one ``torch.compile``-d function, so the
    normalise, scale and activation read and write the block's activations once instead of ~8 times
    (the VAE step is memory-bound). Made by ``fuse_norm_silu_``; not saved: exports are stock."""

    def __init__(self, norm):
        super().__init__()
        self.gamma, self.scale, self.channel_first = norm.gamma, norm.scale, norm.channel_first
        self.bias = norm.bias

    def forward(self, x):
        global _norm_silu_compiled
        if _norm_silu_compiled is None:
            # one code object serves every norm: 16 / 32 channels, first / later chunks, train / eval,
            # channels-last or not: 8 guard variants in a training step, 15 with the held-out eval (CPU
            # count, 2026-11-30). Past dynamo's default limit of 8 the rest ran eager: three GPU arms
            # then took 48 GiB each, not 34, and the third ran out of memory.
            cfg = torch._dynamo.config
            key = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"  # torch < 2.7
            setattr(cfg, key, max(getattr(cfg, key), 64))
            _norm_silu_compiled = torch.compile(_norm_silu, dynamic=True)
        fn = _norm_silu_compiled if x.is_cuda else _norm_silu
        return fn(x, self.gamma, self.bias, self.scale, 1 if self.channel_first else -1)


def fuse_norm_silu_(vae) -> int:
    """In place: every ``WanResidualBlock``'s norm1/norm2 -> ``FusedRMSNormSiLU`` and its (then
    redundant) SiLU -> identity. Same function, same parameters and state-dict keys (exports load
    them into a stock ``AutoencoderKLWan``); returns the number of norms fused."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanResidualBlock

    n = 0
    for m in vae.modules():
        if isinstance(m, WanResidualBlock) and not isinstance(m.nonlinearity, nn.Identity):
            m.norm1, m.norm2 = FusedRMSNormSiLU(m.norm1), FusedRMSNormSiLU(m.norm2)
            m.nonlinearity = nn.Identity()
            n += 2
    return n


def build(variant, lr, device, graph, fuse=False, channels_last=False, vae_config=None):
    """(VAE in train mode, EMA dict of float32 copies, AdamW; ``capturable`` with a tensor lr when
    ``graph``). ``fuse``: ``fuse_norm_silu_``; ``channels_last``: channels_last_3d weights;
    ``vae_config``: overrides of `models.VAE_CONFIG` (e.g. ``{"num_res_blocks": 1}``)."""
    vae = make_vae(variant, **(vae_config or {})).to(device).train()
    if variant == "uniform":
        image_only_(vae)
    if fuse:
        fuse_norm_silu_(vae)
    if channels_last:  # the 3-D conv weights only (Module.to(memory_format=) refuses the 4-D norm gains)
        for m in vae.modules():
            if isinstance(m, nn.Conv3d):
                m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last_3d)
    ema = {n: p.detach().clone().float() for n, p in vae.named_parameters()}
    lr_t = torch.tensor(lr, device=device) if graph else lr
    opt = torch.optim.AdamW(vae.parameters(), lr=lr_t, betas=(0.9, 0.99), weight_decay=0.0, capturable=graph)
    return vae, ema, opt


@torch.no_grad()
def heldout(vae, variant, device, n=64, seed=EVAL_SEED0 + 7):
    """Held-out PSNR (dB) of the VAE's mode reconstruction on ``n`` full 29-frame 128² clips.

    Returns (clip PSNR over all frames, per-frame PSNR list, latent mean (16,), latent std (16,)).
    """
    vae.eval()
    ev = world.ClipStream(start_seed=seed, device=device)
    fr = pixel_frames(variant)
    se, cnt, mus = torch.zeros(len(fr), device=device), 0, []
    for _ in range(max(1, n // 16)):
        video, _ = ev.next(min(16, n))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=video.is_cuda):
            mu = vae_encode(vae, video, variant)
            rec = vae.decode(mu).sample
        mus.append(mu.float())
        se += ((rec.float().clamp(-1, 1) - video[:, :, fr]) ** 2).mean(dim=(1, 3, 4)).sum(0)
        cnt += video.shape[0]
    vae.train()
    per_frame = se / cnt
    mu = torch.cat(mus)
    return (float(psnr(per_frame.mean())), [round(float(v), 2) for v in psnr(per_frame)],
            mu.mean(dim=(0, 2, 3, 4)), mu.std(dim=(0, 2, 3, 4)).clamp(min=1e-3))


def bench(args):
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    rows = []
    for graph, fuse, cl in itertools.product(args.graph, args.fuse, args.channels_last):
        for batch in args.batch:
            for crop in args.crop:
                torch.manual_seed(0)
                vae, ema, opt = build(args.variant, 1e-4, dev, bool(graph), fuse=bool(fuse), channels_last=bool(cl))
                step = Step(vae, opt, ema, args.kl, bool(graph), channels_last=bool(cl))
                data = Batches(args.variant, batch, crop, 0, dev)
                xs = [data.next() for _ in range(2)]
                torch.cuda.synchronize()
                t = time.time()
                for _ in range(4):
                    data.next()
                torch.cuda.synchronize()
                t_data = (time.time() - t) / 4
                for i in range(5):  # warm-up (and graph capture)
                    step.run(xs[i % 2], i)
                torch.cuda.synchronize()
                t = time.time()
                for i in range(args.steps):
                    mse, _ = step.run(xs[i % 2], i)
                torch.cuda.synchronize()
                dt = (time.time() - t) / args.steps
                pix = xs[0].numel() / 3
                row = dict(variant=args.variant, graph=bool(graph), fuse=bool(fuse), channels_last=bool(cl), batch=batch,
                           crop=crop, ms_step=round(dt * 1e3, 1),
                           mpix_s=round(pix / dt / 1e6, 1), ms_data=round(t_data * 1e3, 1),
                           mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 1), finite=bool(torch.isfinite(mse)))
                rows.append(row)
                log(json.dumps(row))
                del vae, ema, opt, step
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))


def lr_at(i, lr, lr_end=None, steps=None, since_adamw=None):
    """Learning rate of this run's step ``i`` (0-based): ``lr``, or with ``lr_end`` a cosine from ``lr``
    at i = 0 to ``lr_end`` at i = ``steps``; times a linear warm-up over the first 100 steps of every
    new AdamW (``since_adamw``: steps since it was made, default ``i``). Raises ValueError for
    ``lr_end`` without ``steps``."""
    if lr_end is not None:
        if not steps:
            raise ValueError("--lr-end needs --steps: the cosine runs over this run's steps")
        lr = lr_end + (lr - lr_end) * (1 + math.cos(math.pi * min(i, steps) / steps)) / 2
    return lr * min(1.0, ((i if since_adamw is None else since_adamw) + 1) / 100)


def train(args):
    lr_at(0, args.lr, args.lr_end, args.steps)  # --lr-end without --steps: fail before any GPU work
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    graph = bool(args.graph) and dev.type == "cuda"
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    ckpt = Path(args.ckpt)
    cfg = vae_config_of(args, ckpt)
    vae, ema, opt = build(args.variant, args.lr, dev, graph, fuse=bool(args.fuse), channels_last=bool(args.channels_last),
                          vae_config=cfg)
    state = dict(step=0, seconds=0.0, seed=args.seed * 10_000_000, history=[], runs=[], vae_config=cfg)
    fresh_opt = not (ckpt / "optim.safetensors").exists()
    if (ckpt / "state.json").exists():
        state = load_ckpt(ckpt, vae, ema, opt, dev)
        log(f"resumed {ckpt} at step {state['step']} ({state['seconds'] / 60:.1f} min)")
    elif args.init:
        state = init_from_export(args.init, vae, ema, state)
        log(f"started from exported {args.init} at step {state['step']} ({state['seconds'] / 60:.1f} min), new AdamW")
    if args.freeze_encoder:
        log(f"froze {freeze_encoder_(vae, ema)} encoder tensors at their EMA weights; the decoder trains")
    if args.reset_ema:
        with torch.no_grad():
            for n, p in vae.named_parameters():
                ema[n].copy_(p)
    data = Batches(args.variant, args.batch, args.crop, state["seed"], dev, still_frac=args.still_frac)
    group = 1 if args.variant == "causal" else len(pixel_frames(args.variant))
    if args.dt and args.batch % group:
        raise ValueError(f"--dt needs --batch a multiple of {group} for the {args.variant} variant")
    if args.dt_first != 1.0 and (args.variant != "causal" or not args.dt):
        raise ValueError("--dt-first weighs transitions of the causal variant's --dt term: give --dt too")
    if args.dt_still and args.variant != "causal":
        raise ValueError("--dt-still needs clips: the causal variant")
    step = Step(vae, opt, ema, args.kl, graph, ema_decay=args.ema_decay, dt_weight=args.dt, group=group,
                grad_weight=args.grad, channels_last=bool(args.channels_last), dt_first=args.dt_first,
                dt_still=args.dt_still)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))

    def save():
        state["seed"] = data.stream.seed
        save_ckpt(ckpt, vae, ema, opt, state)

    t0, s0, n0 = time.time(), state["seconds"], state["step"]
    run = dict(start_step=n0, batch=args.batch, crop=args.crop, lr=args.lr, lr_end=args.lr_end,
               ema_decay=args.ema_decay, kl=args.kl, dt=args.dt, dt_first=args.dt_first, dt_still=args.dt_still,
               still_frac=args.still_frac, grad=args.grad, graph=graph,
               fuse=bool(args.fuse), channels_last=bool(args.channels_last),
               reset_ema=args.reset_ema, fresh_adamw=fresh_opt, freeze_encoder=args.freeze_encoder,
               device=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu")
    last_eval = time.time()
    while (not stop and time.time() - t0 < args.minutes * 60
           and (args.steps is None or state["step"] - n0 < args.steps)):
        k = state["step"]
        lr = lr_at(k - n0, args.lr, args.lr_end, args.steps, k - (n0 if fresh_opt else 0))
        for g in opt.param_groups:
            g["lr"].fill_(lr) if torch.is_tensor(g["lr"]) else g.__setitem__("lr", lr)
        mse, kl = step.run(data.next(), k)
        state["step"] = k + 1
        if state["step"] % 50 == 0:
            state["seconds"] = s0 + time.time() - t0
            row = dict(step=state["step"], minutes=round(state["seconds"] / 60, 2), train_psnr=round(float(psnr(mse)), 2),
                       kl=round(float(kl), 4))
            if time.time() - last_eval > args.eval_every:
                row["heldout_psnr"] = round(_ema_heldout(vae, ema, args.variant, dev)[0], 2)
                last_eval = time.time()
                save()
            state["history"].append(row)
            log(f"vae[{args.variant}] {json.dumps(row)}")
    state["seconds"] = s0 + time.time() - t0
    run.update(end_step=state["step"], minutes=round((time.time() - t0) / 60, 2))
    state["runs"].append(run)
    save()
    log(f"vae[{args.variant}] saved {ckpt} at step {state['step']}")
    if args.export:
        export(ema, args.variant, args.export, state, dev)


def vae_config_of(args, ckpt):
    """The `models.VAE_CONFIG` overrides of a run (``{}`` or ``{"num_res_blocks": n}``): ``--res-blocks``,
    else those recorded in the resume checkpoint (``state.json``) or in ``--init``'s report. Raises
    ValueError when ``--res-blocks`` differs from the checkpoint's or is below ``--init``'s (above it,
    `init_from_export` grows the export with identity blocks)."""
    cfg = {} if args.res_blocks is None else dict(num_res_blocks=args.res_blocks)
    for f, what in ((ckpt / "state.json", "checkpoint"), (Path(args.init or ".") / "vae_report.json", "--init export")):
        if (what == "--init export" and not args.init) or not f.exists():
            continue
        had = json.loads(f.read_text()).get("vae_config", {})
        if args.res_blocks is None:
            return had
        n = dict(VAE_CONFIG, **had)["num_res_blocks"]
        if n > args.res_blocks or (n < args.res_blocks and what == "checkpoint"):
            raise ValueError(f"--res-blocks {args.res_blocks} differs from the {what} {f} ({had or 'defaults'})")
    return cfg


def init_from_export(folder, vae, ema, state):
    """Start from an exported VAE (``folder/vae``, save_pretrained) and continue its report's curve
    (``folder/vae_report.json``: steps, minutes, runs, history, stream position): the resume path when
    the ``runs/`` checkpoint (AdamW state) is gone. Loads into ``vae`` and ``ema`` in place; returns the
    trainer state. Raises FileNotFoundError when either file is missing."""
    folder = Path(folder)
    rep = json.loads((folder / "vae_report.json").read_text())
    w = load_export_weights(folder / "vae", next(vae.parameters()).device)
    had = dict(VAE_CONFIG, **rep.get("vae_config", {}))["num_res_blocks"]
    if had != vae.config.num_res_blocks:  # --res-blocks above the export's: grow it (identity blocks)
        w = grow_res_blocks(w, vae, had)
        state["grown_from"] = dict(num_res_blocks=had, step=rep["steps"])
    vae.load_state_dict(w)
    with torch.no_grad():
        for n, p in vae.named_parameters():
            ema[n].copy_(p)
    # the stream position: recorded since this function exists; before, every step drew `batch` clips
    seed = rep.get("stream_seed", state["seed"] + sum((r["end_step"] - r["start_step"]) * r["batch"] for r in rep["runs"]))
    out = dict(step=rep["steps"], seconds=rep["minutes"] * 60, seed=seed, history=rep["history"], runs=rep["runs"],
               init=str(folder), vae_config=state.get("vae_config", rep.get("vae_config", {})))
    if "grown_from" in state:
        out["grown_from"] = state["grown_from"]
    return out


def _ema_heldout(vae, ema, variant, dev):
    live = {n: p.detach().clone() for n, p in vae.named_parameters()}
    with torch.no_grad():
        for n, p in vae.named_parameters():
            p.copy_(ema[n])
        out = heldout(vae, variant, dev)
        for n, p in vae.named_parameters():
            p.copy_(live[n])
    return out


def export(weights, variant, out, state, dev, clips=64, name="ema"):
    """Weights (a state dict, ``name`` "ema" or "model": the live weights) + latent statistics from
    ``clips`` held-out clips -> ``out/<variant>/vae`` (save_pretrained, safetensors) and
    ``out/<variant>/vae_report.json`` (``exported_weights``: ``name``)."""
    e = make_vae(variant, **state.get("vae_config", {})).to(dev)
    e.load_state_dict({**e.state_dict(), **weights})
    if variant == "uniform":
        image_only_(e)
    clip_psnr, per_frame, mean, std = heldout(e, variant, dev, n=clips)
    e.register_to_config(latents_mean=[round(float(x), 5) for x in mean],
                         latents_std=[round(float(x), 5) for x in std])
    d = Path(out) / variant
    e.to(torch.float32).save_pretrained(str(d / "vae"), safe_serialization=True, max_shard_size="15MB")
    rep = dict(variant=variant, steps=state["step"], minutes=round(state["seconds"] / 60, 2),
               heldout_psnr=round(clip_psnr, 2), heldout_psnr_per_frame=per_frame, heldout_clips=clips,
               params=sum(p.numel() for p in e.parameters()), runs=state["runs"], history=state["history"],
               stream_seed=state["seed"], exported_weights=name, vae_config=state.get("vae_config", {}))
    (d / "vae_report.json").write_text(json.dumps(rep, indent=1))
    log(f"vae[{variant}] exported {d}: held-out PSNR {clip_psnr:.2f} dB, per frame {per_frame}")
    return rep


def export_ckpt(args):
    from safetensors.torch import load_file

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    state = json.loads((Path(args.ckpt) / "state.json").read_text())
    w = load_file(str(Path(args.ckpt) / f"{args.weights}.safetensors"), device=str(dev))
    export(w, args.variant, args.out, state, dev, clips=args.clips, name=args.weights)


@torch.no_grad()
def gate(vae, variant, clips=32, seed=EVAL_SEED0 + 99):
    """Issue 8's VAE gate on ``clips`` held-out world clips (29 frames, 128²), mode reconstructions.

    Returns a dict: ``psnr`` (dB over the frames the variant models); ``detector_ok`` on reconstructions
    and ``detector_ok_real`` on the real frames (fraction of clips whose named objects all have their
    colour and shape recognised, ``detect.score_clip``); ``change_ratio`` per transition (mean |x_{t+1} -
    x_t| of reconstructions over that of the real frames, averaged over clips) and its worst deviation
    from 1 (``change_dev_first``, ``_seams``, ``_within``; None where a class is empty) over the classes
    of `transition_classes`; ``static_excess``: per transition, the part of the reconstruction's mean
    change that lies on pixels the real clip keeps still (no channel changes by more than 0.02 at any
    transition: ``static_fraction`` of them), over the real clip's mean change: where the excess of
    ``change_ratio`` lives (the ratio minus it is the change on the other pixels); ``speed_ratio``: the
    objects' mean centroid speed (detector, px/frame) on reconstructions over that on the real frames;
    ``decode_s``: CPU seconds to decode one clip's latents (2 threads, median of 3).
    """
    from .detect import detect, score_clip
    from .world import parse_prompt

    fr = pixel_frames(variant)
    dev = next(vae.parameters()).device
    stream = world.ClipStream(start_seed=seed, device=dev)
    se = ok = ok_real = 0.0
    change_r, change_f, change_s, static, sp_r, sp_f = [], [], [], [], [], []
    for _ in range(0, clips, 8):
        video, caps = stream.next(min(8, clips))
        real = video[:, :, fr]
        rec = vae.decode(vae_encode(vae, video, variant)).sample.float().clamp(-1, 1)
        se += float(((rec - real) ** 2).mean(dim=(1, 2, 3, 4)).sum())
        for b, cap in enumerate(caps):
            r01 = ((rec[b].transpose(0, 1) + 1) / 2).cpu()
            g01 = ((real[b].transpose(0, 1) + 1) / 2).cpu()
            ok += score_clip(r01, cap)["ok"]
            ok_real += score_clip(g01, cap)["ok"]
            change_f.append((g01[1:] - g01[:-1]).abs().mean(dim=(1, 2, 3)))
            change_r.append((r01[1:] - r01[:-1]).abs().mean(dim=(1, 2, 3)))
            still = still_mask(real[b:b + 1]).cpu()[0, 0, 0]  # (H, W)
            change_s.append(((r01[1:] - r01[:-1]).abs() * still).mean(dim=(1, 2, 3)))
            static.append(still.mean())
            for ob in parse_prompt(cap):
                s = [_speed(detect(v, ob["colour"])) for v in (r01, g01)]
                if np.isfinite(s).all() and s[1] > 0.5:  # moving objects, seen in both
                    sp_r.append(s[0])
                    sp_f.append(s[1])
    n = clips
    ratio = torch.stack(change_r).mean(0) / torch.stack(change_f).mean(0)
    static_excess = torch.stack(change_s).mean(0) / torch.stack(change_f).mean(0)
    first, seams, within = transition_classes(variant, len(fr))
    vae_cpu = vae.to("cpu").float()
    lat = vae_encode(vae_cpu, video[:1].cpu().float(), variant)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        vae_cpu.decode(lat)
        times.append(time.perf_counter() - t)
    torch.set_num_threads(threads)
    vae.to(dev)
    return dict(variant=variant, clips=n, psnr=round(float(psnr(torch.tensor(se / n))), 2),
                detector_ok=round(ok / n, 3), detector_ok_real=round(ok_real / n, 3),
                change_ratio=[round(float(r), 3) for r in ratio],
                change_dev_first=round(float((ratio[first] - 1).abs().max()), 3) if first else None,
                change_dev_seams=round(float((ratio[seams] - 1).abs().max()), 3) if seams else None,
                change_dev_within=round(float((ratio[within] - 1).abs().max()), 3) if within else None,
                static_excess=[round(float(r), 3) for r in static_excess],
                static_fraction=round(float(torch.stack(static).mean()), 3),
                speed_ratio=round(float(np.sum(sp_r) / np.sum(sp_f)), 3) if sp_f else None, speed_objects=len(sp_f),
                decode_s=round(float(np.median(times)), 2))


def transition_classes(variant: str, num_frames: int) -> tuple[list, list, list]:
    """Transitions t -> t+1 of a ``num_frames`` reconstruction as (first, seams, within) lists of t, from
    `stas.layout.crosses_latent_frames` at the variant's returned-frame temporal factor (causal 4,
    uniform 1): ``first`` = [0] (latent frame 0 is pixel frame 0 alone), ``seams`` the later
    transitions that cross latent frames (causal 4 -> 5, 8 -> 9, ...; uniform: all), ``within`` the rest."""
    cross = crosses_latent_frames(num_frames, 4 if variant == "causal" else 1).tolist()
    t = [i for i, c in enumerate(cross) if c]
    first = t[:1] if variant == "causal" else []
    return first, [i for i in t if i not in first], [i for i, c in enumerate(cross) if not c]


def _speed(det):
    """Mean centroid displacement (px/frame) between consecutive frames where the object is present."""
    c = np.array([d["centroid"] for d in det], dtype=float)
    step = np.linalg.norm(np.diff(c, axis=0), axis=1)
    step = step[np.isfinite(step)]
    return float(step.mean()) if len(step) else float("nan")


def gate_cli(args):
    from diffusers import AutoencoderKLWan

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    vae = AutoencoderKLWan.from_pretrained(args.vae, dtype=torch.float32).to(dev).eval()
    res = gate(vae, args.variant, args.clips)
    log(json.dumps(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


GATE_KEYS = ("psnr", "detector_ok", "detector_ok_real", "change_dev_first", "change_dev_seams", "change_dev_within",
             "speed_ratio", "change_ratio", "static_excess", "decode_s")


def arm_env(i, gpus, environ):
    """The environment of arm ``i``: ``environ`` with ``CUDA_VISIBLE_DEVICES`` set to ``gpus[i % len(gpus)]``
    (arms spread round-robin over the listed devices); ``environ`` unchanged when ``gpus`` is empty."""
    env = dict(environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(gpus[i % len(gpus)])
    return env


_steps_asked = argparse.ArgumentParser(add_help=False)  # the --steps an arm's flags leave in force
_steps_asked.add_argument("--steps", type=int, default=None)


def ab(args):
    """An A/B: one ``train`` process per arm, all at once (they share the device, or spread over
    ``--gpus`` round-robin, see ``arm_env``), then per arm its EMA
    and its live weights exported (as ``export --weights ema / model``, ``--export-clips`` clips) and
    gated on ``--gate-clips`` held-out clips.
    Arms are ``NAME=FLAGS`` (``FLAGS`` added after ``--common``, so an arm's valued flag overrides the
    same flag there, e.g. ``long="--steps 1500"``; a switch such as ``--freeze-encoder`` cannot be
    turned off); each writes ``--out/NAME/{ckpt, ema,
    live}`` and ``train.log``. Results go under ``arms`` in ``--json``, whose other keys (the rule
    written before the run) are kept; ``equal_steps`` says whether every arm ran the same number of
    steps, and each arm's ``completed`` whether it ran the ``--steps`` it asked for (``steps_asked``;
    a warning is logged when not: ``--minutes`` ran out first, and a ``--lr-end`` decay stopped early).
    Raises ValueError for an arm without ``NAME=``, repeated names, a ``--gpus`` entry that is not a
    CUDA device here, or an arm that already has a checkpoint under ``--out`` (train would resume it), and
    RuntimeError, naming the arms and their logs, when a training process fails (the rest still
    finish); interrupted, it terminates the trainers it started."""
    import os
    import shlex
    import subprocess
    import sys

    from diffusers import AutoencoderKLWan
    from safetensors.torch import load_file

    if any("=" not in a or not a.split("=", 1)[0] for a in args.arm):
        raise ValueError(f"each --arm is NAME=FLAGS with a name: {args.arm}")
    arms = dict(a.split("=", 1) for a in args.arm)
    if len(arms) != len(args.arm):
        raise ValueError(f"arm names repeat: {[a.split('=', 1)[0] for a in args.arm]}")
    bad = [g for g in (args.gpus or []) if not (str(g).isdigit() and int(g) < torch.cuda.device_count())]
    if bad:  # train would fall back to the CPU without a word
        raise ValueError(f"--gpus {bad}: not CUDA devices here ({torch.cuda.device_count()} visible)")
    out, py = Path(args.out), [sys.executable, "-m", "stas.house.train_vae"]
    done = [n for n in arms if (out / n / "ckpt" / "state.json").exists()]
    if done:  # train would resume them: another --steps on top, and the record overwritten
        raise ValueError(f"arms {done} already have a checkpoint under {out}: give a new --out")
    procs = {}
    try:
        for i, (name, flags) in enumerate(arms.items()):
            d = out / name
            d.mkdir(parents=True, exist_ok=True)
            cmd = py + ["train", "--variant", args.variant, *shlex.split(args.common), *shlex.split(flags),
                        "--ckpt", str(d / "ckpt")]
            with open(d / "train.log", "w") as f:
                env = arm_env(i, args.gpus, os.environ)
                procs[name] = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
            on = f" on CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}" if args.gpus else ""
            log(f"ab: started {name}{on}: {shlex.join(cmd[3:])}")
        failed = [n for n, p in procs.items() if p.wait() != 0]
    finally:  # interrupted: no orphaned trainers (SIGTERM: each saves its checkpoint)
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
                p.wait()
    if failed:
        raise RuntimeError(f"arms {failed} failed: see {[str(out / n / 'train.log') for n in failed]}")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    res = {}
    for name, flags in arms.items():
        d = out / name
        state = json.loads((d / "ckpt" / "state.json").read_text())
        for w, folder in (("ema", "ema"), ("model", "live")):
            export(load_file(str(d / "ckpt" / f"{w}.safetensors"), device=str(dev)), args.variant, d / folder, state,
                   dev, clips=args.export_clips, name=w)
        run = state["runs"][-1]
        asked = _steps_asked.parse_known_args(shlex.split(args.common) + shlex.split(flags))[0].steps
        res[name] = dict(flags=flags, start_step=run["start_step"], end_step=run["end_step"], minutes=run["minutes"],
                         steps_asked=asked, completed=asked is None or run["end_step"] - run["start_step"] == asked)
        if not res[name]["completed"]:
            log(f"ab: WARNING {name} ran {run['end_step'] - run['start_step']} of its {asked} steps (--minutes ran out)")
        for w in ("ema", "live"):
            vae = AutoencoderKLWan.from_pretrained(str(d / w / args.variant / "vae"), dtype=torch.float32).to(dev).eval()
            g = gate(vae, args.variant, args.gate_clips)
            res[name][f"gate_{w}"] = {k: g[k] for k in GATE_KEYS if k in g}
            log(f"ab: {name} {w}: " + json.dumps({k: g.get(k) for k in GATE_KEYS[:6]}))
    steps = {n: r["end_step"] - r["start_step"] for n, r in res.items()}
    if len(set(steps.values())) > 1:
        log(f"ab: WARNING the arms ran unequal steps {steps} (--minutes ran out first?): compare with care")
    if args.json:
        f = Path(args.json)
        doc = json.loads(f.read_text()) if f.exists() else {}
        doc.update(arms=res, common=args.common, gate_clips=args.gate_clips,
                   equal_steps=len(set(steps.values())) == 1, gpus=args.gpus,
                   device=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu")
        f.write_text(json.dumps(doc, indent=1))
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m stas.house.train_vae")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="time one training step for each setting")
    b.add_argument("--variant", choices=VARIANTS, default="causal")
    b.add_argument("--batch", type=int, nargs="+", default=[32])
    b.add_argument("--crop", type=int, nargs="+", default=[SIZE])
    b.add_argument("--graph", type=int, nargs="+", default=[0, 1])
    b.add_argument("--fuse", type=int, nargs="+", default=[0], help="fuse_norm_silu_ (compiled norm + SiLU)")
    b.add_argument("--channels-last", type=int, nargs="+", default=[0], help="channels_last_3d weights and inputs")
    b.add_argument("--steps", type=int, default=10)
    b.add_argument("--kl", type=float, default=1e-4)
    b.add_argument("--json", default=None)
    t = sub.add_parser("train")
    t.add_argument("--variant", choices=VARIANTS, default="causal")
    t.add_argument("--minutes", type=float, default=9.0)
    t.add_argument("--steps", type=int, default=None, help="stop after this many steps of this run (or --minutes, "
                   "whichever comes first): arms of an A/B compared at equal steps")
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--crop", type=int, default=64, help="spatial crop side in pixels (128: whole frames)")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--lr-end", type=float, default=None, help="cosine decay of the learning rate from --lr to this "
                   "over --steps (default: constant)")
    t.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay (warm-up min(decay, (1+n)/(10+n)))")
    t.add_argument("--res-blocks", type=int, default=None, help="num_res_blocks of AutoencoderKLWan (encoder n, "
                   "decoder n + 1 per stage; default: the checkpoint's or --init's, else models.VAE_CONFIG's 0)")
    t.add_argument("--kl", type=float, default=1e-4)
    t.add_argument("--dt", type=float, default=0.0, help="weight of the L1 loss on frame-to-frame change "
                   "(reconstruction's minus input's): penalises flicker the L1/L2 terms allow")
    t.add_argument("--dt-first", type=float, default=1.0, help=f"the first {DT_FIRST} transitions' weight in the "
                   "--dt term relative to the others (weights scaled to mean 1)")
    t.add_argument("--dt-still", type=float, default=0.0, help="weight of the L1 loss on the reconstruction's "
                   "frame-to-frame change on the pixels the input keeps still (still_mask)")
    t.add_argument("--still-frac", type=float, default=0.0, help="fraction of each causal batch made still clips "
                   "(frame 0 repeated)")
    t.add_argument("--grad", type=float, default=0.0, help="weight of the L1 loss on spatial image gradients "
                   "(gradient difference loss): sharpens the corners the shape detector reads")
    t.add_argument("--graph", type=int, default=1, help="replay the step as a CUDA graph")
    t.add_argument("--fuse", type=int, default=0, help="fuse_norm_silu_: compiled norm + SiLU (same weights)")
    t.add_argument("--channels-last", type=int, default=0, help="channels_last_3d weights and inputs")
    t.add_argument("--seed", type=int, default=2)
    t.add_argument("--eval-every", type=float, default=120.0, help="seconds between held-out evaluations")
    t.add_argument("--ckpt", required=True, help="resume checkpoint folder (keep it under runs/)")
    t.add_argument("--export", default=None, help="folder for EMA weights + report")
    t.add_argument("--reset-ema", action="store_true", help="on resume, restart the EMA from the live weights")
    t.add_argument("--freeze-encoder", action="store_true", help="encoder + quant_conv fixed at their EMA "
                   "weights (the exported latent space stays valid for a DiT); only the decoder trains")
    t.add_argument("--init", default=None, help="when --ckpt holds no checkpoint: start from this export "
                   "(folder with vae/ and vae_report.json, e.g. data/house/causal) and continue its curve")
    e = sub.add_parser("export", help="checkpoint -> save_pretrained VAE + report (CPU is fine)")
    e.add_argument("--variant", choices=VARIANTS, default="causal")
    e.add_argument("--ckpt", required=True)
    e.add_argument("--weights", choices=("ema", "model"), default="ema")
    e.add_argument("--out", required=True)
    e.add_argument("--clips", type=int, default=64, help="held-out clips for PSNR and latent statistics")
    g = sub.add_parser("gate", help="issue-8 gate 1 on a saved VAE: PSNR, detector, frame change, speed, CPU decode")
    g.add_argument("--variant", choices=VARIANTS, default="causal")
    g.add_argument("--vae", required=True, help="save_pretrained folder of the VAE")
    g.add_argument("--clips", type=int, default=32)
    g.add_argument("--json", default=None)
    a = sub.add_parser("ab", help="an A/B: arms trained side by side, then their EMA and live weights gated")
    a.add_argument("--variant", choices=VARIANTS, default="causal")
    a.add_argument("--arm", action="append", required=True, help='NAME="FLAGS" (repeat): flags of one arm')
    a.add_argument("--common", default="", help="train flags of every arm, e.g. \"--init data/house/causal "
                   "--freeze-encoder --dt 4 --steps 1000\"")
    a.add_argument("--out", required=True, help="folder for the arms' checkpoints, exports and logs (under runs/)")
    a.add_argument("--gpus", nargs="+", default=None, help="CUDA devices the arms spread over round-robin "
                   "(CUDA_VISIBLE_DEVICES per arm, physical ids: it replaces an inherited mask; default: every arm on the current "
                   "device)")
    a.add_argument("--gate-clips", type=int, default=16)
    a.add_argument("--export-clips", type=int, default=64, help="held-out clips for each export's PSNR and latent "
                   "statistics (as train --export)")
    a.add_argument("--json", default=None, help="A/B record to update (e.g. data/house/vae_<name>_ab.json)")
    args = ap.parse_args(argv)
    return {"bench": bench, "train": train, "export": export_ckpt, "gate": gate_cli, "ab": ab}[args.cmd](args)


if __name__ == "__main__":
    main()
