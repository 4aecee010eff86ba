"""Tests for stas.metrics on constructed videos whose answers are known in advance."""

import math

import cv2
import numpy as np
import pytest
import scipy.stats
import torch

from stas import metrics as M
from stas.layout import latent_frame_of


# ------------------------------------------------------------------------------- helpers

def const_video(values, hw=(32, 32)):
    """(F, 3, H, W) video whose frame i is uniformly values[i]."""
    v = torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1)
    return v.expand(-1, 3, *hw).clone()


def textured_translation(num_frames=9, size=64, shift=2, seed=0):
    """Smooth random texture whose content moves right by `shift` px per frame; (F, H, W, 3) float."""
    rng = np.random.default_rng(seed)
    pad = shift * num_frames + 16
    big = cv2.GaussianBlur(rng.random((size + pad, size + pad, 3)).astype(np.float32), (0, 0), 2.0)
    big = (big - big.min()) / (big.max() - big.min())
    x0 = 8 + shift * (num_frames - 1)
    return np.stack([big[8:8 + size, x0 - shift * t: x0 - shift * t + size]
                     for t in range(num_frames)])


@pytest.fixture(scope="module")
def moving():
    return textured_translation()


# ------------------------------------------------------------------------------- as_video

def test_as_video_layouts_and_dtypes():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(5, 16, 20, 3), dtype=np.uint8)
    v = M.as_video(u8)
    assert v.shape == (5, 3, 16, 20) and v.dtype == torch.float32
    assert torch.allclose(v, torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255)
    # the same frames as float channel-first tensor, channel-last float array, uint8 tensor
    assert torch.equal(M.as_video(v), v)
    assert torch.allclose(M.as_video(v.permute(0, 2, 3, 1).numpy()), v)
    assert torch.allclose(M.as_video(torch.from_numpy(u8)), v)
    assert torch.allclose(M.as_video(v.double()), v)
    # tiny round-off outside [0, 1] is clamped
    w = M.as_video(v - 1e-5)
    assert float(w.min()) >= 0.0


@pytest.mark.parametrize("bad, exc, match", [
    (torch.zeros(3, 3, 8), ValueError, "4 dimensions"),
    (torch.zeros(4, 2, 8, 8), ValueError, "size 3"),
    (torch.zeros(4, 3, 8, 8) - 1.0, ValueError, r"\[-1, 1\]"),
    (torch.full((4, 3, 8, 8), 200.0), ValueError, "0..255"),
    (torch.full((4, 3, 8, 8), 1.2), ValueError, r"\[0, 1\]"),
    (torch.full((4, 3, 8, 8), float("nan")), ValueError, "NaN"),
    (torch.zeros(4, 3, 8, 8, dtype=torch.int64), TypeError, "dtype"),
    ([[0.0]], TypeError, "torch.Tensor or numpy"),
])
def test_as_video_rejects_bad_input(bad, exc, match):
    with pytest.raises(exc, match=match):
        M.as_video(bad)


def test_single_frame_rejected_where_pairs_needed():
    with pytest.raises(ValueError, match="at least 2 frames"):
        M.frame_differences(torch.zeros(1, 3, 8, 8))


# ------------------------------------------------------------------------------- frame bookkeeping

def test_seam_mask():
    # the first-frame transition 0->1 is not a chunk seam; 4->5, 8->9 are
    assert M.seam_mask(9).tolist() == [False, False, False, False, True, False, False, False]
    assert np.flatnonzero(M.seam_mask(13, temporal_factor=2)).tolist() == [2, 4, 6, 8, 10]
    # seams sit exactly where the latent frame (stas.layout) changes, after the first transition
    lat = np.array([latent_frame_of(i) for i in range(17)])
    assert np.array_equal(M.seam_mask(17), np.r_[False, lat[2:] != lat[1:-1]])
    # temporal factor 1 (a per-frame VAE): every transition after the first crosses latent frames
    assert M.seam_mask(5, temporal_factor=1).tolist() == [False, True, True, True]
    with pytest.raises(ValueError, match="strict=False"):
        M.seam_mask(11)
    assert np.flatnonzero(M.seam_mask(11, strict=False)).tolist() == [4, 8]
    assert not hasattr(M, "pixel_to_latent_frame")  # frame maths lives in stas.layout only


# ------------------------------------------------------------------------------- flicker

def test_static_clip():
    v = const_video([0.3] * 9)
    assert np.array_equal(M.frame_differences(v), np.zeros(8))
    assert M.flicker(v) == 0.0
    assert M.is_static(v) and M.flicker_score(v) == 1.0
    prof = M.seam_profile(v)
    assert prof["seam_mean"] == 0.0 and prof["within_mean"] == 0.0 and prof["first"] == 0.0
    assert prof["seam_excess"] == 0.0 and M.seam_excess(v) == 0.0
    assert math.isnan(prof["seam_jump"])  # 0/0


def test_uniform_brightening_known_mad():
    step = 0.05
    v = const_video([0.1 + step * i for i in range(9)])
    d = M.frame_differences(v)
    assert d.shape == (8,)
    np.testing.assert_allclose(d, step, atol=1e-6)
    assert M.flicker(v) == pytest.approx(step, abs=1e-6)
    assert M.flicker_score(v) == pytest.approx((255 - 255 * step) / 255, abs=1e-6)
    # uint8 input: 10 levels per frame -> MAD 10/255
    u8 = np.stack([np.full((16, 16, 3), 10 * i, np.uint8) for i in range(5)])
    assert M.flicker(u8) == pytest.approx(10 / 255, abs=1e-7)
    # uniform change everywhere -> seams are no different
    assert M.seam_excess(v) == pytest.approx(0.0, abs=1e-6)
    assert M.seam_profile(v)["seam_jump"] == pytest.approx(1.0, abs=1e-5)


def test_vbench_static_filter_thresholds():
    """VBench: static iff <= round(2F/16) consecutive transitions have top-2% flow > 3 px * min(H,W)/256."""
    slow = textured_translation(num_frames=9, size=64, shift=1)
    fast = textured_translation(num_frames=9, size=64, shift=3)
    frozen = np.repeat(slow[:1], 9, axis=0)
    s = M.static_scores(frozen)
    assert s.shape == (10,) and np.all(s == 0) and M.is_static(frozen)
    # 64 px -> threshold 0.75 px; F = 9 -> round(1.125) = 1 moving transition allowed
    assert M.static_scores(slow)[:-2] == pytest.approx(np.ones(8), abs=0.2)
    assert not M.is_static(slow) and not M.is_static(fast)
    assert not M.is_static(np.concatenate([frozen[:5], slow[1:5]]))        # 4 moving transitions
    assert M.is_static(np.concatenate([frozen[:8], slow[1:2]]))            # 1 moving transition
    # VBench leaves moving clips out of the flicker average: nan, whatever their MAD
    assert math.isnan(M.flicker_score(fast))
    assert M.flicker_score(fast, static_filter=False) == pytest.approx(1 - M.flicker(fast))


def test_planted_jump_at_seam_4_to_5():
    # steady brightening by 0.01/frame, plus a jump of 0.2 from pixel frame 5 onwards
    vals = [0.1 + 0.01 * i + (0.2 if i >= 5 else 0.0) for i in range(9)]
    prof = M.seam_profile(const_video(vals))
    d = prof["diffs"]
    assert int(np.argmax(d)) == 4
    np.testing.assert_allclose(d, [0.01, 0.01, 0.01, 0.01, 0.21, 0.01, 0.01, 0.01], atol=1e-5)
    assert prof["is_seam"][4] and not prof["is_seam"][0]
    assert prof["first"] == pytest.approx(0.01, abs=1e-5)
    assert prof["seam_mean"] == pytest.approx(0.21, abs=1e-5)
    assert prof["within_mean"] == pytest.approx(0.01, abs=1e-5)
    assert prof["seam_excess"] == pytest.approx(0.20, abs=1e-5)
    assert prof["per_transition"] == pytest.approx((0.21 + 6 * 0.01) / 7, abs=1e-5)
    np.testing.assert_allclose(prof["phase_mean"], [0.21, 0.01, 0.01, 0.01], atol=1e-5)
    # a pure step (no other change) shows only at transition 4: excess = the step
    step = const_video([0.2] * 5 + [0.6] * 4)
    d = M.frame_differences(step)
    assert np.flatnonzero(d).tolist() == [4]
    assert M.seam_excess(step) == pytest.approx(0.4, abs=1e-6)
    assert M.seam_profile(step)["seam_jump"] == math.inf


def test_first_frame_transition_is_reported_on_its_own():
    # a jump at 0->1 only (the first latent frame differs) is not a seam artefact
    v = const_video([0.1] + [0.5] * 8)
    prof = M.seam_profile(v)
    assert prof["first"] == pytest.approx(0.4, abs=1e-6)
    assert prof["seam_excess"] == 0.0 and prof["per_transition"] == 0.0


def test_planted_jump_inside_chunk_2_to_3():
    vals = [0.1 + 0.01 * i + (0.2 if i >= 3 else 0.0) for i in range(9)]
    prof = M.seam_profile(const_video(vals))
    assert int(np.argmax(prof["diffs"])) == 2 and not prof["is_seam"][2]
    # one seam (4->5) of 0.01; within-chunk transitions 1, 2, 3, 5, 6, 7
    within = (0.01 + 0.21 + 0.01 + 0.01 + 0.01 + 0.01) / 6
    assert prof["within_mean"] == pytest.approx(within, abs=1e-5)
    assert prof["seam_excess"] == pytest.approx(0.01 - within, abs=1e-5) and prof["seam_excess"] < 0


def test_seam_profile_strictness_and_temporal_factor():
    v = const_video([0.01 * i for i in range(11)])
    with pytest.raises(ValueError, match="strict=False"):
        M.seam_profile(v)
    prof = M.seam_profile(v, strict=False)  # partial last chunk (frames 9, 10)
    assert prof["diffs"].shape == (10,)
    assert np.flatnonzero(prof["is_seam"]).tolist() == [4, 8]
    # temporal factor 2: seams at 2, 4, 6; a jump at 2->3 is a seam there
    vals = [0.1 + 0.01 * i + (0.2 if i >= 3 else 0.0) for i in range(9)]
    p2 = M.seam_profile(const_video(vals), temporal_factor=2)
    assert p2["is_seam"][2] and p2["seam_excess"] == pytest.approx(0.2 / 3, abs=1e-5)
    # temporal factor 1 (the uniform control): no within-chunk transitions, per-transition change instead
    p1 = M.seam_profile(const_video([0.1, 0.2, 0.25, 0.3, 0.35]), temporal_factor=1)
    assert math.isnan(p1["within_mean"]) and math.isnan(p1["seam_excess"])
    assert p1["first"] == pytest.approx(0.1, abs=1e-6)
    assert p1["per_transition"] == pytest.approx(0.05, abs=1e-6)
    with pytest.raises(ValueError, match="temporal_factor"):
        M.seam_profile(v, temporal_factor=0)
    with pytest.raises(ValueError, match="metric"):
        M.seam_profile(const_video([0.0] * 5), metric="nope")


# ------------------------------------------------------------------------------- optical flow

def test_static_clip_flow():
    rng = np.random.default_rng(1)
    frame = cv2.GaussianBlur(rng.random((32, 32, 3)).astype(np.float32), (0, 0), 1.5)
    v = np.repeat(frame[None], 5, axis=0)
    flows = M.optical_flow(v)
    assert flows.shape == (4, 32, 32, 2) and flows.dtype == np.float32
    assert np.abs(flows).max() < 1e-4
    assert M.motion_magnitude(v, flows=flows) < 1e-4
    assert M.flow_warp_error(v, flows=flows) < 1e-6


def test_translation_flow_and_warp(moving):
    flows = M.optical_flow(moving)
    assert flows.shape == (8, 64, 64, 2)
    # content moves right: dx ~ +2, dy ~ 0
    assert flows[..., 0].mean() == pytest.approx(2.0, abs=0.3)
    assert abs(flows[..., 1].mean()) < 0.3
    mag = M.motion_magnitudes(moving, flows=flows)
    assert mag.shape == (8,)
    assert M.motion_magnitude(moving, flows=flows) == pytest.approx(2.0, abs=0.3)
    errs = M.flow_warp_errors(moving, flows=flows)
    assert errs.shape == (8,)
    warp = M.flow_warp_error(moving, flows=flows)
    unwarped = M.flicker(moving)
    assert warp < 0.1 * unwarped
    # masking the pixels that come from outside the frame can only help here
    assert warp <= M.flow_warp_error(moving, flows=flows, mask_out_of_bounds=False) + 1e-9
    # motion-compensated seam profile runs and sees no seam structure in uniform motion
    assert M.seam_profile(moving, metric="warp")["diffs"].shape == (8,)


def test_flow_validation(moving):
    with pytest.raises(ValueError, match="flows must have shape"):
        M.flow_warp_errors(moving, flows=np.zeros((3, 64, 64, 2)))
    with pytest.raises(TypeError, match="unknown"):
        M.optical_flow(moving[:2], window=3)


# ------------------------------------------------------------------------------- object speed

def known_speed_clips(n):
    from stas.house.metrics import known_speed_clips as clips
    return clips(n)


@pytest.fixture(scope="module")
def house_clips():
    return known_speed_clips(6)


@pytest.mark.parametrize("kind", list(M.DEGRADATIONS))
def test_object_speed_within_20_percent_of_known_velocity(house_clips, kind):
    for j, (v, speed) in enumerate(house_clips):
        x = M.degrade(v, seed=j, **M.DEGRADATIONS[kind])
        flows = M.optical_flow(x)
        assert M.object_speed(x, flows) == pytest.approx(speed, rel=0.2)
        if "noise" not in kind:  # the whole-frame mean flow is no speed: it averages in the background
            assert M.motion_magnitude(x, flows) < 0.5 * speed


def test_flow_reads_blurred_low_contrast_blob():
    """Regression: Farnebäck on raw luma read ~0 px/frame on a faint blurred blob (DESIGN: 0.0006)."""
    v, speed = known_speed_clips(1)[0]
    x = M.degrade(v, contrast=0.1, blur_sigma=3.0)
    g = M._flow_channel(x, 1.0)  # the flow input is stretched to 0..255 whatever the clip's contrast
    assert np.percentile(g, 99.5) - np.percentile(g, 0.5) == pytest.approx(255, abs=1)
    assert M.object_speed(x) == pytest.approx(speed, rel=0.2)


def test_object_speed_isoluminant_and_static():
    # a disc that differs from the background in hue only (same BT.601 luma) moving 2 px/frame
    F, size = 13, 64
    bg = np.array([0.5, 0.5, 0.5])
    col = bg + 0.5 * np.array([0.587, -0.299, 0.0])             # BT.601 luma change 0
    assert abs(np.dot([0.299, 0.587, 0.114], col - bg)) < 1e-12
    yy, xx = np.mgrid[:size, :size] + 0.5
    frames = []
    for t in range(F):
        m = np.clip(8.5 - np.hypot(xx - 16 - 2 * t, yy - 32), 0, 1)[..., None]
        frames.append(bg * (1 - m) + col * m)
    v = np.stack(frames).astype(np.float32)
    assert M.object_speed(v) == pytest.approx(2.0, rel=0.2)
    # nothing moves -> 0 px/frame, also under noise
    still = M.degrade(np.repeat(v[:1], F, axis=0), noise_std=0.01)
    assert M.object_speed(still) < 0.2
    assert M.object_speed(np.repeat(v[:1], F, axis=0)) == 0.0
    with pytest.raises(ValueError, match="at least 3 frames"):
        M.foreground_masks(v[:2])


def test_degrade():
    v = torch.rand(3, 3, 16, 16)
    assert torch.equal(M.degrade(v), v)
    low = M.degrade(v, contrast=0.5)
    mean = v.mean(dim=(0, 2, 3), keepdim=True)
    assert torch.allclose(low - mean, 0.5 * (v - mean), atol=1e-6)
    assert torch.equal(M.degrade(v, noise_std=0.1, seed=3), M.degrade(v, noise_std=0.1, seed=3))
    with pytest.raises(ValueError, match="contrast"):
        M.degrade(v, contrast=0)
    # seams_only=4: frames 1-4 show frame 4, 5-8 show frame 8 (all motion at the chunk seams)
    w = torch.arange(9, dtype=torch.float32).view(9, 1, 1, 1).expand(9, 3, 2, 2) / 10
    held = M.degrade(w, seams_only=4)[:, 0, 0, 0] * 10
    assert held.round().tolist() == [0, 4, 4, 4, 4, 8, 8, 8, 8]


def test_validation_table(house_clips):
    t = M.validation_table(house_clips[:3])
    assert list(t.columns) == ["metric", "input", "known answer", "measured", "tolerance",
                               "max rel error", "within tolerance"]
    ok = t.set_index(["metric", "input"])["within tolerance"]
    # every metric passes its known-answer check; the whole-frame mean flow fails as a speed
    assert ok.drop("motion_magnitude", level="metric").all()
    assert not ok.loc[("motion_magnitude", "3 clips of known speed, clean")]
    assert set(t.metric) >= {"object_speed", "flicker", "flicker_score", "is_static", "seam_excess",
                             "first (0->1 change)", "per_transition", "flow_warp_error"}
    with pytest.raises(ValueError, match="at least one moving clip"):
        M.validation_table([])


# ------------------------------------------------------------------------------- tables

def test_summarize():
    s = M.summarize({"flicker": [1.0, 2.0, 3.0, float("nan")], "one": [5.0]})
    assert s["flicker"]["mean"] == pytest.approx(2.0)
    assert s["flicker"]["sem"] == pytest.approx(1.0 / math.sqrt(3))
    assert s["flicker"]["n"] == 3
    assert "±" in s["flicker"]["text"]
    assert s["one"]["n"] == 1 and math.isnan(s["one"]["sem"])
