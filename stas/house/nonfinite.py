"""Where does a house DiT's non-finite gradient arise? ``python -m stas.house.nonfinite`` (CUDA).

The uniform DiT's trainer skips ~1-4 % of its steps because the gradient norm is NaN / inf, always in
block 0's self-attention query path (data/house/README.md). This re-runs the trainer's batches
(`flow_matching_batch`, the trainer's seed and settings) without an optimizer step, on fixed weights,
under the trainer's bf16 autocast: eagerly, or with ``--compile`` through torch.compile as the trainer
does (hooks then only on the re-runs below). Hooks on block 0's ``attn1.norm_q``
and ``norm_k`` (RMSNorm over the inner dimension) record their forward input (abs max, smallest RMS over
tokens) and whether the gradient arriving at their output and at their input is finite. The first
``--recompute`` non-finite batches are then re-run with each SDPA backend forced and once in float32
without autocast: a kernel's query gradient, or the numbers themselves.

    python -m stas.house.nonfinite --variant uniform --weights data/house/uniform/transformer \\
        --vae-root data/house --json runs/nonfinite_uniform.json

``--weights``: a save_pretrained transformer folder or a trainer checkpoint folder (``model.safetensors``).
Writes ``--json`` (per step: image step, t range, loss, gradient norm, non-finite parameters, hook records;
per recomputed step: each backend's outcome) and prints a summary.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .models import VARIANTS, make_dit
from .text import MAX_SEQ_LEN, encode, load_text_encoder
from .train import build_pool, flow_matching_batch, grad_norms, load_export_weights, load_vae, log


def _num(x):
    x = float(x.detach()) if torch.is_tensor(x) else float(x)
    return round(x, 6) if math.isfinite(x) else str(x)


class BlockZeroProbe:
    """Context manager: forward hooks on ``model.blocks[0].attn1.norm_q`` / ``norm_k`` that also hook the
    gradients of their input and output, removed on exit (any exit); records stay device tensors until
    `read` (after the backward)."""

    def __init__(self, model):
        self.rec: dict[str, torch.Tensor] = {}
        attn = model.blocks[0].attn1
        self.handles = [attn.norm_q.register_forward_hook(self._fwd("norm_q")),
                        attn.norm_k.register_forward_hook(self._fwd("norm_k"))]

    def _grad(self, key):
        def hook(g):
            bad = ~torch.isfinite(g.detach())
            self.rec[key + ".finite"] = ~bad.any()
            self.rec[key + ".nonfinite"] = bad.sum()
            self.rec[key + ".bad_rows"] = bad.flatten(1).any(1)  # per sample
        return hook

    def _fwd(self, tag):
        def hook(module, inputs, out):
            x = inputs[0].detach().float()
            self.rec[tag + ".in_absmax"] = x.abs().amax()
            self.rec[tag + ".in_min_rms"] = x.pow(2).mean(-1).sqrt().amin()
            for where, ten in (("grad_out", out), ("grad_in", inputs[0])):
                if ten.requires_grad:
                    ten.register_hook(self._grad(f"{tag}.{where}"))
        return hook

    def read(self, t):
        out = {}
        for k, v in sorted(self.rec.items()):
            if k.endswith(".bad_rows"):
                out[k[:-9] + ".t_of_bad_samples"] = [round(x, 4) for x in t[v].tolist()[:8]]
            elif v.dtype == torch.bool:
                out[k] = bool(v)
            else:
                out[k] = int(v) if not v.is_floating_point() else _num(v)
        self.rec.clear()
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def backward_once(model, plist, names, b, probe=None, backend=None, autocast=True, fwd=None) -> dict:
    """One eager forward + backward of batch ``b`` (`flow_matching_batch`), optionally with one SDPA backend
    forced (``torch.nn.attention.SDPBackend``) and with or without bf16 autocast; gradients cleared after."""
    from torch.nn.attention import sdpa_kernel

    model.zero_grad(set_to_none=True)
    try:
        with sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                pred = (model if fwd is None else fwd)(b["xt"], b["t"] * 1000.0, b["cond"], return_dict=False)[0]
            loss = F.mse_loss(pred.float(), b["target"])
            loss.backward()
        per, total = grad_norms(plist)
        return dict(loss=_num(loss), grad_norm=_num(total), finite=bool(torch.isfinite(total)),
                    nonfinite_params=[names[i] for i in (~torch.isfinite(per)).nonzero().flatten().tolist()],
                    **(probe.read(b["t"]) if probe else {}))
    finally:
        model.zero_grad(set_to_none=True)


def main(argv=None):
    from torch.nn.attention import SDPBackend

    ap = argparse.ArgumentParser(prog="python -m stas.house.nonfinite", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--variant", choices=VARIANTS, default="uniform")
    ap.add_argument("--weights", required=True, help="transformer folder (save_pretrained) or checkpoint folder")
    ap.add_argument("--vae-root", required=True, help="folder holding <variant>/vae (the latent pool's encoder)")
    ap.add_argument("--text-encoder-dir", default=None)
    ap.add_argument("--json", required=True)
    ap.add_argument("--step0", type=int, default=72751, help="first training step whose batch is re-run")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--recompute", type=int, default=6, help="non-finite batches re-run per backend")
    ap.add_argument("--pool", type=int, default=32768, help="as train dit (the pool's first clips are the same)")
    ap.add_argument("--pool-seconds", type=float, default=60.0)
    ap.add_argument("--seconds", type=float, default=240.0, help="stop starting new passes after this")
    ap.add_argument("--seed", type=int, default=1, help="train dit's --seed")
    ap.add_argument("--compile", action="store_true", help="the steps through torch.compile, as train dit (no hooks; "
                    "the recomputed non-finite batches eager, hooked)")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("python -m stas.house.nonfinite needs CUDA (the skipped steps come from the GPU trainer)")
    t0, dev = time.time(), torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True  # as train dit
    tok, enc = load_text_encoder(a.text_encoder_dir, device=dev, dtype=torch.float32)
    vae = load_vae(a.vae_root, a.variant, dev)
    lat, emb, _ = build_pool(vae, a.variant, tok, enc, a.pool, a.seed * 10_000_000 + 5_000_000, dev, chunk=64,
                             max_seconds=a.pool_seconds)
    empty = encode(tok, enc, [""], MAX_SEQ_LEN).to(torch.bfloat16)
    del vae, enc
    model = make_dit().to(dev).train()
    w = Path(a.weights)
    if (w / "model.safetensors").exists():  # a trainer checkpoint: the raw float32 weights
        from safetensors.torch import load_file
        model.load_state_dict(load_file(str(w / "model.safetensors"), device=str(dev)))
    else:  # an export (bf16)
        model.load_state_dict({k: v.float() for k, v in load_export_weights(w, dev).items()})
    names, plist = zip(*model.named_parameters())
    fwd = torch.compile(model, dynamic=False) if a.compile else None  # as train dit, hooks only after
    steps, hits = [], []
    with contextlib.nullcontext() if a.compile else BlockZeroProbe(model) as probe:
        for s in range(a.step0, a.step0 + a.steps):
            if time.time() - t0 > a.seconds:
                break
            b = flow_matching_batch(s, lat, emb, empty, seed=a.seed)
            r = backward_once(model, list(plist), names, b, probe, fwd=fwd)
            steps.append(dict(step=s, image_step=b["image_step"], t_min=_num(b["t"].min()), t_max=_num(b["t"].max()), **r))
            if not r["finite"] and len(hits) < a.recompute:
                hits.append(s)
    with BlockZeroProbe(model) as probe:
        backends = [("eager", None, True), ("MATH", SDPBackend.MATH, True), ("FLASH_ATTENTION", SDPBackend.FLASH_ATTENTION, True),
                    ("EFFICIENT_ATTENTION", SDPBackend.EFFICIENT_ATTENTION, True),
                    ("CUDNN_ATTENTION", SDPBackend.CUDNN_ATTENTION, True), ("float32_no_autocast", None, False)]
        recomputed = []
        for s in hits:
            b, res = flow_matching_batch(s, lat, emb, empty, seed=a.seed), dict(step=s)
            for name, backend, autocast in backends:
                if time.time() - t0 > a.seconds + 120:
                    res[name] = "not run: out of time"
                    continue
                try:
                    r = backward_once(model, list(plist), names, b, probe, backend, autocast)
                    res[name] = {k: v for k, v in r.items() if k != "nonfinite_params"}
                    res[name]["n_nonfinite_params"] = len(r["nonfinite_params"])
                except RuntimeError as ex:  # e.g. a backend that does not support these shapes
                    res[name] = "error: " + repr(ex)[:200]
            recomputed.append(res)
    bad = [r for r in steps if not r["finite"]]
    summary = dict(steps=len(steps), nonfinite=len(bad), image_steps=sum(r["image_step"] for r in steps),
                   nonfinite_image_steps=sum(r["image_step"] for r in bad),
                   norm_q_grad_out_finite_when_nonfinite=sum(r.get("norm_q.grad_out.finite") is True for r in bad),
                   norm_q_grad_in_finite_when_nonfinite=sum(r.get("norm_q.grad_in.finite") is True for r in bad),
                   finite_when_recomputed={n: sum(isinstance(r[n], dict) and r[n]["finite"] for r in recomputed)
                                           for n, _, _ in backends} if recomputed else {})
    import diffusers
    out = dict(what=__doc__.split("\n")[0], args=vars(a), pool=int(lat.shape[0]), compiled=a.compile, optimizer_step=False,
               versions=dict(torch=torch.__version__, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                             diffusers=diffusers.__version__, device=torch.cuda.get_device_name()),
               summary=summary, recomputed=recomputed, steps=steps, seconds=round(time.time() - t0, 1))
    Path(a.json).write_text(json.dumps(out, indent=1))
    log(json.dumps(summary))
    for r in bad[:6]:
        log(f"step {r['step']} image={r['image_step']} t [{r['t_min']}, {r['t_max']}] loss {r['loss']}; norm_q grad "
            f"finite out/in {r.get('norm_q.grad_out.finite')}/{r.get('norm_q.grad_in.finite')}, "
            f"min input RMS {r.get('norm_q.in_min_rms')}; t of bad samples {r.get('norm_q.grad_in.t_of_bad_samples')}")
    log("wrote", a.json)


if __name__ == "__main__":
    main()
