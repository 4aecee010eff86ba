"""Analysis behind notebooks 03/04 (stas.hierarchy) and the figure functions (stas.plots)."""

import numpy as np
import pytest
import torch

from stas import hierarchy as H
from stas import massive as M
from stas import plots
from stas.layout import TokenLayout

LAY = TokenLayout(8, 16, 16)   # 8 latent frames x 8x8 tokens = 512 tokens (the house model's layout)


def synthetic(width=0, unit="tokens", n=12, noise=0.05, lift=0.5, first=2.0, seed=0, tail=True):
    """(n, L) magnitudes: 1 + noise; frame 0 x first; head/tail ``width`` of later frames x (1 + lift)."""
    g = torch.Generator().manual_seed(seed)
    v = 1.0 + noise * torch.randn(n, LAY.num_tokens, generator=g)
    v[:, :LAY.tokens_per_frame] *= first
    if width:
        w = width * (LAY.width if unit == "rows" else 1)
        pos = torch.arange(LAY.num_tokens) % LAY.tokens_per_frame
        later = torch.arange(LAY.num_tokens) >= LAY.tokens_per_frame
        m = later & ((pos < w) | ((pos >= LAY.tokens_per_frame - w) if tail else False))
        v[:, m] *= 1 + lift
    return v


@pytest.mark.parametrize("w", [1, 2, 8])
def test_width_tokens_planted(w):
    est = H.estimate_boundary_width(synthetic(w), LAY, unit="tokens")
    assert (est["head"], est["tail"], est["width"]) == (w, w, w)
    assert all(hw == (w, w) for hw in est["per_frame"])


def test_width_rows_planted():
    v = synthetic(1, unit="rows")
    assert H.estimate_boundary_width(v, LAY, unit="rows")["width"] == 1
    assert H.estimate_boundary_width(v, LAY, unit="tokens")["width"] == 8   # one row = 8 tokens


def test_width_head_only_and_single_sample():
    est = H.estimate_boundary_width(synthetic(2, tail=False), LAY)
    assert (est["head"], est["tail"], est["width"]) == (2, 0, 2)
    assert H.estimate_boundary_width(synthetic(2, n=1, noise=0.02), LAY)["width"] == 2


@pytest.mark.parametrize("seed", range(4))
def test_width_nothing_planted(seed):
    v = synthetic(0, seed=seed)
    assert H.estimate_boundary_width(v, LAY, unit="tokens")["width"] == 0
    assert H.estimate_boundary_width(v, LAY, unit="rows")["width"] == 0


def test_small_lift_below_margin_is_not_a_boundary():
    # a 5 % lift, far above noise but below the 10 % margin, is not counted
    assert H.estimate_boundary_width(synthetic(2, lift=0.05, noise=0.001), LAY)["width"] == 0


def test_class_table_matches_hand_computation():
    lay = TokenLayout(3, 4, 4)        # 3 frames x 2x2 tokens: frame 0 = 0..3, 1 = 4..7, 2 = 8..11
    v = torch.tensor([[4., 4, 4, 4, 3, 1, 1, 3, 5, 2, 2, 5],
                      [2., 2, 2, 2, 1, 1, 1, 1, 3, 1, 1, 3]])
    t = H.class_table(v, lay, boundary_width=1)
    np.testing.assert_allclose(t["per_run"]["first_frame"], [4, 2])
    np.testing.assert_allclose(t["per_run"]["boundary"], [(3 + 3 + 5 + 5) / 4, (1 + 1 + 3 + 3) / 4])
    np.testing.assert_allclose(t["per_run"]["interior"], [(1 + 1 + 2 + 2) / 4, 1])
    np.testing.assert_allclose(t["first/interior"]["per_run"], [4 / 1.5, 2])
    assert t["mean"]["boundary"] == pytest.approx(3.0)
    assert t["std"]["first_frame"] == pytest.approx(np.std([4, 2], ddof=1))
    assert t["n_tokens"] == {"first_frame": 4, "boundary": 4, "interior": 4}
    # signed values: magnitudes are used
    assert H.class_table(-v, lay)["mean"] == t["mean"]


class FakeRec:
    """Duck-typed Recording: the fields hierarchy reads."""

    def __init__(self, R=2, S=3, NB=2, D=6, C=2, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.layout = LAY
        self.blocks, self.channels, self.branches = list(range(NB)), [4, 5][:C], ("cond", "uncond")
        tok = synthetic(1, n=R * S * NB * 2 * C).reshape(R, S, NB, 2, C, -1).transpose(-1, -2).contiguous()
        self.data = {"tokens": tok, "chan_max": torch.rand(R, S, NB, 2, D, generator=g) + 1,
                     "median": torch.full((R, S, NB, 2), 0.5), "chan_mean": torch.ones(R, S, NB, 2, D)}
        self.data["chan_max"][..., 4] = 100.0

    def branch_index(self, b):
        return list(self.branches).index(b)

    def __getitem__(self, k):
        return self.data[k]


def test_grid_topk_overlap():
    st = FakeRec()
    g = H.hierarchy_grid(st, 4, boundary_width=1)
    assert g["first/interior"].shape == (2, 3)
    assert np.allclose(g["first/interior"], 2.0, rtol=0.05) and np.allclose(g["boundary/interior"], 1.5, rtol=0.05)
    assert H.magnitudes(st, 5, steps=[0, 2], blocks=[1]).shape == (2, 2, 1, LAY.num_tokens)
    lt = M.layerwise_topk(st, k=3)
    assert lt["top"].shape == (2, 3) and (lt["channels"][:, 0] == 4).all() and np.allclose(lt["median"], 0.5)
    ov = M.channel_overlap(st, k=1)
    assert ov["common"] == [4] and ov["jaccard"] == 1.0


def test_plots_write_png_and_pdf(tmp_path):
    import matplotlib.pyplot as plt

    v = synthetic(2, n=3)
    tab = H.class_table(v, LAY, 2)
    est = {"tokens": H.estimate_boundary_width(v, LAY), "rows": H.estimate_boundary_width(v, LAY, "rows")}
    st = FakeRec()
    lt = M.layerwise_topk(st)
    figs = {
        "layout": plots.token_layout(LAY, 2),
        "strip": plots.video_strip(torch.rand(9, 3, 16, 16), frames=[0, 1, 4, 8]),
        "topk": plots.layerwise_topk(lt["top"], lt["median"], lt["blocks"], channels=lt["channels"]),
        "3d": plots.activation_3d(torch.randn(64, 12), channels=[3], token_stride=4),
        "bars": plots.position_class_bars({"ch 4": tab}),
        "heat": plots.frame_row_heatmap(H.frame_profiles(v, LAY, "rows")["profile"]),
        "curve": plots.token_curve(v, LAY, boundary_width=2),
        "bxs": plots.block_step_heatmaps(H.hierarchy_grid(st, 4), blocks=[0, 1], steps=[0, 1, 2]),
        "cfg": plots.cfg_branches({"peak": {"cond": [1, 2], "uncond": [1, 3]}}),
        "bw": plots.boundary_width(est),
        "map": plots.token_map(torch.rand(8, 8)),
    }
    for name, fig in figs.items():
        assert isinstance(fig, plt.Figure)
        paths = plots.save_figure(fig, f"t_{name}", tmp_path, dpi=60)   # fast; the notebooks save at 300 dpi
        assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in paths)
        assert paths[0].parent == tmp_path
        plt.close(fig)
