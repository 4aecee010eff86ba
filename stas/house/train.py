"""Train the house model: ``python -m stas.house.train {vae,decoder,dit,gates,report} ...``.

    # 1. the VAE: the first weights' short recipe; the shipped VAEs come from `python -m stas.house.train_vae`
    python -m stas.house.train vae --variant causal --minutes 2 --out data/house
    # 2. the DiT, in resumable chunks of <= 10 minutes (re-run the same command to continue)
    python -m stas.house.train dit --variant causal --minutes 9 --out data/house --ckpt runs/causal
    # 3. the curves figure from the logged statistics (CPU, needs matplotlib)
    python -m stas.house.train report --out data/house
    # 4. issue 8's DiT gates 2-4 on the exported weights (CPU ~5 min; stas.house.gates)
    python -m stas.house.train gates --variant causal --out data/house

DiT recipe (as Wan): flow matching x_t = (1-t) x0 + t eps, predict eps - x0, timestep = 1000 t,
t ~ logit-normal(0, 1); joint image + video training (every 4th step is an image step: latent frame 0
alone, batch x4); 10 % of captions replaced by the empty prompt (for classifier-free guidance);
AdamW, bf16 autocast, torch.compile when it works, EMA of the weights (shipped).
Training clips are rendered on the device and encoded once into a latent pool at the start.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import world
from .models import NUM_FRAMES, SIZE, VARIANTS, make_dit, make_vae, pixel_frames
from .report import NOISE_LEVELS, POSITION_CLASSES_NOTE, compact_ma, ma_stats, make_figure, sample_eval, samples_figure, summarize_ma  # noqa: F401
from .text import MAX_SEQ_LEN, encode, load_text_encoder

EVAL_SEED0 = 1_000_000_000  # held-out seeds for statistics


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def _device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------------------------------- VAE
def vae_encode(vae, video, variant):
    """video (B,3,F,H,W) in [-1,1] (all F=29 frames) -> posterior mean (B,z,8,h,w)."""
    if variant == "causal":
        return vae.encode(video).latent_dist.mode()
    return encode_frames_alone(vae, video[:, :, pixel_frames(variant, video.shape[2])])


def encode_frames_alone(vae, x):
    """x (B,3,T,H,W) -> posterior mean (B,z,T,h,w), every frame encoded as its own one-frame clip (the
    uniform variant's image VAE)."""
    B, C, T, H, W = x.shape
    mu = vae.encode(x.permute(0, 2, 1, 3, 4).reshape(B * T, C, 1, H, W)).latent_dist.mode()  # B*T, z, 1, h, w
    return mu[:, :, 0].reshape(B, T, mu.shape[1], mu.shape[3], mu.shape[4]).permute(0, 2, 1, 3, 4)


def train_vae(args):
    dev = _device()
    torch.manual_seed(args.seed)
    vae = make_vae(args.variant).to(dev).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    # short clips (default 9 frames = 3 latent frames: frame 0 alone + two 4-frame chunks) exercise the
    # same causal code path as 29 frames at a third of the cost per clip
    stream = world.ClipStream(start_seed=args.seed * 10_000_000, num_frames=args.frames, size=SIZE, device=dev)
    fr = pixel_frames(args.variant, args.frames)
    t0 = time.time()
    step, hist = 0, []
    amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    while time.time() - t0 < args.minutes * 60 and (args.steps is None or step < args.steps):
        video, _ = stream.next(args.batch)
        with torch.autocast(**amp):
            if args.variant == "causal":
                post = vae.encode(video).latent_dist
                target = video
            else:
                x = video[:, :, fr]
                B, C, T, H, W = x.shape
                post = vae.encode(x.permute(0, 2, 1, 3, 4).reshape(B * T, C, 1, H, W)).latent_dist
                target = x
            z = post.sample()
            if args.variant != "causal":
                z = z[:, :, 0].reshape(B, T, z.shape[1], z.shape[3], z.shape[4]).permute(0, 2, 1, 3, 4)
            rec = vae.decode(z).sample
        rec = rec.float()
        l1 = (rec - target).abs().mean()
        mse = F.mse_loss(rec, target)
        kl = post.kl().mean() / float(np.prod(z.shape[1:]))
        loss = l1 + mse + args.kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        lr = args.lr * min(1.0, (step + 1) / 100)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        step += 1
        if step % 25 == 0 or step == 1:
            psnr = float(-10 * torch.log10(((rec.clamp(-1, 1) - target) ** 2).mean() / 4))
            hist.append(dict(step=step, l1=float(l1), mse=float(mse), kl=float(kl), psnr=psnr,
                             s=round(time.time() - t0, 1)))
            log(f"vae[{args.variant}] step {step} l1 {float(l1):.4f} psnr {psnr:.2f} kl {float(kl):.3f}")
    # latent statistics from held-out clips -> config (WanPipeline un-normalises with them)
    vae.eval()
    ev = world.ClipStream(start_seed=EVAL_SEED0 + 7, device=dev)
    fr = pixel_frames(args.variant)
    mus, psnrs = [], []
    with torch.no_grad(), torch.autocast(**amp):
        for _ in range(max(1, args.eval_n // 16)):
            video, _ = ev.next(min(16, args.eval_n))
            mu = vae_encode(vae, video, args.variant).float()
            mus.append(mu)
            rec = vae.decode(mu).sample.float().clamp(-1, 1)
            target = video if args.variant == "causal" else video[:, :, fr]
            psnrs.append(float(-10 * torch.log10(((rec - target) ** 2).mean() / 4)))
    mu = torch.cat(mus)
    mean = mu.mean(dim=(0, 2, 3, 4))
    std = mu.std(dim=(0, 2, 3, 4)).clamp(min=1e-3)
    vae.register_to_config(latents_mean=[round(float(x), 5) for x in mean],
                           latents_std=[round(float(x), 5) for x in std])
    out = Path(args.out) / args.variant / "vae"
    vae.to(torch.float32).save_pretrained(str(out), safe_serialization=True, max_shard_size="15MB")
    rep = dict(variant=args.variant, steps=step, minutes=round((time.time() - t0) / 60, 2), batch=args.batch,
               heldout_psnr=float(np.mean(psnrs)), params=sum(p.numel() for p in vae.parameters()),
               latents_mean=vae.config.latents_mean, latents_std=vae.config.latents_std, history=hist,
               device=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu")
    (Path(args.out) / args.variant / "vae_report.json").write_text(json.dumps(rep, indent=1))
    log(f"vae[{args.variant}] saved {out}: {step} steps, held-out PSNR {rep['heldout_psnr']:.2f} dB")


def finetune_decoder(args):
    """Train only the VAE decoder (+ post_quant_conv) with the encoder frozen, so latents a DiT was
    trained on keep their meaning. Short clips (``--frames``) and latent crops (``--crop``) keep it
    cheap enough for a CPU."""
    dev = _device()
    torch.manual_seed(args.seed)
    vae = load_vae(args.out, args.variant, dev)
    vae.decoder.requires_grad_(True).train()
    vae.post_quant_conv.requires_grad_(True)
    ps = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(ps, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    stream = world.ClipStream(start_seed=args.seed * 10_000_000 + 3_000_000, num_frames=args.frames, size=SIZE,
                              device=dev)
    t0, step, hist = time.time(), 0, []
    fr = pixel_frames(args.variant, args.frames)
    while time.time() - t0 < args.minutes * 60 and (args.steps is None or step < args.steps):
        video, _ = stream.next(args.batch)
        with torch.no_grad():
            z = vae_encode(vae, video, args.variant)
        target = video if args.variant == "causal" else video[:, :, fr]
        if args.crop:
            c = args.crop
            i, j = np.random.randint(0, z.shape[-1] - c + 1, size=2)
            z = z[..., i:i + c, j:j + c]
            target = target[..., 8 * i:8 * (i + c), 8 * j:8 * (j + c)]
        rec = vae.decode(z).sample.float()
        loss = (rec - target).abs().mean() + F.mse_loss(rec, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ps, 1.0)
        opt.step()
        step += 1
        if step % 10 == 0 or step == 1:
            psnr = float(-10 * torch.log10(((rec.detach().clamp(-1, 1) - target) ** 2).mean() / 4))
            hist.append(dict(step=step, loss=float(loss), psnr=psnr, s=round(time.time() - t0, 1)))
            log(f"decoder[{args.variant}] step {step} loss {float(loss):.4f} psnr {psnr:.2f}")
            if step % 50 == 0:
                _save_vae(vae, args, hist, step, t0)
    _save_vae(vae, args, hist, step, t0)


def _save_vae(vae, args, hist, step, t0):
    out = Path(args.out) / args.variant
    vae.to(torch.float32).save_pretrained(str(out / "vae"), safe_serialization=True, max_shard_size="15MB")
    rp = out / "vae_report.json"
    rep = json.loads(rp.read_text()) if rp.exists() else {}
    rep["decoder_finetune"] = dict(steps=step, minutes=round((time.time() - t0) / 60, 2), frames=args.frames,
                                   crop=args.crop, batch=args.batch, lr=args.lr, history=hist,
                                   device=str(_device()))
    rp.write_text(json.dumps(rep, indent=1))


# ------------------------------------------------------------------------------------------- data
def load_vae(out, variant, dev):
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(str(Path(out) / variant / "vae"), dtype=torch.float32)
    return vae.to(dev).eval().requires_grad_(False)


def norm_stats(vae, dev):
    m = torch.tensor(vae.config.latents_mean, device=dev).view(1, -1, 1, 1, 1)
    s = torch.tensor(vae.config.latents_std, device=dev).view(1, -1, 1, 1, 1)
    return m, s


@torch.no_grad()
def build_pool(vae, variant, tok, enc, n, seed0, dev, chunk=32, max_seconds=None):
    """Render + encode n clips -> (latents (n,16,8,16,16) bf16 normalised, text (n,32,384) bf16, captions)."""
    m, s = norm_stats(vae, dev)
    stream = world.ClipStream(start_seed=seed0, device=dev)
    lats, embs, caps = [], [], []
    t0 = time.time()
    amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    done = 0
    while done < n:
        b = min(chunk, n - done)
        video, cap = stream.next(b)
        with torch.autocast(**amp):
            mu = vae_encode(vae, video, variant).float()
        lats.append(((mu - m) / s).to(torch.bfloat16))
        embs.append(encode(tok, enc, cap, MAX_SEQ_LEN).to(torch.bfloat16))
        caps += cap
        done += b
        if max_seconds and time.time() - t0 > max_seconds:
            break
    log(f"pool[{variant}] {done} clips in {time.time() - t0:.1f}s")
    return torch.cat(lats), torch.cat(embs), caps


# ------------------------------------------------------------------------------------------- DiT
def _flat_state(sd, prefix):
    return {f"{prefix}{k}": v.detach().contiguous() for k, v in sd.items()}


def save_ckpt(path, model, ema, opt, state):
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(_flat_state(model.state_dict(), ""), str(path / "model.safetensors"))
    save_file(_flat_state(ema, ""), str(path / "ema.safetensors"))
    osd = opt.state_dict()
    flat = {}
    for pid, st in osd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                flat[f"{pid}.{k}"] = v.detach().float().contiguous().reshape(-1) if v.dim() == 0 else v.detach().contiguous()
    save_file(flat, str(path / "optim.safetensors"))
    tmp = path / "state.json.tmp"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path / "state.json")


def load_ckpt(path, model, ema, opt, dev):
    from safetensors.torch import load_file

    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    model.load_state_dict(load_file(str(path / "model.safetensors"), device=str(dev)))
    e = load_file(str(path / "ema.safetensors"), device=str(dev))
    for k in ema:
        ema[k].copy_(e[k])
    if (path / "optim.safetensors").exists():
        flat = load_file(str(path / "optim.safetensors"), device=str(dev))
        osd = opt.state_dict()
        st = {}
        for key, v in flat.items():
            pid, name = key.split(".", 1)
            st.setdefault(int(pid), {})[name] = v.reshape(()) if name == "step" else v
        osd["state"] = st
        opt.load_state_dict(osd)
    return state


def load_export_weights(folder, device) -> dict:
    """Every tensor of the ``*.safetensors`` shards under ``folder`` (a save_pretrained directory), on
    ``device``. Raises FileNotFoundError when there is none."""
    from safetensors.torch import load_file

    w = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        w.update(load_file(str(f), device=str(device)))
    if not w:
        raise FileNotFoundError(f"no safetensors under {folder}")
    return w


def init_dit_from_export(folder, model, ema, state):
    """Start from an exported DiT (``folder/transformer``, save_pretrained, bf16) and continue its
    report's curves (``folder/train_report.json``: steps, trained_minutes, loss_history, ma_history): the
    resume path when the ``runs/`` checkpoint (AdamW state) is gone. Loads into ``model`` and ``ema``
    (float32 copies of the bf16 weights) in place; returns the trainer state. Raises FileNotFoundError
    when either is missing."""
    folder = Path(folder)
    rep = json.loads((folder / "train_report.json").read_text())
    w = load_export_weights(folder / "transformer", next(model.parameters()).device)
    model.load_state_dict({k: v.float() for k, v in w.items()})
    with torch.no_grad():
        for k, v in model.state_dict().items():
            ema[k].copy_(v)
    return dict(state, step=rep["steps"], elapsed_s=rep["trained_minutes"] * 60, history=rep["loss_history"],
                ma_history=rep["ma_history"], init=str(folder))


def export_transformer(ema, out_dir, dtype=torch.bfloat16):
    m = make_dit()
    m.load_state_dict({k: v.float().cpu() for k, v in ema.items()})
    m.to(dtype).save_pretrained(str(out_dir), safe_serialization=True, max_shard_size="15MB")
    return m


def step_if_finite(opt, grad_norm: torch.Tensor) -> torch.Tensor:
    """``opt.step()`` unless ``grad_norm`` (0-d tensor, e.g. `clip_grad_norm_`'s) is NaN or inf, decided on
    the device without a host sync: a fused AdamW reads ``found_inf`` and then leaves the parameters, its
    moments and its step count as they were (the mechanism `torch.amp.GradScaler` uses). Returns the
    0-d float32 skip flag (1.0: skipped). Raises ValueError for an optimizer that is not fused, which
    would apply the non-finite step."""
    if not all(g.get("fused") for g in opt.param_groups):
        raise ValueError("step_if_finite needs a fused optimizer (torch.optim.AdamW(..., fused=True))")
    found = (~torch.isfinite(grad_norm.detach())).float()
    opt.found_inf = found
    opt.step()
    return found


def grad_norms(params) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-parameter gradient L2 norms and their total, on the gradients' device without a host sync.

    ``params``: a list of parameters (a missing ``.grad`` counts as norm 0). Returns ``(per, total)``:
    ``per`` (P,) float32, one norm per parameter in the order given; ``total`` 0-d float32, the L2 norm
    of ``per``, the number `torch.nn.utils.clip_grad_norm_` (norm type 2) computes and returns, from
    the same ``torch._foreach_norm`` it calls. A non-finite gradient entry makes its own parameter's norm
    non-finite (and the total), so ``~per.isfinite()`` names the parameters a skipped step came from."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        raise ValueError("grad_norms: no parameter has a gradient")
    norms = iter(torch._foreach_norm(grads, 2.0))
    zero = grads[0].new_zeros((), dtype=torch.float32)
    per = torch.stack([next(norms).float() if p.grad is not None else zero for p in params])
    return per, torch.linalg.vector_norm(per, 2.0)


def nonfinite_summary(counts: dict[str, int], top: int = 4) -> str:
    """One log line on ``counts`` (parameter name -> steps its gradient was non-finite, in the model's
    parameter order): how many parameters, and the ``top`` last in that order with the largest count.
    A non-finite gradient spreads backwards from where it arose, and registration order is only roughly
    forward order (in `WanAttention`, ``norm_q`` is registered after ``to_k`` / ``to_v`` / ``to_out`` but
    runs before them), so read the full set of names (the report's ``nonfinite_grads``) for the source."""
    hit = [(k, n) for k, n in counts.items() if n]
    if not hit:
        return "none"
    order = sorted(range(len(hit)), key=lambda i: (-hit[i][1], -i))[:top]
    return f"{len(hit)} parameters, e.g. " + ", ".join(f"{hit[i][0]} {hit[i][1]}" for i in order)


def batch_settings(args) -> dict:
    """`flow_matching_batch`'s keyword arguments from ``train dit``'s command-line arguments."""
    return dict(seed=args.seed, batch=args.batch, image_every=args.image_every,
                image_batch_mult=args.image_batch_mult, cfg_drop=args.cfg_drop, t_mean=args.t_mean, t_std=args.t_std)


def flow_matching_batch(step: int, lat: torch.Tensor, emb: torch.Tensor, empty: torch.Tensor, *, seed: int = 1,
                        batch: int = 128, image_every: int = 4, image_batch_mult: int = 4, cfg_drop: float = 0.1,
                        t_mean: float = 0.0, t_std: float = 1.0) -> dict:
    """The DiT trainer's batch of training step ``step`` (the recipe in this module's docstring), drawn on
    ``lat``'s device from its own generator (seed ``seed * 1_000_003 + step``): any step's batch can be
    recomputed alone, e.g. to re-run a step whose gradient was not finite.

    ``lat``: (N, C, F, h, w) normalised latent pool (`build_pool`, any float dtype); ``emb``: (N, L, D) its
    caption embeddings; ``empty``: (1, L, D) the empty caption's. Every ``image_every``-th step (the last of
    each group; 0: never) is an image step: latent frame 0 alone and ``batch * image_batch_mult`` samples.
    Returns a dict of float32 tensors on ``lat``'s device and ``image_step`` (bool): ``idx`` (B,) int64 pool
    rows; ``x0`` (B, C, F or 1, h, w); ``cond`` (B, L, D), a caption replaced by ``empty`` with probability
    ``cfg_drop`` (classifier-free guidance); ``t`` (B,) in (0, 1), sigmoid of N(t_mean, t_std) (logit-normal);
    ``noise`` like ``x0``; ``xt`` = (1 - t) x0 + t noise; ``target`` = noise - x0 (the velocity)."""
    dev = lat.device
    g = torch.Generator(device=dev).manual_seed(seed * 1_000_003 + step)
    image_step = image_every > 0 and step % image_every == image_every - 1
    B = batch * (image_batch_mult if image_step else 1)
    idx = torch.randint(0, lat.shape[0], (B,), generator=g, device=dev)
    x0 = lat[idx].float()
    if image_step:
        x0 = x0[:, :, :1]
    drop = torch.rand(B, generator=g, device=dev) < cfg_drop
    cond = torch.where(drop[:, None, None], empty.expand(B, -1, -1), emb[idx]).float()
    t = torch.sigmoid(torch.randn(B, generator=g, device=dev) * t_std + t_mean)
    noise = torch.randn(x0.shape, generator=g, device=dev)
    tt = t.view(B, 1, 1, 1, 1)
    return dict(image_step=image_step, idx=idx, x0=x0, cond=cond, t=t, noise=noise, xt=(1 - tt) * x0 + tt * noise,
                target=noise - x0)


def train_dit(args):
    dev = _device()
    torch.backends.cuda.matmul.allow_tf32 = True
    if not args.cudnn_attention:  # the default; this process only: SDPA picks flash / memory-efficient
        torch.backends.cuda.enable_cudnn_sdp(False)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    ckpt = Path(args.ckpt) if args.ckpt else out / args.variant / "ckpt"
    tok, enc = load_text_encoder(args.text_encoder_dir, device=dev, dtype=torch.float32)
    vae = load_vae(out, args.variant, dev)
    pool_seed = args.seed * 10_000_000 + 5_000_000  # same clips for both variants
    lat, emb, caps = build_pool(vae, args.variant, tok, enc, args.pool, pool_seed, dev,
                                chunk=args.encode_chunk, max_seconds=args.pool_seconds)
    N = lat.shape[0]
    ev_lat, ev_emb, ev_caps = build_pool(vae, args.variant, tok, enc, args.eval_clips, EVAL_SEED0, dev)
    empty = encode(tok, enc, [""], MAX_SEQ_LEN).to(torch.bfloat16)  # (1,32,384)

    model = make_dit().to(dev).train()
    nparam = sum(p.numel() for p in model.parameters())
    ema = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=args.wd, eps=1e-8,
                            fused=True)  # fused: a non-finite step is skipped on the device (step_if_finite)
    state = dict(step=0, elapsed_s=0.0, history=[], ma_history=[], variant=args.variant, args=vars(args))
    fresh_opt = True
    if (ckpt / "state.json").exists() and not args.fresh:
        state = load_ckpt(ckpt, model, ema, opt, dev)
        fresh_opt = not (ckpt / "optim.safetensors").exists()
        log(f"resumed {ckpt} at step {state['step']} ({state['elapsed_s'] / 60:.1f} min trained)")
    elif args.init and not args.fresh:
        state = init_dit_from_export(Path(args.init) / args.variant, model, ema, state)
        log(f"started from exported {args.init}/{args.variant} at step {state['step']}, new AdamW")
    warm0 = state["step"] if fresh_opt else 0  # every new AdamW warms up
    fwd = model
    if args.compile and dev.type == "cuda":
        try:
            fwd = torch.compile(model, dynamic=False)
        except Exception as e:  # pragma: no cover
            log("torch.compile failed, eager:", repr(e)[:200])
            fwd = model
    amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    t_start = time.time()
    last_ckpt = time.time()
    loss_acc, n_acc = 0.0, 0
    skipped = torch.zeros((), device=dev)  # non-finite steps skipped in this chunk (read at log steps only)
    params = dict(model.named_parameters())
    plist = list(params.values())
    bad = torch.zeros(len(plist), device=dev)  # per parameter: steps of this chunk whose gradient was non-finite
    bad_before = dict(state.get("nonfinite_grads", {}))  # the same, over earlier chunks (name -> steps)

    def nonfinite_so_far():
        return {k: bad_before.get(k, 0) + int(n) for k, n in zip(params, bad.tolist())}
    batch_kw = batch_settings(args)
    bufs = dict(model.named_buffers())
    ema_keys = [k for k in ema if k in params or k in bufs]
    ema_list = [ema[k] for k in ema_keys]
    src_list = [params[k] if k in params else bufs[k] for k in ema_keys]

    def one_step(step):
        nonlocal fwd
        b = flow_matching_batch(step, lat, emb, empty, **batch_kw)
        with torch.autocast(**amp):
            pred = fwd(b["xt"], b["t"] * 1000.0, b["cond"], return_dict=False)[0]
        loss = F.mse_loss(pred.float(), b["target"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        per, gn = grad_norms(plist)
        bad.add_(~torch.isfinite(per))
        torch.nn.utils.clip_grads_with_norm_(plist, args.clip, gn)
        lr = args.lr * min(1.0, (step - warm0 + 1) / args.warmup)
        for gr in opt.param_groups:
            gr["lr"] = lr
        skipped.add_(step_if_finite(opt, gn))  # a NaN / inf gradient leaves weights and AdamW state alone
        with torch.no_grad():
            d = min(args.ema, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_list, [x.detach() for x in src_list], 1 - d)
        return loss.detach(), gn

    def snapshot_ma(tag):
        model.eval()
        st = ma_stats(model, ev_lat[:args.ma_clips], ev_emb[:args.ma_clips], seed=123)
        model.train()
        rec = dict(step=state["step"], tag=tag, minutes=round(state["elapsed_s"] / 60, 2), stats=st)
        state["ma_history"].append(compact_ma(rec))
        log(f"MA step {state['step']}: {summarize_ma(st)}")
        return st

    if state["step"] == 0:
        snapshot_ma("init")
    budget = args.minutes * 60
    chunk_start = time.time()  # the wall-clock budget of this chunk counts from here, never reset
    import signal

    def _term(signum, frame):  # SIGTERM/SIGINT -> leave the loop through `finally` (checkpoint saved)
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    log(f"dit[{args.variant}] {nparam / 1e6:.2f} M params, pool {N}, batch {args.batch}, budget {args.minutes} min")
    step = state["step"]
    try:
        while True:
            now = time.time()
            if now - chunk_start >= budget or (args.steps is not None and step >= args.steps):
                break
            try:
                loss, gn = one_step(step)
            except Exception as ex:
                if fwd is not model:
                    log("compiled step failed, falling back to eager:", repr(ex)[:300])
                    fwd = model
                    loss, gn = one_step(step)
                else:
                    raise
            step += 1
            state["step"] = step
            if step % args.log_every == 0:
                el = state["elapsed_s"] + time.time() - t_start
                state["history"].append(dict(step=step, loss=float(loss), grad_norm=float(gn), min=round(el / 60, 3),
                                             skipped=int(skipped)))
                log(f"step {step} loss {float(loss):.4f} gn {float(gn):.2f} {step / max(el, 1e-9):.1f} st/s(avg)"
                    f" skipped {int(skipped)}" + (f"; non-finite gradients: {nonfinite_summary(nonfinite_so_far())}"
                                                  if int(skipped) else ""))
            if args.ma_every and step % args.ma_every == 0:
                state["elapsed_s"] += time.time() - t_start
                t_start = time.time()
                snapshot_ma("train")
            if time.time() - last_ckpt > args.ckpt_minutes * 60:
                state["elapsed_s"] += time.time() - t_start
                t_start = time.time()
                state["nonfinite_grads"] = {k: n for k, n in nonfinite_so_far().items() if n}
                save_ckpt(ckpt, model, ema, opt, state)
                last_ckpt = time.time()
                log(f"checkpoint {ckpt} step {step}")
    finally:
        state["elapsed_s"] += time.time() - t_start
        t_start = time.time()
        state["nonfinite_grads"] = {k: n for k, n in nonfinite_so_far().items() if n}
        save_ckpt(ckpt, model, ema, opt, state)
        log(f"checkpoint {ckpt} step {step} ({state['elapsed_s'] / 60:.1f} min)")

    # ---- final: export EMA weights, full MA statistics on the EMA model, sample quality
    tdir = out / args.variant / "transformer"
    shipped = export_transformer(ema, tdir)
    ev_model = shipped.to(dev, torch.float32).eval()
    final = ma_stats(ev_model, ev_lat, ev_emb, levels=(0.99, 0.9, 0.7, 0.5, 0.3, 0.1), seed=7)
    log(f"final MA (EMA weights): {summarize_ma(final)}")
    raw_final = ma_stats(model.eval(), ev_lat, ev_emb, levels=(0.9, 0.5, 0.1), seed=7)
    report = dict(variant=args.variant, params=nparam, steps=step, trained_minutes=round(state["elapsed_s"] / 60, 2),
                  batch=args.batch, image_every=args.image_every, image_batch_mult=args.image_batch_mult,
                  cfg_drop=args.cfg_drop, lr=args.lr, pool_clips=N, eval_clips=len(ev_caps),
                  device=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
                  position_classes=POSITION_CLASSES_NOTE,
                  ma_final_ema=final, ma_final_raw=raw_final, ma_history=state["ma_history"],
                  loss_history=state["history"],
                  nonfinite_grads=state["nonfinite_grads"])  # parameter -> skipped steps it was non-finite in
    if args.sample_eval:
        try:
            kw = dict(num_inference_steps=args.sample_steps) if args.sample_steps else {}
            report["samples"] = sample_eval(out, args.variant, dev, args.text_encoder_dir,
                                            prompts=world.EVAL_PROMPTS[:args.sample_prompts], **kw)
            log(f"samples: {report['samples']['summary']}")
        except Exception as ex:  # sampling is a bonus here; CPU eval can redo it
            log("sample eval failed:", repr(ex)[:300])
    (out / args.variant / "train_report.json").write_text(json.dumps(report, indent=1))
    log(f"wrote {out / args.variant}")


def gates_cli(args):
    from . import load_pipeline
    from .gates import run_gates

    pipe = load_pipeline(args.variant, device=_device(), dtype=torch.float32, root=args.out, text_dir=args.text_encoder_dir)
    res = run_gates(pipe, args.variant, args.samples, args.ma_prompts, pairs=args.pairs, log=log)
    path = Path(args.json or Path(args.out) / args.variant / "gates.json")
    path.write_text(json.dumps(res, indent=1))
    s, c, m = res["samples"]["summary"], res["conditioning"], res["massive"]["mid"]
    verdict = lambda ok: "met" if ok else "not met"  # noqa: E731
    log(f"gate 2, samples (n {s['n']}): objects {s['ok']:.1%} (>= 80 %), motion {s['motion_ok']:.1%} (>= 70 %): "
        f"{verdict(s['pass'])}; the real clips of these prompts score {s['real']['ok']:.1%} / {s['real']['motion_ok']:.1%}")
    log("motion right by direction, generated (real): " + ", ".join(
        f"{d} {v:.0%} ({s['real']['motion_by_direction'].get(d, float('nan')):.0%})"
        for d, v in s["motion_by_direction"].items()))
    log(f"gate 2, conditioning ({c['pairs']} pairs, t = {c['t']}): median {c['median']:.1%} (>= 10 %): "
        f"{verdict(c['pass'])}")
    traj = ", ".join(f"t={t}: {v['prompts']:.1%}" for t, v in c["trajectory"].items())
    log(f"conditioning along the pipeline's denoising (not a gate), two captions: {traj}")
    log(f"gate 3, mid block {m['block']} at the first step: peak/median {m['peak_over_median']:.0f}x (aim 100x), "
        f"peak/mean {m['peak_over_mean']:.0f}x (aim 59x); MA channels {res['massive']['ma_channels']}")
    log(f"wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    """The CLI's parser (`python -m stas.house.train {vae,decoder,dit,gates,report}`)."""
    ap = argparse.ArgumentParser(prog="python -m stas.house.train")
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("vae")
    v.add_argument("--variant", choices=VARIANTS, default="causal")
    v.add_argument("--minutes", type=float, default=2.0)
    v.add_argument("--steps", type=int, default=None)
    v.add_argument("--batch", type=int, default=32)
    v.add_argument("--frames", type=int, default=9, help="frames per training clip (1 + 4k)")
    v.add_argument("--lr", type=float, default=1e-3)
    v.add_argument("--kl", type=float, default=1e-4)
    v.add_argument("--seed", type=int, default=1)
    v.add_argument("--eval-n", type=int, default=64)
    v.add_argument("--out", default="data/house")
    f = sub.add_parser("decoder", help="fine-tune the VAE decoder with the encoder frozen")
    f.add_argument("--variant", choices=VARIANTS, default="causal")
    f.add_argument("--minutes", type=float, default=10.0)
    f.add_argument("--steps", type=int, default=None)
    f.add_argument("--batch", type=int, default=2)
    f.add_argument("--frames", type=int, default=9)
    f.add_argument("--crop", type=int, default=8, help="latent crop side (0: full frame)")
    f.add_argument("--lr", type=float, default=1e-3)
    f.add_argument("--seed", type=int, default=2)
    f.add_argument("--out", default="data/house")
    d = sub.add_parser("dit")
    d.add_argument("--variant", choices=VARIANTS, default="causal")
    d.add_argument("--minutes", type=float, default=9.0, help="wall-clock budget of this chunk")
    d.add_argument("--steps", type=int, default=None, help="stop at this total step count")
    d.add_argument("--batch", type=int, default=128)
    d.add_argument("--image-every", type=int, default=4, help="every k-th step is an image step (0: never)")
    d.add_argument("--image-batch-mult", type=int, default=4)
    d.add_argument("--cfg-drop", type=float, default=0.1)
    d.add_argument("--lr", type=float, default=3e-4)
    d.add_argument("--wd", type=float, default=0.0)
    d.add_argument("--clip", type=float, default=1.0)
    d.add_argument("--warmup", type=int, default=300)
    d.add_argument("--ema", type=float, default=0.999)
    d.add_argument("--t-mean", type=float, default=0.0)
    d.add_argument("--t-std", type=float, default=1.0)
    d.add_argument("--pool", type=int, default=32768)
    d.add_argument("--pool-seconds", type=float, default=None)
    d.add_argument("--encode-chunk", type=int, default=64)
    d.add_argument("--eval-clips", type=int, default=16)
    d.add_argument("--ma-clips", type=int, default=8)
    d.add_argument("--ma-every", type=int, default=500)
    d.add_argument("--log-every", type=int, default=50)
    d.add_argument("--ckpt", default=None)
    d.add_argument("--ckpt-minutes", type=float, default=3.0)
    d.add_argument("--fresh", action="store_true")
    d.add_argument("--init", default=None, help="when --ckpt holds no checkpoint: start from the DiT exported "
                   "under this folder (<init>/<variant>/transformer + train_report.json) and continue its curves")
    d.add_argument("--cudnn-attention", action="store_true",
                   help="let SDPA use its cuDNN backend (off by default: its backward gave the uniform DiT's "
                   "non-finite query gradients, 1-4 %% of steps skipped; without it 0 of 24 614 steps, 24.8 against 25.1 "
                   "steps/s; `python -m stas.house.nonfinite`, data/house/dit_continuation_6.json)")
    d.add_argument("--no-cudnn-attention", dest="cudnn_attention", action="store_false",
                   help="the default (kept so that earlier runs' command lines still parse)")
    d.add_argument("--no-compile", dest="compile", action="store_false")
    d.add_argument("--no-sample-eval", dest="sample_eval", action="store_false")
    d.add_argument("--text-encoder-dir", default=None)
    d.add_argument("--sample-prompts", type=int, default=16)
    d.add_argument("--sample-steps", type=int, default=None)
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--out", default="data/house")
    g = sub.add_parser("gates", help="issue 8's DiT gates 2-4 on exported weights (stas.house.gates)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g.add_argument("--variant", choices=VARIANTS, default="causal")
    g.add_argument("--out", default="data/house", help="folder holding <variant>/{transformer,vae} (read)")
    g.add_argument("--text-encoder-dir", default=None, help="MiniLM files (default: the installed package)")
    g.add_argument("--samples", type=int, default=64, help="held-out prompts, one clip each")
    g.add_argument("--pairs", type=int, default=16, help="caption pairs of the conditioning gate")
    g.add_argument("--ma-prompts", type=int, default=8, help="held-out prompts recorded for gates 3-4")
    g.add_argument("--json", default=None, help="where to write the results (default: <out>/<variant>/gates.json, "
                   "replacing the one there)")
    r = sub.add_parser("report", help="train_curves.png from the reports under --out; --samples also samples.png",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("--out", default="data/house")
    r.add_argument("--samples", action="store_true", help="also generate samples.png (both variants, CPU, ~30 s)")
    r.add_argument("--text-encoder-dir", default=None, help="MiniLM files (default: the installed package)")
    return ap


def main(argv=None):
    a = build_parser().parse_args(argv)
    if a.cmd == "vae":
        train_vae(a)
    elif a.cmd == "decoder":
        finetune_decoder(a)
    elif a.cmd == "dit":
        train_dit(a)
    elif a.cmd == "gates":
        gates_cli(a)
    else:
        print(make_figure(a.out))
        if a.samples:
            print(samples_figure(a.out, text_dir=a.text_encoder_dir))


if __name__ == "__main__":
    main()
