"""The paper-reader figures (issue 11): one before/after panel per steered channel, per-latent-frame
bars whose heights are the brute-force means, seam zooms on exactly the layout's seam frames, sample
grids labelled with prompt and seed."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from stas import hierarchy as H, plots  # noqa: E402
from stas.layout import TokenLayout  # noqa: E402

LAY = TokenLayout(latent_frames=3, latent_height=4, latent_width=6)      # 3 frames x 2x3 tokens = 18 tokens


def brute_force_frame_means(v, lay, bw):
    """Per (run, frame): mean |v| over the frame, its first `bw` + last `bw` tokens, and the rest, by loops."""
    R, P = v.shape[0], lay.tokens_per_frame
    out = {k: np.full((R, lay.frames), np.nan) for k in ("frame", "first_frame", "boundary", "interior")}
    for r in range(R):
        for f in range(lay.frames):
            tok = [abs(float(v[r, f * P + p])) for p in range(P)]
            out["frame"][r, f] = sum(tok) / P
            if f == 0:
                out["first_frame"][r, f] = sum(tok) / P
            else:
                edge = [t for p, t in enumerate(tok) if p < bw or p >= P - bw]
                mid = [t for p, t in enumerate(tok) if bw <= p < P - bw]
                out["boundary"][r, f], out["interior"][r, f] = sum(edge) / len(edge), sum(mid) / len(mid)
    return out


def test_frame_class_means_equal_brute_force():
    v = torch.randn(3, LAY.num_tokens, generator=torch.Generator().manual_seed(0)) * 5
    for bw in (1, 2):
        got, ref = H.frame_class_means(v, LAY, bw), brute_force_frame_means(v, LAY, bw)
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, equal_nan=True)


def test_latent_frame_bars_heights_are_the_per_frame_means():
    v = torch.randn(3, LAY.num_tokens, generator=torch.Generator().manual_seed(1)) * 5
    ref = {k: a.mean(0) for k, a in brute_force_frame_means(v, LAY, 1).items()}
    fig = plots.latent_frame_bars({"ch 7": v, "ch 9": v[:1]}, LAY, boundary_width=1)
    panels = [ax for ax in fig.axes if ax.containers]
    assert len(panels) == 2                                            # one panel per channel
    bars = {c.get_label(): [p.get_height() for p in c.patches] for c in panels[0].containers if hasattr(c, "patches")}
    np.testing.assert_allclose(bars["first latent frame tokens"], ref["first_frame"][:1], rtol=1e-6)
    np.testing.assert_allclose(bars["boundary tokens"], ref["boundary"][1:], rtol=1e-6)
    np.testing.assert_allclose(bars["interior tokens"], ref["interior"][1:], rtol=1e-6)
    dash = next(ln for ln in panels[0].lines if ln.get_label() == "whole frame")
    np.testing.assert_allclose(dash.get_ydata(), ref["frame"], rtol=1e-6)


def test_steered_channels_one_panel_per_channel_with_class_means():
    g = torch.Generator().manual_seed(2)
    values = {c: {"baseline": torch.randn(LAY.num_tokens, generator=g), "stas": torch.randn(LAY.num_tokens, generator=g)}
              for c in (257, 234, 11)}
    fig = plots.steered_channels(values, LAY, boundary_width=1)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 3 and all(f"channel {c}" in t for c, t in zip(values, titles))
    first = LAY.class_means(values[234]["stas"].abs())["first_frame"]
    assert f"{float(first):.3g}" in titles[1]                          # the after value of channel 234's first frame
    mark = LAY.position_mask(("first_frame", "boundary"), 1)
    dots = fig.axes[0].collections[-1].get_offsets()                   # the written tokens, on the stas line
    np.testing.assert_array_equal(dots[:, 0], np.flatnonzero(mark.numpy()))


@pytest.mark.parametrize("tf, frames, expected", [(4, 13, {4, 5, 8, 9}), (2, 9, {2, 3, 4, 5, 6, 7})])
def test_seam_frames_zoom_the_layout_seams(tf, frames, expected):
    g = torch.Generator().manual_seed(3)
    vids = {m: torch.rand(frames, 3, 20, 20, generator=g) for m in ("baseline", "stas", "enhance", "control")}
    fig = plots.seam_frames(vids, tf, max_seams=10)
    zooms = [z for ax in fig.axes for z in ax.child_axes if z.get_label().startswith("zoom px ")]
    assert {int(ax.get_label().split()[-1]) for ax in zooms} == expected     # never frame 0 -> 1
    assert len(zooms) == len(vids) * len(expected)                            # one inset per frame and method
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()] == list(vids)


def test_seam_frames_zoom_where_the_seam_changes():
    v = torch.zeros(9, 3, 20, 20)
    v[5:, :, 12:18, 2:8] = 1.0                                          # a block appears at the seam 4 -> 5
    fig = plots.seam_frames({"baseline": v}, 4, crop=0.3)
    z = next(z for ax in fig.axes for z in ax.child_axes if z.get_label() == "zoom px 5")
    assert z.images[0].get_array().mean() == pytest.approx(1.0)          # the 6x6 window is the block
    with pytest.raises(ValueError, match="no chunk seam"):
        plots.seam_frames({"baseline": v[:5]}, 4)


def test_sample_grid_labels_carry_prompt_and_seed():
    clips = {("a red ball bounces on the grass", 0): torch.rand(9, 3, 8, 8),
             ("a blue square slides left", 1): torch.rand(9, 3, 8, 8), ("a red ball bounces on the grass", 1): torch.rand(9, 3, 8, 8)}
    fig = plots.sample_grid(clips, temporal_factor=4)
    labels = [ax.get_title(loc="left").replace("\n", " ") for ax in fig.axes if ax.get_title(loc="left")]
    assert labels == [f'"{p}" · seed {s}' for p, s in clips]
    assert [ax.get_xlabel() for ax in fig.axes[:4]] == ["px 0 | lat 0", "px 3 | lat 1", "px 5 | lat 2",
                                                               "px 8 | lat 2"]


def test_save_figure_pdf_bytes_do_not_depend_on_the_time(tmp_path):
    import time

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    a = plots.save_figure(fig, "x", tmp_path / "a")[1].read_bytes()
    time.sleep(1.1)
    b = plots.save_figure(fig, "x", tmp_path / "b")[1].read_bytes()
    plt.close(fig)
    assert a == b
