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


# ------------------------------------------------------------------ the control inside the steering hook
from stas.adapters import get_adapter  # noqa: E402
import stas  # noqa: E402

from conftest import call_kwargs  # noqa: E402
from test_steer import Around, PROMPT  # noqa: E402


def _steered(pipe, cfg, block=1):
    with stas.steer(pipe, cfg) as st:
        cap = Around(pipe, block)
        try:
            video = stas.generate(pipe, PROMPT, seed=0, **call_kwargs(pipe))
        finally:
            cap.close()
    return video, cap, st


@pytest.mark.parametrize("control", ["random_positions", "random_channel"])
def test_hook_control_equals_pure_function_and_matches_stas_size(wan, control):
    """In the hook, per sample and branch: the controlled block output equals `matched_random_edit`
    on the same h (same draw from the same seed), with STAS's entry count and L2 change."""
    cfg = stas.STASConfig(alpha=1.5, steps=2, blocks=[1], channels=[3, 10], control=control, control_seed=7)
    _, cap, st = _steered(wan, cfg)
    lay = get_adapter(wan).layout((), {"hidden_states": torch.zeros(1, 16, 3, 4, 4)})
    mask = lay.position_mask(cfg.positions, cfg.boundary_width)
    n = int(mask.sum()) * len(cfg.channels)
    fired = 0
    for i, (b, a) in enumerate(zip(cap.before, cap.after)):
        if i // 2 >= cfg.steps:
            assert torch.equal(a, b)
            continue
        for s in range(b.shape[0]):
            ref = matched_random_edit(b[s], mask, cfg.channels, 1.5, control=control, seed=7)
            torch.testing.assert_close(a[s], ref, rtol=1e-5, atol=1e-6)
            size = (stas_edit(b[s], mask, cfg.channels, 1.5) - b[s]).norm()       # brute-force STAS size
            assert (a[s] - b[s]).norm().item() == pytest.approx(size.item(), rel=1e-5)
            assert int((a[s] != b[s]).sum()) <= n and int((a[s] != b[s]).sum()) >= n - len(cfg.channels)
            fired += 1
    assert fired == 2 * 2 * cap.before[0].shape[0] and st.unmatched == 0


def test_hook_control_off_at_k0_and_seeded(wan):
    stock = stas.generate(wan, PROMPT, seed=0, **call_kwargs(wan))
    for control in ("random_positions", "random_channel"):
        cfg = stas.STASConfig(steps=0, blocks=[1], channels=[3], control=control)
        v, _, _ = _steered(wan, cfg)
        assert torch.equal(torch.as_tensor(v), torch.as_tensor(stock))           # K = 0: bit-identical
    cfg = dict(steps=2, blocks=[1], channels=[3], control="random_positions")
    a = _steered(wan, stas.STASConfig(**cfg, control_seed=1))[0]
    b = _steered(wan, stas.STASConfig(**cfg, control_seed=1))[0]
    c = _steered(wan, stas.STASConfig(**cfg, control_seed=2))[0]
    assert torch.equal(torch.as_tensor(a), torch.as_tensor(b)) and not torch.equal(torch.as_tensor(a), torch.as_tensor(c))


def test_control_config_validates():
    with pytest.raises(ValueError, match="control"):
        stas.STASConfig(steps=1, blocks=[0], channels=[1], control="nope")
    with pytest.raises(ValueError, match="mode='stas'"):
        stas.STASConfig(steps=1, blocks=[0], channels=[1], control="random_channel", mode="zero")
