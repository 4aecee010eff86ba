"""Token layout of a video DiT: token index <-> (latent frame, row, col), and position classes.

A leaf module: it knows nothing about models. An adapter builds a `TokenLayout` from the latent
shape a transformer is called with and its patch size.

Conventions (Wan2.1, Wan2.2, CogVideoX all follow them):

* A causal video VAE with temporal factor ``r`` (4 for all three families) encodes pixel frame 0
  alone and each following group of ``r`` pixel frames into one latent frame, so ``F`` pixel frames
  give ``1 + (F - 1) // r`` latent frames and ``F - 1`` must be divisible by ``r``.
* Patchify with patch ``(p_t, p_h, p_w)`` and flatten frame-major: token ``i`` sits at token-frame
  ``i // (h * w)``, row ``(i // w) % h``, col ``i % w``, where ``h, w`` are the latent height and
  width divided by the patch, and a token-frame covers ``p_t`` latent frames (``p_t = 1`` for
  Wan and CogVideoX 1.0).

Position classes (the paper's hierarchy):

* ``first_frame``: every token of token-frame 0 (the independently encoded first frame).
* ``boundary``: the first and last ``boundary_width`` tokens, in sequence order, of every later
  token-frame's span (the "head and tail of each temporal chunk"). The paper does not give the
  width; notebook 03 estimates it from data. ``unit="rows"`` counts whole token rows instead.
* ``interior``: all other tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

POSITION_CLASSES = ("first_frame", "boundary", "interior")


def latent_frames_for(num_frames: int, temporal_factor: int = 4) -> int:
    """Number of latent frames a causal VAE makes of ``num_frames`` pixel frames (1 + (F-1)/r).

    Raises ``ValueError`` when ``num_frames - 1`` is not a multiple of ``temporal_factor``
    (diffusers' Wan pipeline would silently round such a count; we refuse it).
    """
    if not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    if (num_frames - 1) % temporal_factor:
        lo = (num_frames - 1) // temporal_factor * temporal_factor + 1
        raise ValueError(
            f"num_frames={num_frames} cannot be encoded by a causal VAE with temporal factor "
            f"{temporal_factor}: it needs 1 + {temporal_factor}k frames (e.g. {lo} or {lo + temporal_factor})"
        )
    return 1 + (num_frames - 1) // temporal_factor


def pixel_frames_of(latent_frame: int, temporal_factor: int = 4) -> range:
    """Pixel frames encoded into ``latent_frame``: ``range(0, 1)`` for 0, else ``4k-3 .. 4k``."""
    if latent_frame < 0:
        raise ValueError(f"latent_frame must be >= 0, got {latent_frame}")
    if latent_frame == 0:
        return range(0, 1)
    return range(temporal_factor * (latent_frame - 1) + 1, temporal_factor * latent_frame + 1)


def latent_frame_of(pixel_frame: int, temporal_factor: int = 4) -> int:
    """Latent frame that encodes ``pixel_frame`` (0 -> 0; 1..4 -> 1; 5..8 -> 2; ...)."""
    if pixel_frame < 0:
        raise ValueError(f"pixel_frame must be >= 0, got {pixel_frame}")
    return 0 if pixel_frame == 0 else (pixel_frame - 1) // temporal_factor + 1


def crosses_latent_frames(num_frames: int, temporal_factor: int = 4) -> torch.Tensor:
    """(num_frames - 1,) bool: whether pixel transition i -> i + 1 crosses from one latent frame to
    the next (a chunk seam: 0 -> 1, 4 -> 5, ... for r = 4; every transition for r = 1)."""
    lat = torch.tensor([latent_frame_of(f, temporal_factor) for f in range(num_frames)])
    return lat[1:] != lat[:-1]


@dataclass(frozen=True)
class TokenLayout:
    """Where each video token of a transformer call sits.

    Args:
        latent_frames: latent frames the transformer sees (after the VAE, before patchify).
        latent_height, latent_width: latent grid size (after the VAE, before patchify).
        patch_size: the transformer's ``(p_t, p_h, p_w)``.
        temporal_factor: the VAE's temporal compression ``r`` (pixel frames per latent frame).
        spatial_factor: the VAE's spatial compression (pixels per latent cell), for pixel maps.
    """

    latent_frames: int
    latent_height: int
    latent_width: int
    patch_size: tuple[int, int, int] = (1, 2, 2)
    temporal_factor: int = 4
    spatial_factor: int = 8

    def __post_init__(self):
        p_t, p_h, p_w = self.patch_size
        for name, n, p in (("latent_frames", self.latent_frames, p_t),
                           ("latent_height", self.latent_height, p_h),
                           ("latent_width", self.latent_width, p_w)):
            if n < 1 or n % p:
                raise ValueError(f"{name}={n} must be a positive multiple of its patch size {p}")

    # ---- constructors --------------------------------------------------------------------
    @classmethod
    def from_video(cls, num_frames: int, height: int, width: int, patch_size=(1, 2, 2),
                   temporal_factor: int = 4, spatial_factor: int = 8) -> "TokenLayout":
        """Layout for a pixel-space request (frames, height, width), as a pipeline would make it."""
        if height % spatial_factor or width % spatial_factor:
            raise ValueError(f"height and width must be multiples of {spatial_factor}, got {height}x{width}")
        return cls(latent_frames_for(num_frames, temporal_factor), height // spatial_factor,
                   width // spatial_factor, tuple(patch_size), temporal_factor, spatial_factor)

    # ---- sizes ---------------------------------------------------------------------------
    @property
    def frames(self) -> int:
        """Token-frames (latent frames / p_t)."""
        return self.latent_frames // self.patch_size[0]

    @property
    def height(self) -> int:
        """Token rows per token-frame."""
        return self.latent_height // self.patch_size[1]

    @property
    def width(self) -> int:
        """Token columns per token-frame."""
        return self.latent_width // self.patch_size[2]

    @property
    def tokens_per_frame(self) -> int:
        return self.height * self.width

    @property
    def num_tokens(self) -> int:
        return self.frames * self.tokens_per_frame

    @property
    def num_pixel_frames(self) -> int:
        return 1 + (self.latent_frames - 1) * self.temporal_factor

    # ---- token index <-> coordinates -----------------------------------------------------
    def coords(self) -> torch.Tensor:
        """(num_tokens, 3) long tensor of (token-frame, row, col) for every token, in sequence order."""
        i = torch.arange(self.num_tokens)
        return torch.stack([i // self.tokens_per_frame, (i // self.width) % self.height, i % self.width], 1)

    def index(self, frame: int, row: int, col: int) -> int:
        """Sequence index of the token at (token-frame, row, col)."""
        if not (0 <= frame < self.frames and 0 <= row < self.height and 0 <= col < self.width):
            raise IndexError(f"({frame}, {row}, {col}) outside grid {self.frames}x{self.height}x{self.width}")
        return (frame * self.height + row) * self.width + col

    def frame_span(self, frame: int) -> range:
        """Sequence indices of token-frame ``frame``."""
        return range(frame * self.tokens_per_frame, (frame + 1) * self.tokens_per_frame)

    def to_grid(self, values: torch.Tensor) -> torch.Tensor:
        """Reshape per-token values (..., num_tokens) to (..., frames, height, width)."""
        if values.shape[-1] != self.num_tokens:
            raise ValueError(f"last dim {values.shape[-1]} != num_tokens {self.num_tokens}")
        return values.reshape(*values.shape[:-1], self.frames, self.height, self.width)

    # ---- position classes ----------------------------------------------------------------
    def position_masks(self, boundary_width: int = 1, unit: str = "tokens") -> dict[str, torch.Tensor]:
        """Boolean masks (num_tokens,) for ``first_frame``, ``boundary`` and ``interior``.

        The three masks partition the tokens. ``boundary_width`` counts tokens (``unit="tokens"``)
        or token rows (``unit="rows"``) at the head and the tail of each token-frame after the first;
        0 makes the boundary class empty.
        """
        if unit not in ("tokens", "rows"):
            raise ValueError(f"unit must be 'tokens' or 'rows', got {unit!r}")
        if not isinstance(boundary_width, int) or boundary_width < 0:
            raise ValueError(f"boundary_width must be an int >= 0, got {boundary_width!r}")
        n = boundary_width * (self.width if unit == "rows" else 1)
        if 2 * n > self.tokens_per_frame:
            raise ValueError(f"boundary_width={boundary_width} {unit} covers more than a whole token-frame "
                             f"({self.tokens_per_frame} tokens, {self.height} rows)")
        pos = torch.arange(self.num_tokens) % self.tokens_per_frame  # position inside the frame's span
        later = torch.arange(self.num_tokens) >= self.tokens_per_frame
        first = ~later
        boundary = later & ((pos < n) | (pos >= self.tokens_per_frame - n))
        return {"first_frame": first, "boundary": boundary, "interior": later & ~boundary}

    def position_mask(self, positions, boundary_width: int = 1, unit: str = "tokens") -> torch.Tensor:
        """Union of the named position classes as one (num_tokens,) bool mask; ``"all"`` = every token."""
        positions = (positions,) if isinstance(positions, str) else tuple(positions)
        if "all" in positions:
            return torch.ones(self.num_tokens, dtype=torch.bool)
        masks = self.position_masks(boundary_width, unit)
        bad = [p for p in positions if p not in masks]
        if bad:
            raise ValueError(f"unknown position class {bad}; choose from {POSITION_CLASSES + ('all',)}")
        out = torch.zeros(self.num_tokens, dtype=torch.bool)
        for p in positions:
            out |= masks[p]
        return out

    def class_means(self, values: torch.Tensor, boundary_width: int = 1, unit: str = "tokens") -> dict[str, torch.Tensor]:
        """Mean of per-token ``values`` (..., num_tokens) over each position class -> {class: (...)}."""
        masks = self.position_masks(boundary_width, unit)
        return {k: values[..., m].float().mean(-1) if m.any() else torch.full(values.shape[:-1], float("nan"))
                for k, m in masks.items()}

    def describe(self) -> str:
        p_t, p_h, p_w = self.patch_size
        return (f"{self.num_pixel_frames} pixel frames -> {self.latent_frames} latent frames "
                f"(first alone, then {self.temporal_factor} per latent) x {self.latent_height}x{self.latent_width} "
                f"latent -> patch ({p_t},{p_h},{p_w}) -> {self.frames} x {self.height}x{self.width} tokens "
                f"= {self.num_tokens} tokens ({self.tokens_per_frame} per frame)")
