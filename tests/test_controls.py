"""stas.controls: the matched-size random edit has STAS's entry count and L2 size, and touches nothing else."""

import pytest
import torch

from stas.controls import matched_random_edit, stas_edit
from stas.layout import TokenLayout

L, D = 96, 32
MA = (5, 17)


@pytest.fixture
def h():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(L, D, generator=g)
    x[:, 5] *= 40.0                                # massive-activation channels
    x[:, 17] *= -25.0
    return x


@pytest.fixture
def positions():
    # 4 latent frames of 4 x 6 tokens: the first frame and a 1-token boundary (TokenLayout's classes)
    lay = TokenLayout(latent_frames=4, latent_height=8, latent_width=12)
    assert lay.num_tokens == L
    return lay.position_mask(("first_frame", "boundary"))


def test_stas_edit_matches_a_brute_force_loop(h, positions):
    ref = h.clone()
    for c in MA:
        peak = max(abs(float(v)) for v in h[:, c])
        for t in range(L):
            if positions[t]:
                ref[t, c] = 1.5 * peak * (1.0 if h[t, c] > 0 else -1.0 if h[t, c] < 0 else 0.0)
    torch.testing.assert_close(stas_edit(h, positions, MA, alpha=1.5), ref, rtol=1e-6, atol=0)
    # bool mask and index list give the same edit
    assert torch.equal(stas_edit(h, positions, MA, 1.5), stas_edit(h, positions.nonzero().flatten().tolist(), MA, 1.5))


@pytest.mark.parametrize("control", ["random_positions", "random_channel"])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
def test_matched_edit_same_count_same_l2_untouched_elsewhere(h, positions, control, alpha):
    stas = stas_edit(h, positions, MA, alpha) - h
    ctrl = matched_random_edit(h, positions, MA, alpha, control=control, seed=3) - h
    n = int(positions.sum()) * len(MA)
    changed = ctrl != 0
    # alpha = 1 leaves each channel's own max entry where it is (STAS too): at most one per channel
    lost = 0 if alpha != 1.0 else len(MA)
    assert n - lost <= int((stas != 0).sum()) <= n and n - lost <= int(changed.sum()) <= n
    assert ctrl.norm().item() == pytest.approx(stas.norm().item(), rel=1e-5)
    rows, cols = changed.any(1), changed.any(0)
    if control == "random_positions":
        assert cols.nonzero().flatten().tolist() == list(MA)        # MA channels only
        assert not torch.equal(rows, positions)                      # elsewhere than STAS's tokens
        assert rows.sum() <= positions.sum()
    else:
        assert not (rows & ~positions).any()                          # STAS's tokens only
        assert not cols[list(MA)].any() and cols.sum() == len(MA)    # non-MA channels
    # every changed entry moved the way the rule pushes it (outward, keeping its sign)
    assert ((h + ctrl)[changed].abs() > h[changed].abs()).float().mean() > 0.5


def test_matched_edit_seeded_and_dtype(h, positions):
    a = matched_random_edit(h, positions, MA, 1.0, "random_channel", seed=1)
    assert torch.equal(a, matched_random_edit(h, positions, MA, 1.0, "random_channel", seed=1))
    assert not torch.equal(a, matched_random_edit(h, positions, MA, 1.0, "random_channel", seed=2))
    b = matched_random_edit(h.double(), positions, MA, 1.0, "random_positions", seed=1)
    assert b.dtype == torch.float64 and b.shape == (L, D)


def test_controls_validate(h, positions):
    with pytest.raises(ValueError, match="control"):
        matched_random_edit(h, positions, MA, control="nope")
    with pytest.raises(ValueError, match="channels"):
        stas_edit(h, positions, [D])
    with pytest.raises(ValueError, match="non-MA"):
        matched_random_edit(h, positions, list(range(D - 1)), control="random_channel")
    with pytest.raises(ValueError, match="does not change"):
        matched_random_edit(stas_edit(h, positions, MA), positions, MA)
