"""A training-free peer of STAS: Enhance-A-Video-style temporal attention scaling.

Enhance-A-Video (Luo et al. 2025, arXiv 2502.07508; reference code NUS-HPC-AI-Lab/Enhance-A-Video,
``enhance_a_video/models/wan.py`` + ``enhance_score``) adds a parallel branch to each self-attention:

1. take the attention's query and key *after* the q/k norm and rotary embedding, per head;
2. regroup the video tokens by spatial position: for each (sample, spatial position s, head) the T
   tokens at s in the T latent token-frames form a T x T *temporal* attention map
   ``A = softmax(q_s k_s^T / sqrt(d_head))`` (softmax over those T keys only, in float32);
3. cross-frame intensity CFI = mean of the off-diagonal entries of A, i.e.
   ``(sum(A) - trace(A)) / (T (T - 1))``, averaged over every sample, position and head of the call
   (one scalar per attention call; Wan runs cond and uncond as separate calls, so one per branch);
4. ``scale = clamp(CFI * (T + temperature), min=1)`` and the attention output (after ``to_out``) is
   multiplied by ``scale``. The reference code calls the temperature ``enhance_weight`` and uses 1
   in its CogVideoX example. Note a uniform temporal map has CFI = 1/T, so CFI * T = 1: the rule
   only amplifies when attention spreads across frames more than uniformly *or* the temperature
   lifts it over 1, and it never attenuates (clamp at 1). ``temperature <= -T`` can never exceed 1:
   the output is then bit-identical to the stock model (a test checks it).

How it is hooked here (same `HookContext` mechanism as `stas.steer`): forward hooks on the chosen
blocks' ``attn1.norm_q`` / ``attn1.norm_k`` keep references to the normalised q and k the attention
computes anyway (no extra projection), and a forward hook on ``attn1`` (with kwargs, to get the
rotary embedding) computes the scale and returns ``output * scale``. Nothing else changes; the
hooks come off when the context exits, also on exceptions.

Cost per hooked attention call: the rotary rotation of q and k (2 B L D multiply-adds) plus the
temporal maps, ``B * S * H * T * T * d_head`` multiply-adds (= B L T D): on the house model
(L = 512 tokens, T = 8, D = 384) 1.6 MFLOP per call, under 0.1 % of the block; on Wan2.1-1.3B at
81x480x832 (L = 32 760, T = 21, D = 1536) about 1 GFLOP per call against ~ 400 GFLOP for the
block's attention. ``max_positions`` subsamples spatial positions (evenly strided) to cap it.

Only the Wan family (Wan2.1, Wan2.2, the house model) is supported: its self-attention sees the
video tokens alone, frame-major. ``.scales`` records the scale of every hooked call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .adapters import BRANCHES, UnsupportedModelError
from .tracking import HookContext


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on ``x`` (B, L, H, d): channel pairs (2i, 2i+1) rotated by the angle
    whose cos/sin sit at ``cos[..., 2i]`` / ``sin[..., 2i+1]`` ((1, L, 1, d) tensors from ``WanRotaryPosEmbed``)."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).flatten(-2).type_as(x)


def cross_frame_intensity(q: torch.Tensor, k: torch.Tensor, num_frames: int, heads: int,
                          rotary=None, max_positions: int | None = None) -> torch.Tensor:
    """Mean off-diagonal entry of the per-position temporal attention maps (a 0-dim float32 tensor).

    Args:
        q, k: (B, L, D) normalised query/key of a self-attention over L = T * S frame-major tokens.
        num_frames: T, token-frames in the sequence.
        heads: attention heads H (D = H * d_head).
        rotary: optional ``(cos, sin)`` as passed to Wan's attention; applied to q and k first.
        max_positions: use at most this many spatial positions (evenly strided); None = all S.
    """
    b, L, D = q.shape
    T = int(num_frames)
    if T < 2:
        raise ValueError(f"cross-frame intensity needs >= 2 token-frames, got {T}")
    if L % T:
        raise ValueError(f"sequence of {L} tokens is not {T} frames of equal size")
    S, d = L // T, D // heads
    q, k = q.unflatten(2, (heads, d)), k.unflatten(2, (heads, d))             # (B, L, H, d)
    if rotary is not None:
        q, k = rotate(q, *rotary), rotate(k, *rotary)
    q, k = q.reshape(b, T, S, heads, d), k.reshape(b, T, S, heads, d)
    if max_positions is not None and max_positions < S:
        idx = torch.linspace(0, S - 1, max_positions, device=q.device).round().long().unique()
        q, k = q[:, :, idx], k[:, :, idx]
    q, k = q.permute(0, 2, 3, 1, 4).float(), k.permute(0, 2, 3, 1, 4).float()  # (B, S', H, T, d)
    attn = ((q * d ** -0.5) @ k.transpose(-1, -2)).softmax(-1)                  # (B, S', H, T, T)
    off = attn.sum((-1, -2)) - attn.diagonal(dim1=-2, dim2=-1).sum(-1)          # (B, S', H)
    return (off / (T * (T - 1))).mean()


def enhance_scale(cfi: torch.Tensor, num_frames: int, temperature: float) -> torch.Tensor:
    """Enhance-A-Video's multiplier: ``clamp(cfi * (T + temperature), min=1)``."""
    return (cfi * (num_frames + temperature)).clamp(min=1.0)


@dataclass(frozen=True)
class EnhanceConfig:
    """Enhance-A-Video settings.

    Args:
        temperature: the "enhance temperature" / ``enhance_weight`` (reference default 1).
        blocks: block ids whose self-attention is scaled (None = every block, as the reference).
        steps: scale on denoising steps 0..steps-1 (None = all steps, as the reference).
        branches: CFG branches to scale (default both, as the reference).
        max_positions: spatial positions used for the intensity (None = all).
    """

    temperature: float = 1.0
    blocks: tuple | None = None
    steps: int | None = None
    branches: tuple = BRANCHES
    max_positions: int | None = None

    def __post_init__(self):
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature):
            raise ValueError(f"temperature must be a finite number, got {self.temperature!r}")
        if self.blocks is not None:
            b = (self.blocks,) if isinstance(self.blocks, int) else tuple(self.blocks)
            if not b or any(not isinstance(i, int) or i < 0 for i in b):
                raise ValueError(f"blocks must be non-negative ints, got {self.blocks!r}")
            object.__setattr__(self, "blocks", b)
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 0):
            raise ValueError(f"steps must be None or an int >= 0, got {self.steps!r}")
        br = (self.branches,) if isinstance(self.branches, str) else tuple(self.branches)
        if not br or any(x not in BRANCHES for x in br):
            raise ValueError(f"branches must be a non-empty subset of {BRANCHES}, got {self.branches!r}")
        object.__setattr__(self, "branches", br)
        if self.max_positions is not None and (not isinstance(self.max_positions, int) or self.max_positions < 1):
            raise ValueError(f"max_positions must be None or an int >= 1, got {self.max_positions!r}")


class enhance(HookContext):
    """Context manager: Enhance-A-Video temporal attention scaling on ``pipe`` (see module docstring).

    ``with stas.enhance(pipe, EnhanceConfig(temperature=1.0)): video = stas.generate(pipe, ...)``.
    ``.scales`` lists dicts (run, step, block, branch, cfi, scale) of every scaled attention call.
    """

    def __init__(self, pipe, config: EnhanceConfig | None = None, **kw):
        config = config if config is not None else EnhanceConfig(**kw)
        if not isinstance(config, EnhanceConfig):
            raise TypeError(f"config must be a stas.enhance_a_video.EnhanceConfig, got {type(config).__name__}")
        super().__init__(pipe)
        self.config = config
        self.active = False
        self.branch = None
        self.num_frames = None
        self._qk = {}
        self._raw = []  # (run, step, block, branch, cfi tensor, scale tensor): converted lazily

    def _validate(self):
        if self.adapter.family != "wan":
            raise UnsupportedModelError(f"enhance supports the Wan family only, not {self.adapter.family}")
        n = self.adapter.num_blocks
        bad = [b for b in (self.config.blocks or ()) if b >= n]
        if bad:
            raise ValueError(f"blocks {bad} out of range: the model has {n} blocks (0..{n - 1})")

    def _register(self):
        handles = []
        ids = self.config.blocks if self.config.blocks is not None else range(self.adapter.num_blocks)
        for t in self.adapter.transformers:
            blocks = self.adapter.blocks(t)
            for i in ids:
                attn = blocks[i].attn1
                handles.append(attn.norm_q.register_forward_hook(self._keep(i, "q")))
                handles.append(attn.norm_k.register_forward_hook(self._keep(i, "k")))
                handles.append(attn.register_forward_hook(self._scale(i, attn.heads), with_kwargs=True))
        return handles

    def on_call(self, tracker):
        names = [n for n, _ in tracker.branches if n in self.config.branches]
        steps = self.config.steps
        self.active = bool(names) and (steps is None or tracker.step < steps)
        self.branch = names[0] if names else None
        self.num_frames = tracker.layout.frames
        self.run, self.step = tracker.run, tracker.step

    def _keep(self, block, which):
        def hook(module, args, output):
            if self.active:
                self._qk[(block, which)] = output
        return hook

    def _scale(self, block, heads):
        def hook(module, args, kwargs, output):
            if not self.active:
                return None
            q, k = self._qk.pop((block, "q"), None), self._qk.pop((block, "k"), None)
            if q is None or k is None:
                raise RuntimeError("enhance: attn1 ran without its norm_q/norm_k (unsupported attention variant)")
            rotary = kwargs.get("rotary_emb", args[3] if len(args) > 3 else None)
            with torch.no_grad():
                cfi = cross_frame_intensity(q, k, self.num_frames, heads, rotary, self.config.max_positions)
                scale = enhance_scale(cfi, self.num_frames, self.config.temperature)
            self._raw.append((self.run, self.step, block, self.branch, cfi, scale))
            return output * scale.to(output.dtype)
        return hook

    @property
    def scales(self) -> list[dict]:
        return [dict(run=r, step=s, block=b, branch=br, cfi=float(c), scale=float(x))
                for r, s, b, br, c, x in self._raw]

    def _close(self):
        self._qk.clear()
        super()._close()
