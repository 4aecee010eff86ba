"""House model v2 (issue 8): the shipped VAEs in data/house, the image-only uniform VAE, the pruned
text encoder used for GPU training. CPU, seconds."""
from pathlib import Path

import numpy as np
import pytest
import torch

from stas.house import world
from stas.house.detect import score_clip
from stas.house.models import make_vae, pixel_frames
from stas.house.train import vae_encode
from stas.house.train_vae import image_only_

HOUSE = Path(__file__).resolve().parents[1] / "data" / "house"


def _shipped_vae(variant):
    from diffusers import AutoencoderKLWan

    d = HOUSE / variant / "vae"
    if not d.is_dir():
        pytest.skip(f"no shipped VAE for {variant}")
    return AutoencoderKLWan.from_pretrained(str(d), torch_dtype=torch.float32).eval()


def _clips(n, seed=1_000_000_123):
    video, caps = world.ClipStream(start_seed=seed).next(n)
    return video, caps


def test_image_only_decodes_frames_independently():
    torch.manual_seed(0)
    vae = make_vae("uniform").eval()
    assert image_only_(vae) == 20  # every causal conv with a temporal kernel
    z = torch.randn(1, 16, 3, 4, 4)
    with torch.no_grad():
        whole = vae.decode(z).sample
        alone = torch.cat([vae.decode(z[:, :, i:i + 1]).sample for i in range(3)], dim=2)
        z2 = z.clone()
        z2[:, :, 0] = 0
        changed = vae.decode(z2).sample
    assert whole.shape == (1, 3, 3, 32, 32)  # one output frame per latent frame
    torch.testing.assert_close(whole, alone, rtol=0, atol=1e-5)
    assert torch.equal(changed[:, :, 1:], whole[:, :, 1:])  # latent frame 0 cannot reach frames 1, 2


def test_shipped_causal_vae_is_causal_and_reconstructs():
    vae = _shipped_vae("causal")
    video, caps = _clips(2)
    with torch.no_grad():
        z = vae_encode(vae, video, "causal")
        v2 = video.clone()
        v2[:, :, 5] = 0
        z2 = vae_encode(vae, v2, "causal")
        rec = vae.decode(z).sample.clamp(-1, 1)
    assert z.shape == (2, 16, 8, 16, 16)
    assert torch.equal(z[:, :, :1], z2[:, :, :1])  # frame 5 cannot reach latent frame 0
    assert not torch.equal(z[:, :, 2], z2[:, :, 2])  # it reaches latent frame 2 (frames 5-8)
    assert rec.shape == video.shape
    psnr = float(-10 * torch.log10(((rec - video) ** 2).mean() / 4))
    assert psnr > 29.0  # shipped step 6 845: 36.4 dB on 32 held-out clips (vae_report.json gate); the gate is 28


def test_shipped_uniform_vae_reconstructs_each_frame_and_detector_sees_it():
    vae = _shipped_vae("uniform")
    video, caps = _clips(4)
    fr = pixel_frames("uniform")
    with torch.no_grad():
        rec = vae.decode(vae_encode(vae, video, "uniform")).sample.clamp(-1, 1)
    real = video[:, :, fr]
    assert rec.shape == real.shape == (4, 3, 8, 128, 128)
    psnr = float(-10 * torch.log10(((rec - real) ** 2).mean() / 4))
    assert psnr > 30.0  # shipped weights: 33.7 dB on 32 held-out clips (vae_report.json gate)
    for b, cap in enumerate(caps):  # CPU-sized gate 1: recognised wherever the real frames are
        if score_clip((real[b].transpose(0, 1) + 1) / 2, cap)["ok"]:
            assert score_clip((rec[b].transpose(0, 1) + 1) / 2, cap)["ok"], cap


def test_pruned_text_encoder_matches_full_on_the_grammar(tmp_path):
    from stas.house.text import encode, export_pruned, load_text_encoder

    tok, full = load_text_encoder()
    ptok, pruned = load_text_encoder(export_pruned(tmp_path / "minilm"))
    caps = [""] + list(world.sample_params(range(300)).caption)
    ref = encode(tok, full.half().float(), caps)  # the pruned weights are fp16
    torch.testing.assert_close(encode(ptok, pruned, caps), ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="outside this pruned"):
        encode(ptok, pruned, ["a purple dragon"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the vocabulary check on a GPU encoder needs CUDA")
def test_pruned_text_encoder_on_cuda_matches_cpu(tmp_path):
    # the check once compared CPU token ids with the encoder's CUDA id table (RuntimeError on an H200)
    from stas.house.text import encode, export_pruned, load_text_encoder

    ptok, cpu = load_text_encoder(export_pruned(tmp_path / "minilm"))
    _, gpu = load_text_encoder(tmp_path / "minilm", device="cuda")
    caps = list(world.sample_params(range(8)).caption)
    torch.testing.assert_close(encode(ptok, gpu, caps).cpu(), encode(ptok, cpu, caps), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="outside this pruned"):
        encode(ptok, gpu, ["a purple dragon"])


def test_temporal_diff_pairs_frames_of_one_clip():
    from stas.house.train_vae import temporal_diff

    v = torch.randn(2, 3, 5, 4, 4)
    assert torch.equal(temporal_diff(v, 1)[:, :, 2], v[:, :, 3] - v[:, :, 2])
    frames = torch.randn(16, 3, 1, 4, 4)  # uniform: 2 clips x 8 frames, each clip's frames consecutive
    d = temporal_diff(frames, 8)
    assert d.shape == (2, 7, 3, 1, 4, 4)
    assert torch.equal(d[1, 0], frames[9] - frames[8])
    with pytest.raises(ValueError):
        temporal_diff(frames[:12], 8)


def test_uniform_batches_cut_one_crop_per_clip():
    from stas.house.models import SIZE
    from stas.house.train_vae import Batches

    x = Batches("uniform", 16, 32, seed=5, device="cpu").next()  # 2 clips x 8 frames
    clips, _ = world.ClipStream(start_seed=5).next(2)
    i, j = np.random.default_rng(5).integers(0, SIZE - 32 + 1, size=(1, 2))[0]
    want = clips[0][:, pixel_frames("uniform"), i:i + 32, j:j + 32].transpose(0, 1)  # (8, 3, 32, 32)
    assert torch.equal(x[:8, :, 0], want)


def test_train_vae_init_from_export_continues_the_curve(tmp_path):
    import json

    from stas.house.train_vae import build, init_from_export

    torch.manual_seed(0)
    src = make_vae("causal")
    src.save_pretrained(str(tmp_path / "causal" / "vae"), safe_serialization=True)
    runs = [dict(start_step=0, end_step=10, batch=4), dict(start_step=10, end_step=13, batch=2)]
    rep = dict(steps=13, minutes=2.5, runs=runs, history=[dict(step=10, train_psnr=20.0)])
    (tmp_path / "causal" / "vae_report.json").write_text(json.dumps(rep))
    vae, ema, opt = build("causal", 1e-3, torch.device("cpu"), graph=False)
    state = init_from_export(tmp_path / "causal", vae, ema, dict(seed=100))
    assert (state["step"], state["seconds"], state["seed"]) == (13, 150.0, 100 + 10 * 4 + 3 * 2)
    assert state["history"] == rep["history"] and state["runs"] == runs
    for n, p in vae.named_parameters():
        assert torch.equal(p, src.state_dict()[n]) and torch.equal(ema[n], p)


def test_recon_loss_terms_by_hand():
    from stas.house.train_vae import recon_loss

    x = torch.zeros(1, 1, 2, 2, 2)
    rec = x.clone()
    rec[0, 0, 1, 0, 0] = 0.5  # one pixel of frame 1 off by 0.5: flicker and an edge
    base = 0.5 / 8 + 0.25 / 8  # mean |e| + mean e^2 over 8 values
    assert torch.isclose(recon_loss(rec, x), torch.tensor(base))
    # frame change: one of the 4 differences is 0.5
    assert torch.isclose(recon_loss(rec, x, dt_weight=2.0), torch.tensor(base + 2.0 * 0.5 / 4))
    # image gradients: one of 4 horizontal and one of 4 vertical differences is 0.5, each term mean 0.125
    assert torch.isclose(recon_loss(rec, x, grad_weight=1.0), torch.tensor(base + 0.125 + 0.125))


def test_still_mask_and_dt_still_by_hand():
    from stas.house.train_vae import STILL_MAX, recon_loss, still_mask

    x = torch.zeros(1, 2, 3, 2, 2)  # 2 channels, 3 frames, 2x2 pixels
    x[0, 1, 2, 0, 0] = 2 * STILL_MAX + 0.01  # pixel (0, 0): channel 1 changes by more than STILL_MAX at 1 -> 2
    x[0, 0, 1, 0, 1] = 2 * STILL_MAX  # pixel (0, 1): exactly at the bound: still
    m = still_mask(x)
    assert m.shape == (1, 1, 1, 2, 2) and m.flatten().tolist() == [0.0, 1.0, 1.0, 1.0]
    rec = x.clone()
    rec[0, 0, 2, 1, 1] += 0.3  # a still pixel flickers: |d| 0.3 at 1 -> 2 in channel 0
    rec[0, 1, 1, 0, 0] += 0.5  # the moving pixel is off too, but outside the mask
    base = float(recon_loss(rec, x))
    # on still pixels: the flicker 0.3, and pixel (0, 1)'s own change 2 * STILL_MAX at 0 -> 1 and 1 -> 2
    # (the input's, copied), over the 2 x 2 x 2 x 2 = 16 values of |d rec|
    want = base + 2.0 * (0.3 + 2 * 2 * STILL_MAX) / 16
    assert float(recon_loss(rec, x, dt_still=2.0)) == pytest.approx(want, abs=1e-6)
    with pytest.raises(ValueError, match="clips"):
        recon_loss(rec[:, :, :1], x[:, :, :1], dt_still=1.0)


def test_batches_still_clips_repeat_frame_0():
    from stas.house.train_vae import Batches

    plain = Batches("causal", 4, 32, seed=7, device=torch.device("cpu")).next()
    still = Batches("causal", 4, 32, seed=7, device=torch.device("cpu"), still_frac=0.5).next()
    assert torch.equal(still[:2], plain[:2, :, :1].expand_as(plain[:2]))  # round(0.5 * 4) = 2 still clips
    assert torch.equal(still[2:], plain[2:]) and (plain[:2, :, 1:] != plain[:2, :, :1]).any()
    with pytest.raises(ValueError, match="causal"):
        Batches("uniform", 8, 32, seed=7, device=torch.device("cpu"), still_frac=0.5)


def test_recon_loss_dt_first_weighs_the_first_transitions():
    from stas.house.train_vae import DT_FIRST, recon_loss

    x = torch.zeros(1, 1, 10, 1, 1)  # 9 transitions
    early, late = x.clone(), x.clone()
    early[0, 0, 1] = 1.0  # transitions 0 -> 1 and 1 -> 2 off by 1 each: both among the first DT_FIRST
    late[0, 0, 8] = 1.0  # transitions 7 -> 8 and 8 -> 9
    base = 1 / 10 + 1 / 10
    w = torch.tensor([3.0] * DT_FIRST + [1.0] * (9 - DT_FIRST))
    w = w / w.mean()  # 3 : 1, mean 1
    assert torch.isclose(recon_loss(early, x, dt_weight=1.0, dt_first=3.0), base + 2 * w[0] / 9)
    assert torch.isclose(recon_loss(late, x, dt_weight=1.0, dt_first=3.0), base + 2 * w[-1] / 9)
    # weight 1 is the unweighted term; the total weight is kept (mean 1)
    assert torch.isclose(recon_loss(late, x, dt_weight=1.0, dt_first=1.0), torch.tensor(base + 2 / 9))
    assert torch.isclose(w.mean(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="more than"):
        recon_loss(x[:, :, :DT_FIRST], x[:, :, :DT_FIRST], dt_weight=1.0, dt_first=2.0)


def test_fused_norm_silu_is_the_stock_vae_with_the_same_keys():
    from stas.house.train_vae import FusedRMSNormSiLU, fuse_norm_silu_

    torch.manual_seed(0)
    stock = make_vae("causal").eval()
    fused = make_vae("causal").eval()
    fused.load_state_dict(stock.state_dict())
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanResidualBlock

    blocks = sum(isinstance(m, WanResidualBlock) for m in stock.modules())
    assert fuse_norm_silu_(fused) == 2 * blocks == 16  # two norms in each residual block
    assert fuse_norm_silu_(fused) == 0  # idempotent
    assert list(fused.state_dict()) == list(stock.state_dict())
    assert any(isinstance(m, FusedRMSNormSiLU) for m in fused.modules())
    x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    with torch.no_grad():
        a, b = stock(x).sample, fused(x).sample  # CPU: the same ops, uncompiled: bit for bit
    assert torch.equal(a, b)


def test_build_channels_last_keeps_the_function():
    from stas.house.train_vae import build

    torch.manual_seed(0)
    vae, _, _ = build("causal", 1e-3, torch.device("cpu"), graph=False, fuse=True, channels_last=True)
    stock = make_vae("causal")
    stock.load_state_dict(vae.state_dict())
    convs = [m for m in vae.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last_3d) for m in convs)
    x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    with torch.no_grad():
        a = vae.eval()(x.contiguous(memory_format=torch.channels_last_3d)).sample
        b = stock.eval()(x).sample
    assert torch.allclose(a, b, atol=1e-5)


def test_gate_transition_classes_follow_the_latent_frames():
    from stas.house.train_vae import transition_classes
    from stas.layout import pixel_frames_of

    first, seams, within = transition_classes("causal", 29)
    # brute force from the other direction: the last pixel frame of each latent frame ends a chunk
    ends = [pixel_frames_of(k)[-1] for k in range(8)]
    assert first == [0] and seams == ends[1:-1] == [4, 8, 12, 16, 20, 24]
    assert sorted(first + seams + within) == list(range(28)) and len(within) == 21
    assert transition_classes("uniform", 8) == ([], list(range(7)), [])


def test_freeze_encoder_keeps_the_latent_space_and_trains_the_decoder():
    from stas.house.train_vae import Batches, Step, build, freeze_encoder_

    torch.manual_seed(0)
    vae, ema, opt = build("causal", 1e-3, torch.device("cpu"), graph=False)
    with torch.no_grad():  # an EMA that differs from the live weights, as after training
        for n in ema:
            ema[n].add_(0.01 * torch.randn_like(ema[n]))
    assert freeze_encoder_(vae, ema) > 0
    frozen = {n: p.clone() for n, p in vae.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("encoder.", "quant_conv.")) for n in frozen)
    assert all(torch.equal(p, ema[n]) for n, p in frozen.items())  # the exported (EMA) encoder
    dec = {n: p.clone() for n, p in vae.named_parameters() if n.startswith("decoder.")}
    x = Batches("causal", 1, 16, 5, torch.device("cpu")).next()
    Step(vae, opt, ema, 1e-4, graph=False, dt_weight=1.0).run(x, 0)
    after = dict(vae.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in frozen.items())
    assert all(torch.equal(ema[n], p) for n, p in frozen.items())  # the EMA of a frozen tensor stays put
    assert sum(not torch.equal(after[n], p) for n, p in dec.items()) > len(dec) // 2


def test_grow_res_blocks_computes_what_the_shipped_vae_computes():
    from stas.house.train_vae import grow_res_blocks

    small = _shipped_vae("causal")
    big = make_vae("causal", num_res_blocks=1)
    big.load_state_dict(grow_res_blocks(small.state_dict(), big, from_nrb=0))
    assert sum(p.numel() for p in big.parameters()) > 1.8 * sum(p.numel() for p in small.parameters())
    video, _, _ = world.sample_clip(7)
    x = video[:9].permute(1, 0, 2, 3)[None, :, :, :64, :64] * 2 - 1  # (1, 3, 9, 64, 64) in [-1, 1]
    with torch.no_grad():
        z_small, z_big = small.encode(x).latent_dist.mode(), big.encode(x).latent_dist.mode()
        torch.testing.assert_close(z_big, z_small, rtol=0, atol=1e-5)
        torch.testing.assert_close(big.decode(z_small).sample, small.decode(z_small).sample, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="shrink"):
        grow_res_blocks(big.state_dict(), small, from_nrb=1)


def test_vae_config_of_refuses_a_resume_with_other_res_blocks(tmp_path):
    import argparse
    import json

    from stas.house.train_vae import vae_config_of

    (tmp_path / "state.json").write_text(json.dumps(dict(step=3, vae_config=dict(num_res_blocks=1))))
    args = argparse.Namespace(res_blocks=None, init=None, variant="causal")
    assert vae_config_of(args, tmp_path) == dict(num_res_blocks=1)  # the checkpoint's, when not given
    args.res_blocks = 0
    with pytest.raises(ValueError, match="checkpoint"):
        vae_config_of(args, tmp_path)
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "vae_report.json").write_text(json.dumps(dict(steps=5)))  # defaults: 0
    args = argparse.Namespace(res_blocks=1, init=str(tmp_path / "exp"), variant="causal")
    assert vae_config_of(args, tmp_path / "none") == dict(num_res_blocks=1)  # grows the export


class _FlickerVAE(torch.nn.Module):
    """A stand-in VAE whose 'reconstruction' is the clip itself plus ``amp`` on every odd frame (in
    [-1, 1]): a flicker of amp / 2 on the [0, 1] scale at every transition, on every pixel."""

    def __init__(self, amp):
        super().__init__()
        self.amp, self.w = amp, torch.nn.Parameter(torch.zeros(()))

    def encode(self, x):
        mode = lambda: x  # noqa: E731
        return type("E", (), {"latent_dist": type("D", (), {"mode": staticmethod(mode)})})

    def decode(self, z):
        flick = torch.zeros_like(z)
        flick[:, :, 1::2] = self.amp
        return type("O", (), {"sample": z + flick})


def test_gate_static_excess_is_the_flicker_on_still_pixels():
    from stas.house.train import EVAL_SEED0
    from stas.house.train_vae import gate

    g = gate(_FlickerVAE(0.0), "causal", clips=8)
    assert g["change_ratio"] == [1.0] * 28 and g["static_excess"] == [0.0] * 28  # a perfect reconstruction
    g1 = gate(_FlickerVAE(0.02), "causal", clips=8)
    video, _ = world.ClipStream(start_seed=EVAL_SEED0 + 99, device="cpu").next(8)  # gate's clips
    rec = video.clone()
    rec[:, :, 1::2] += 0.02
    r01, g01 = (rec.clamp(-1, 1) + 1) / 2, (video + 1) / 2  # (8, 3, 29, H, W)
    d = (g01[:, :, 1:] - g01[:, :, :-1]).abs()
    still = (d.amax(dim=(1, 2)) <= 0.02).float()[:, None, None]  # (8, 1, 1, H, W)
    want = ((r01[:, :, 1:] - r01[:, :, :-1]).abs() * still).mean(dim=(1, 3, 4)).mean(0) / d.mean(dim=(1, 3, 4)).mean(0)
    assert g1["static_fraction"] == pytest.approx(float(still.mean()), abs=1e-3)
    assert np.allclose(g1["static_excess"], want.numpy(), atol=1e-3)
    assert min(g1["static_excess"]) > 0.5  # a 0.01 flicker on still pixels is large against the real change


def test_lr_at_cosine_and_warm_up_by_hand():
    import math

    from stas.house.train_vae import lr_at

    assert lr_at(500, 1e-3) == 1e-3  # constant after warm-up
    assert lr_at(9, 1e-3) == pytest.approx(1e-4)  # (9 + 1) / 100 of the way through the warm-up
    assert lr_at(0, 1e-3, 1e-5, 1000, since_adamw=500) == pytest.approx(1e-3)
    assert lr_at(500, 1e-3, 1e-5, 1000) == pytest.approx((1e-3 + 1e-5) / 2)  # the cosine's midpoint
    assert lr_at(250, 1e-3, 0.0, 1000) == pytest.approx(1e-3 * (1 + math.cos(math.pi / 4)) / 2)
    assert lr_at(1000, 1e-3, 1e-5, 1000) == pytest.approx(1e-5) == lr_at(1500, 1e-3, 1e-5, 1000)
    assert lr_at(50, 1e-3, 1e-5, 1000) == pytest.approx(lr_at(50, 1e-3, 1e-5, 1000, 5000) * 51 / 100)
    with pytest.raises(ValueError, match="--steps"):
        lr_at(0, 1e-3, 1e-5)


def test_train_vae_stops_at_steps_and_records_the_schedule(tmp_path):
    import json

    from stas.house.train_vae import main

    main(["train", "--variant", "causal", "--batch", "2", "--crop", "16", "--steps", "3", "--minutes", "5",
          "--lr-end", "1e-5", "--ema-decay", "0.99", "--graph", "0", "--ckpt", str(tmp_path / "ck")])
    state = json.loads((tmp_path / "ck" / "state.json").read_text())
    assert state["step"] == 3
    assert {k: state["runs"][-1][k] for k in ("start_step", "end_step", "lr_end", "ema_decay")} == dict(
        start_step=0, end_step=3, lr_end=1e-5, ema_decay=0.99)
    with pytest.raises(ValueError, match="--steps"):
        main(["train", "--lr-end", "1e-5", "--ckpt", str(tmp_path / "ck2")])
    assert not (tmp_path / "ck2").exists()  # refused before building anything


def test_train_vae_ab_gates_each_arm_ema_and_live_and_keeps_the_rule(tmp_path):
    """Two tiny arms side by side: each trains its steps (an arm's flag overrides --common's), its live
    weights are exported unchanged, both weights are gated, and the record written before the run keeps
    its rule."""
    import json

    from safetensors.torch import load_file

    from stas.house.train_vae import GATE_KEYS, main

    rec = tmp_path / "ab.json"
    rec.write_text(json.dumps(dict(rule="written before the run")))
    res = main(["ab", "--arm", "a=", "--arm", "b=--dt 1 --steps 3", "--common", "--batch 2 --crop 16 --steps 2 --graph 0",
                "--out", str(tmp_path / "runs"), "--gate-clips", "2", "--export-clips", "2", "--json", str(rec)])
    doc = json.loads(rec.read_text())
    assert doc["rule"] == "written before the run" and doc["arms"] == json.loads(json.dumps(res))
    for name, flags, steps in (("a", "", 2), ("b", "--dt 1 --steps 3", 3)):
        arm = res[name]
        assert (arm["flags"], arm["start_step"], arm["end_step"]) == (flags, 0, steps)
        assert (arm["steps_asked"], arm["completed"]) == (steps, True)
        assert set(arm["gate_ema"]) == set(arm["gate_live"]) == set(GATE_KEYS)
        live = load_file(str(tmp_path / "runs" / name / "live" / "causal" / "vae" / "diffusion_pytorch_model.safetensors"))
        trained = load_file(str(tmp_path / "runs" / name / "ckpt" / "model.safetensors"))
        assert all(torch.equal(live[k], trained[k]) for k in trained)
    assert doc["equal_steps"] is False and doc["gpus"] is None
    with pytest.raises(ValueError, match="repeat"):
        main(["ab", "--arm", "a=", "--arm", "a=--dt 1", "--out", str(tmp_path / "r2")])
    with pytest.raises(ValueError, match="NAME=FLAGS"):
        main(["ab", "--arm", "--dt 1", "--out", str(tmp_path / "r2")])
    n = torch.cuda.device_count()  # a GPU id that is not here: refused, not trained on the CPU
    with pytest.raises(ValueError, match="not CUDA devices"):
        main(["ab", "--arm", "a=", "--gpus", str(n), "--out", str(tmp_path / "r2")])
    assert not (tmp_path / "r2").exists()
    with pytest.raises(ValueError, match="already have a checkpoint"):  # train would resume, not restart
        main(["ab", "--arm", "a=", "--out", str(tmp_path / "runs")])


def test_ab_spreads_arms_over_gpus_round_robin():
    from stas.house.train_vae import arm_env

    base = {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "5"}
    assert [arm_env(i, ["0", "1"], base)["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["0", "1", "0"]
    assert arm_env(1, None, base) == base and arm_env(0, [], base) == base  # no --gpus: inherited as is
    assert arm_env(0, ["1"], base)["PATH"] == "/bin" and base["CUDA_VISIBLE_DEVICES"] == "5"  # copy, not mutation
