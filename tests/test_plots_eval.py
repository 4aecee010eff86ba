"""Figures of notebooks 06/07: the |STAS − baseline| map has a colour bar on the data's own scale
(not a black row), and sweep lines sit at the swept values with their CI bands."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from stas import plots  # noqa: E402
from stas.ablations import sweep_values  # noqa: E402


def test_difference_map_scales_to_the_difference():
    base = torch.rand(9, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    other = base.clone()
    other[4:, :, 4:8, 4:8] += 0.01                     # a faint change: gain-free, it must still show
    fig = plots.difference_map({"baseline": base, "stas": other}, "stas", frames=[0, 4, 8])
    ims = [ax.images[0] for ax in fig.axes if ax.images and ax.images[0].get_cmap().name == "magma"]
    assert len(ims) == 3 and abs(ims[0].norm.vmax - 0.01) < 1e-3
    assert ims[1].get_array().max() > 0.5 * ims[1].norm.vmax   # the changed region reaches the top of the scale
    assert any(ax.get_ylabel() == "|Δ| (0–1 intensity)" for ax in fig.axes)   # the colour bar


def test_sweep_lines_at_swept_values():
    t = pd.DataFrame([dict(family="alpha", setting=f"α={a:g}", metric="flicker", diff=a / 10, lo=a / 10 - 0.1,
                           hi=a / 10 + 0.1) for a in (0.5, 1.0, 4.0)])
    x = sweep_values(t, "alpha")
    assert x == {"α=0.5": 0.5, "α=1": 1.0, "α=4": 4.0}
    fig = plots.sweep_lines(t, "alpha", ["flicker"], x=x)
    line = fig.axes[0].lines[0]
    assert np.allclose(line.get_xdata(), [0.5, 1.0, 4.0]) and np.allclose(line.get_ydata(), [0.05, 0.1, 0.4])
