"""House model tests (CPU, fast): world determinism and ground truth, VAE causality, shipped weights."""
import math

import numpy as np
import pytest
import torch

from stas.house import world
from stas.house.detect import detect, score_clip


def test_world_deterministic():
    v1, c1, g1 = world.sample_clip(11)
    v2, c2, g2 = world.sample_clip(11)
    v3, c3, _ = world.sample_clip(12)
    assert v1.shape == (29, 3, 128, 128)
    assert torch.equal(v1, v2) and c1 == c2 and g1 == g2
    assert not torch.equal(v1, v3)
    assert float(v1.min()) >= 0.0 and float(v1.max()) <= 1.0


def test_ground_truth_matches_detector():
    n_checked = 0
    for seed in range(6):
        video, caption, gt = world.sample_clip(seed, num_frames=9)
        ob = gt["objects"][0]
        assert ob["colour"] in caption and len(ob["position"]) == 9
        det = detect(video, ob["colour"])
        for f in range(9):
            if ob["visibility"][f] > 0.98:
                assert det[f]["present"]
                dx = det[f]["centroid"][0] - ob["position"][f][0]
                dy = det[f]["centroid"][1] - ob["position"][f][1]
                assert math.hypot(dx, dy) < 1.5
                n_checked += 1
    assert n_checked >= 30


def test_score_clip_shape_tie_goes_to_the_shape_seen_first(monkeypatch):
    """Two shapes seen equally often: the one seen first wins, in every process (the old max over a set
    broke the tie by string hash order, which PYTHONHASHSEED changes from run to run)."""
    import stas.house.detect as d

    video = torch.zeros(4, 3, 8, 8)
    for order in (["triangle", "square", "square", "triangle"], ["square", "triangle", "triangle", "square"]):
        fake = [dict(present=True, shape=s, centroid=(4.0, 4.0)) for s in order]
        monkeypatch.setattr(d, "detect", lambda video, colour, masks=None: fake)
        ob = d.score_clip(video, "a red square stays still")["objects"][0]
        assert ob["shape"] == order[0] and ob["shape_ok"] == (order[0] == "square")


def test_motion_and_parse():
    objs = world.parse_prompt("a white square moves right past a red circle")
    assert objs == [dict(colour="white", shape="square", motion="right"),
                    dict(colour="red", shape="circle", motion="still")]
    # a rendered clip scores ok against its own caption for most seeds
    oks = [score_clip(world.sample_clip(s, num_frames=9)[0], world.sample_clip(s, num_frames=9)[1])["ok"]
           for s in range(8)]
    assert sum(oks) >= 7


def test_vae_causality():
    from stas.house.models import make_vae

    torch.manual_seed(0)
    vae = make_vae("causal").eval()
    x = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    with torch.no_grad():
        z1 = vae.encode(x).latent_dist.mode()
        x2 = x.clone()
        x2[:, :, 5] = -x2[:, :, 5]
        z2 = vae.encode(x2).latent_dist.mode()
    assert z1.shape == (1, 16, 3, 4, 4)  # 1 + (9-1)/4 latent frames, /8 spatial
    assert torch.equal(z1[:, :, 0], z2[:, :, 0])  # frame 5 cannot reach latent frame 0
    assert not torch.allclose(z1[:, :, 2], z2[:, :, 2])  # it does reach latent frame 2 (frames 5-8)


def _shipped(variant):
    from stas.house import variant_dir

    d = variant_dir(variant)
    if not (d / "transformer").is_dir():
        pytest.skip(f"no shipped weights for {variant}")
    return d


def test_shipped_vae_shapes_and_causality():
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(str(_shipped("causal") / "vae"))
    video, _, _ = world.sample_clip(3, num_frames=9)
    x = (video.permute(1, 0, 2, 3)[None] * 2 - 1)
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mode()
        x2 = x.clone()
        x2[:, :, 5] = 0
        z2 = vae.encode(x2).latent_dist.mode()
        rec = vae.decode(z).sample
    assert z.shape == (1, 16, 3, 16, 16)
    assert torch.equal(z[:, :, 0], z2[:, :, 0])
    psnr = -10 * torch.log10(((rec.clamp(-1, 1) - x) ** 2).mean() / 4)
    # shipped step 6 845: 43.9 dB on this 9-frame clip (36.4 dB on 32 held-out 29-frame clips, gate 1 in
    # data/house/README.md); a broken or mismatched checkpoint reads far lower
    assert float(psnr) > 30.0


def test_shipped_pipeline_generates():
    from stas.house import load_pipeline

    _shipped("causal")
    pipe = load_pipeline("causal", device="cpu")
    kw = dict(height=128, width=128, num_frames=5, num_inference_steps=2, guidance_scale=3.0,
              max_sequence_length=32, output_type="pt")
    a = pipe(prompt="a red square moves left", generator=torch.Generator().manual_seed(0), **kw).frames[0]
    b = pipe(prompt="a red square moves left", generator=torch.Generator().manual_seed(0), **kw).frames[0]
    assert a.shape == (5, 3, 128, 128)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)
    assert float(a.std()) > 0.005


def test_shipped_uniform_pipeline_frames():
    from stas.house import load_pipeline

    _shipped("uniform")
    pipe = load_pipeline("uniform", device="cpu")
    v = pipe(prompt="a blue circle moves right", num_frames=5, height=128, width=128, num_inference_steps=1,
             guidance_scale=1.0, max_sequence_length=32, output_type="pt",
             generator=torch.Generator().manual_seed(0)).frames[0]
    assert v.shape == (2, 3, 128, 128)  # per-frame VAE: one output frame per latent frame (pixel frames 0, 4)


def test_load_pipeline_from_any_root_gets_the_house_adapter(tmp_path):
    # a pipeline loaded by stas.house.load_pipeline (e.g. staged weights) once got generic Wan's adapter:
    # call_settings gave Wan's 81 x 480 x 832 native call and the uniform layout a temporal factor of 4
    import shutil

    import stas
    from stas.house import DEFAULTS, load_pipeline

    _shipped("uniform")
    shutil.copytree(stas.house.variant_dir("uniform"), tmp_path / "uniform")
    pipe = load_pipeline("uniform", device="cpu", root=tmp_path)
    assert stas.call_settings(pipe) == DEFAULTS["uniform"]
    lay = stas.get_adapter(pipe).layout_for_call(29, 128, 128)
    assert (lay.frames, lay.temporal_factor) == (8, 1)


def test_training_report_uses_stas_definitions():
    """The trainer's MA snapshot: stas.massive's ratios and TokenLayout's position classes (boundary =
    first and last token row of each later latent frame), checked against a direct computation."""
    from stas.house.report import ma_stats
    from stas.layout import TokenLayout
    from stas.load import tiny_random_pipeline

    t = tiny_random_pipeline("wan", text_encoder=False).transformer.eval()
    lat = torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    emb = torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(1))
    outs = {}
    h = t.blocks[1].register_forward_hook(lambda m, i, o: outs.__setitem__("h", o.detach()))
    res = ma_stats(t, lat, emb, levels=(0.5,), seed=3)
    h.remove()
    b = res["0.5"][1]
    a = outs["h"].abs()[0]                                            # (L, D) of the last call: block 1
    c = int(a.amax(0).argmax())
    assert b["top_channel"] == c and b["peak"] == pytest.approx(float(a[:, c].max()))
    assert b["peak_over_median"] == pytest.approx(float(a[:, c].max() / a.median()), rel=1e-5)
    assert b["peak_over_mean"] == pytest.approx(float(a[:, c].max() / a.mean()), rel=1e-5)
    masks = TokenLayout(3, 8, 8).position_masks(1, "rows")
    assert b["boundary"] == pytest.approx(float(a[masks["boundary"], c].mean()), rel=1e-5)
    assert b["first"] == pytest.approx(float(a[masks["first_frame"], c].mean()), rel=1e-5)
    assert len(b["per_frame"]) == 3 and len(b["per_row"]) == 4


def test_uniform_reference_clips_on_the_generated_time_axis():
    """The uniform control's `real` / `vae_floor` rows use the frames its pipeline returns (0, 4, ..., 28),
    not all 29 (their per-transition change would then be 1-frame steps beside 4-frame steps)."""
    from stas.house import load_pipeline
    from stas.house.metrics import real_clips, vae_round_trip
    from stas.house.train import vae_encode

    _shipped("uniform")
    pipe = load_pipeline("uniform", device="cpu")
    prompt = world.EVAL_PROMPTS[0]
    (p, s, clip), = real_clips([prompt], 1, variant="uniform")
    (_, s_full, full), = real_clips([prompt], 1)
    assert s == s_full and clip.shape == (8, 3, 128, 128) and torch.equal(clip, full[::4])
    rec = vae_round_trip(pipe, [clip], "uniform")[0]
    with torch.no_grad():  # the same as encoding the 29-frame clip the way the uniform VAE was trained
        ref = pipe.vae.decode(vae_encode(pipe.vae, full.permute(1, 0, 2, 3)[None] * 2 - 1, "uniform")).sample
    torch.testing.assert_close(rec, ((ref[0].clamp(-1, 1) + 1) / 2).permute(1, 0, 2, 3), rtol=0, atol=1e-6)


def test_train_dit_init_from_export_continues_the_curves(tmp_path):
    import json

    from stas.house.models import make_dit
    from stas.house.train import export_transformer, init_dit_from_export

    torch.manual_seed(0)
    src = make_dit()
    export_transformer({k: v.clone() for k, v in src.state_dict().items()}, tmp_path / "causal" / "transformer")
    rep = dict(steps=700, trained_minutes=12.5, loss_history=[dict(step=650, loss=0.5)],
               ma_history=[dict(step=500, tag="train")])
    (tmp_path / "causal" / "train_report.json").write_text(json.dumps(rep))
    torch.manual_seed(1)
    model = make_dit()
    ema = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    state = init_dit_from_export(tmp_path / "causal", model, ema, dict(step=0, elapsed_s=0.0, variant="causal"))
    assert (state["step"], state["elapsed_s"], state["variant"]) == (700, 750.0, "causal")
    assert state["history"] == rep["loss_history"] and state["ma_history"] == rep["ma_history"]
    for k, v in src.state_dict().items():  # the exported (bf16) weights, in the model and its EMA
        assert torch.equal(model.state_dict()[k], v.to(torch.bfloat16).float()) and torch.equal(ema[k], model.state_dict()[k])


def test_dit_step_skips_a_non_finite_gradient_and_keeps_adamw_state():
    """The uniform DiT went NaN at step 55 150 of the sixth continuation (dit_continuation_2.json) and
    the NaN reached its weights and EMA. A non-finite gradient norm must leave weights, moments and the
    step count as they were; the next finite step must match a run that never saw the bad one."""
    from stas.house.train import step_if_finite

    def run(grads):
        torch.manual_seed(0)
        lin = torch.nn.Linear(4, 3)
        opt = torch.optim.AdamW(lin.parameters(), lr=0.1, fused=True)
        flags = []
        for g in grads:
            for p in lin.parameters():
                p.grad = torch.full_like(p, g)
            flags.append(float(step_if_finite(opt, torch.nn.utils.clip_grad_norm_(lin.parameters(), 1.0))))
        return [p.detach().clone() for p in lin.parameters()], opt.state[lin.weight]["step"].item(), flags

    clean, n_clean, f_clean = run([1.0, -0.5])
    bad, n_bad, f_bad = run([1.0, float("nan"), float("inf"), -0.5])
    assert f_clean == [0.0, 0.0] and f_bad == [0.0, 1.0, 1.0, 0.0] and n_clean == n_bad == 2
    assert all(torch.equal(a, b) for a, b in zip(clean, bad))
    with pytest.raises(ValueError, match="fused"):
        step_if_finite(torch.optim.AdamW(torch.nn.Linear(2, 2).parameters()), torch.tensor(1.0))


def test_grad_norms_match_clip_grad_norm_and_name_the_non_finite_parameter():
    """`grad_norms` + `clip_grads_with_norm_` (the DiT trainer's step) against `clip_grad_norm_` and
    per-parameter `vector_norm`: the same total, bit-identical clipped gradients; a NaN in one parameter's
    gradient flags that parameter alone (the uniform DiT's skipped steps, dit_continuation_3.json)."""
    from stas.house.train import grad_norms, nonfinite_summary

    def model():
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.GELU(), torch.nn.Linear(4, 3))
        net(torch.randn(7, 5)).pow(2).sum().mul(10).backward()
        return list(net.parameters())

    a, b = model(), model()
    per, total = grad_norms(a)
    assert per.dtype == total.dtype == torch.float32 and per.shape == (4,)
    assert torch.allclose(per, torch.stack([p.grad.norm() for p in a]), rtol=1e-6)
    ref = torch.nn.utils.clip_grad_norm_(b, 1.0)
    assert float(ref) > 1.0 and torch.equal(total, ref)  # the gradients are clipped here
    torch.nn.utils.clip_grads_with_norm_(a, 1.0, total)
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(a, b))
    a[2].grad[1, 3] = float("nan")
    a[1].grad = None  # a parameter without a gradient counts 0
    per, total = grad_norms(a)
    assert (~per.isfinite()).tolist() == [False, False, True, False] and per[1] == 0 and not total.isfinite()
    assert nonfinite_summary({"a": 0, "b": 2, "c": 5, "d": 5}, top=2) == "3 parameters, e.g. d 5, c 5"
    assert nonfinite_summary({"a": 0}) == "none"


def test_gates_massive_first_step_ratios_match_a_hook_on_the_first_call():
    """`gates.massive`'s per-block ratios at step 0 (cond) against the block output captured by a plain
    forward hook on the pipeline's first transformer call (the cond branch of step 0)."""
    from stas.house import DEFAULTS, load_pipeline
    from stas.house.gates import massive
    from stas.massive import hidden_ratios

    _shipped("uniform")
    pipe = load_pipeline("uniform", device="cpu")
    prompt = world.EVAL_PROMPTS[1]
    res = massive(pipe, [prompt], seeds=(0,))
    mid = res["mid_block"]
    outs = []
    h = pipe.transformer.blocks[mid].register_forward_hook(lambda m, i, o: outs.append(o.detach()))
    try:
        pipe(prompt=prompt, generator=torch.Generator("cpu").manual_seed(0), output_type="latent", **DEFAULTS["uniform"])
    finally:
        h.remove()
    ref = hidden_ratios(outs[0])
    assert res["mid"]["top_channel"] == int(ref["peak/median"].argmax())
    assert res["mid"]["peak_over_mean"] == pytest.approx(float(ref["peak/mean"].max()), rel=1e-4)
    # the median is record's sampled median (exact q-quantile for q in 1/2 +- 0.0101): a few % at most
    assert res["mid"]["peak_over_median"] == pytest.approx(float(ref["peak/median"].max()), rel=0.05)
    assert {r["channel"] for r in res["hierarchy"]} == set(res["ma_channels"])
    assert len(res["hierarchy"]) == len(res["ma_channels"]) * 2 * len(pipe.transformer.blocks)


def test_gates_conditioning_against_direct_velocities():
    """Pair 0 recomputed by hand: the clip's latents (VAE mode, training normalisation), noise from the
    seeded generator, velocity for caption 0 and caption 1 at timestep 750."""
    from stas.house import load_pipeline
    from stas.house.gates import HELDOUT_SEED0, conditioning
    from stas.house.train import norm_stats, vae_encode

    _shipped("uniform")
    pipe = load_pipeline("uniform", device="cpu")
    res = conditioning(pipe, "uniform", pairs=3, t=0.75, seed=5)
    video, caps = world.ClipStream(start_seed=HELDOUT_SEED0 + 10_000).next(3)
    assert caps[0] != caps[1]
    m, s = norm_stats(pipe.vae, "cpu")
    with torch.no_grad():
        x0 = (vae_encode(pipe.vae, video, "uniform") - m) / s
        xt = (0.25 * x0 + 0.75 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(5)))[:1]
        e = [pipe.encode_prompt(c, do_classifier_free_guidance=False, max_sequence_length=32)[0] for c in caps[:2]]
        v = [pipe.transformer(xt, torch.tensor([750.0]), x, return_dict=False)[0] for x in e]
    assert res["rel_l2"][0] == pytest.approx(float((v[0] - v[1]).norm() / v[0].norm()), abs=2e-4)
    assert res["median"] == pytest.approx(float(np.median(res["rel_l2"])), abs=1e-4)
    assert res["pass"] == (res["median"] >= 0.10)


def test_conditioning_crossover_shares_the_gate_and_a_caption_blind_model_reads_clip_a():
    """Its relative L2 is the conditioning gate's (same clips, noise, t); with every caption encoded
    the same (a model blind to its caption), the prediction for caption b is the one for caption a:
    it reads clip a exactly as often, and the caption-b score falls to the chance level."""
    from stas.house import load_pipeline
    from stas.house.gates import conditioning, conditioning_crossover

    _shipped("uniform")
    pipe = load_pipeline("uniform", device="cpu")
    res = conditioning_crossover(pipe, "uniform", ts=(0.75,), pairs=3, seed=5)[0.75]
    assert res["rel_l2"] == pytest.approx(conditioning(pipe, "uniform", pairs=3, t=0.75, seed=5)["median"], abs=1e-6)
    assert res["pairs"] == 3 and 0 < res["a_reads_a"] <= 1
    enc = pipe.encode_prompt
    pipe.encode_prompt = lambda prompts, **kw: enc(["a red square moving left"] * len(prompts), **kw)
    blind = conditioning_crossover(pipe, "uniform", ts=(0.75,), pairs=3, seed=5)[0.75]
    assert blind["rel_l2"] == 0.0
    assert (blind["b_reads_a"], blind["b_reads_b"]) == (blind["a_reads_a"], blind["a_reads_b"])


def test_named_swap_takes_only_what_the_caption_names():
    from stas.house.gates import HELDOUT_SEED0, named_swap

    seeds = list(range(HELDOUT_SEED0 + 10_000, HELDOUT_SEED0 + 10_016))
    pa, pb = world.sample_params(seeds), world.sample_params(seeds[1:] + seeds[:1])
    out = named_swap(pa, pb)
    assert out.caption == pb.caption and pa.caption != pb.caption   # pa itself is left alone
    for k in range(len(seeds)):
        n = len(world.parse_prompt(pb.caption[k]))
        for i in range(pa.colour.shape[1]):
            swapped = i < n and pa.active[k, i]
            assert out.colour[k, i] == (pb if swapped else pa).colour[k, i]
            assert out.shape[k, i] == (pb if swapped else pa).shape[k, i]
    for f in ("motion", "radius", "p0", "vel", "active", "bg", "bg_dir"):
        assert np.array_equal(getattr(out, f), getattr(pa, f))
    same = named_swap(pa, pa)   # a caption's own objects: nothing changes
    assert np.array_equal(same.colour, pa.colour) and np.array_equal(same.shape, pa.shape)


def test_conditioning_ceiling_pair_by_hand():
    """Pair 0: clip 0's latents, clip 0 re-rendered with clip 1's caption's colours and shapes, the
    seeded noise; ||x0_a - x0_b|| / (t ||eps - x0_a||)."""
    from diffusers import AutoencoderKLWan

    from stas.house import variant_dir
    from stas.house.gates import HELDOUT_SEED0, conditioning_ceiling, named_swap
    from stas.house.train import norm_stats, vae_encode

    _shipped("uniform")
    vae = AutoencoderKLWan.from_pretrained(str(variant_dir("uniform") / "vae"), dtype=torch.float32).eval()
    res = conditioning_ceiling(vae, "uniform", pairs=3, t=0.75, seed=5)
    pa = world.sample_params(range(HELDOUT_SEED0 + 10_000, HELDOUT_SEED0 + 10_003))
    pb = world.sample_params([HELDOUT_SEED0 + 10_001, HELDOUT_SEED0 + 10_002, HELDOUT_SEED0 + 10_000])
    assert pa.caption[0] != pb.caption[0]
    m, s = norm_stats(vae, "cpu")
    with torch.no_grad():
        video = world.ClipStream(start_seed=HELDOUT_SEED0 + 10_000).next(3)[0]
        x0a = (vae_encode(vae, video, "uniform") - m) / s
        vb = world.render_batch(named_swap(pa, pb))[0].permute(0, 2, 1, 3, 4) * 2 - 1
        x0b = (vae_encode(vae, vb, "uniform") - m) / s
    eps = torch.randn(x0a.shape, generator=torch.Generator().manual_seed(5))
    want = float((x0a[0] - x0b[0]).norm() / (0.75 * (eps[0] - x0a[0]).norm()))
    assert res["rel_l2"][0] == pytest.approx(want, abs=1e-4) and want > 0.05   # a named change moves the latents
    assert res["median"] == pytest.approx(float(np.median(res["rel_l2"])), abs=1e-4)


def test_heldout_prompts_come_from_untrained_seeds():
    from stas.house.gates import HELDOUT_SEED0, heldout_prompts

    assert HELDOUT_SEED0 > 1_000_000_000  # training pools draw seeds < 1e9
    p = heldout_prompts(8)
    assert p == list(world.sample_params(range(HELDOUT_SEED0, HELDOUT_SEED0 + 8)).caption)
    assert all(world.parse_prompt(x) for x in p)


def test_gates_conditioning_trajectory_first_step_by_hand():
    """The pre-hook's first conditional input is the pipeline's initial noise (same generator): the
    value at the first timestep recomputed from `prepare_latents` directly."""
    from stas.house import DEFAULTS, load_pipeline
    from stas.house.gates import HELDOUT_SEED0, conditioning_trajectory, heldout_prompts

    _shipped("uniform")
    pipe = load_pipeline("uniform", device="cpu")
    res = conditioning_trajectory(pipe, "uniform", pairs=1, seed=3)
    call = DEFAULTS["uniform"]
    pipe.scheduler.set_timesteps(call["num_inference_steps"])
    ts = pipe.scheduler.timesteps
    assert list(res) == [round(float(t) / 1000, 3) for t in ts]
    a, b = heldout_prompts(2, HELDOUT_SEED0 + 30_000)
    x = pipe.prepare_latents(1, 16, 128, 128, call["num_frames"], torch.float32, "cpu", torch.Generator("cpu").manual_seed(3))
    with torch.no_grad():
        e = [pipe.encode_prompt(p, do_classifier_free_guidance=False, max_sequence_length=32)[0] for p in (a, b, "")]
        v = [pipe.transformer(x, ts[:1], y, return_dict=False)[0] for y in e]
    first = res[round(float(ts[0]) / 1000, 3)]
    assert first["prompts"] == pytest.approx(float((v[0] - v[1]).norm() / v[0].norm()), rel=1e-4)
    assert first["cond_vs_uncond"] == pytest.approx(float((v[0] - v[2]).norm() / v[0].norm()), rel=1e-4)


def test_gates_motion_by_direction_counts_knowable_motions():
    from stas.house.gates import motion_by_direction

    clips = [dict(objects=[dict(motion="up", motion_ok=True), dict(motion="still", motion_ok=False)]),
             dict(objects=[dict(motion="up", motion_ok=False), dict(motion="bounce", motion_ok=None)])]
    assert motion_by_direction(clips) == {"still": 0.0, "up": 0.5}
    from stas.house.report import motion_rate

    assert motion_rate(clips) == pytest.approx(1 / 3) and motion_rate([dict(objects=[])]) == 0.0


def test_samples_figure_needs_weights(tmp_path):
    from stas.house.report import samples_figure

    (tmp_path / "causal").mkdir()  # a variant folder without a transformer does not count
    with pytest.raises(FileNotFoundError, match="no <variant>/transformer"):
        samples_figure(tmp_path)


def test_flow_matching_batch_is_the_recipe_and_recomputable_per_step():
    """`flow_matching_batch` (the DiT trainer's batch, shared with `stas.house.nonfinite`): pool rows, caption
    dropout to the empty caption, image steps (frame 0, batch x4), x_t and the velocity by hand; a step's batch
    recomputed alone is bit-identical; the pool rows pinned at 85fe1b9's inline code (so a resumed run draws
    the batches it would have drawn)."""
    from stas.house.train import flow_matching_batch

    gen = torch.Generator().manual_seed(0)
    lat = torch.randn(50, 4, 3, 2, 2, generator=gen).bfloat16()
    emb, empty = torch.randn(50, 5, 6, generator=gen).bfloat16(), torch.zeros(1, 5, 6).bfloat16()
    b = flow_matching_batch(0, lat, emb, empty, batch=8)
    assert b["idx"][:6].tolist() == [44, 35, 48, 15, 40, 39]  # 85fe1b9's one_step, CPU, seed 1
    assert not b["image_step"] and b["x0"].shape == (8, 4, 3, 2, 2) and b["x0"].dtype == torch.float32
    assert torch.equal(b["x0"], lat[b["idx"]].float())
    tt = b["t"].view(-1, 1, 1, 1, 1)
    assert torch.equal(b["xt"], (1 - tt) * b["x0"] + tt * b["noise"]) and torch.equal(b["target"], b["noise"] - b["x0"])
    assert ((b["t"] > 0) & (b["t"] < 1)).all()
    im = flow_matching_batch(3, lat, emb, empty, batch=8)  # every 4th step: frame 0 alone, 4x the batch
    assert im["image_step"] and im["x0"].shape == (32, 4, 1, 2, 2) and torch.equal(im["x0"], lat[im["idx"], :, :1].float())
    big = flow_matching_batch(5, lat, emb, empty, batch=4000, image_every=0, cfg_drop=0.25)
    dropped = (big["cond"] == 0).flatten(1).all(1)
    assert torch.equal(big["cond"][~dropped], emb[big["idx"][~dropped]].float())
    assert abs(float(dropped.float().mean()) - 0.25) < 0.03
    again = flow_matching_batch(0, lat, emb, empty, batch=8)
    assert all(torch.equal(b[k], again[k]) for k in ("idx", "cond", "t", "noise", "xt"))
    assert not torch.equal(flow_matching_batch(1, lat, emb, empty, batch=8)["noise"], b["noise"])


def test_nonfinite_probe_names_the_query_path_and_removes_its_hooks():
    """`stas.house.nonfinite`'s probe, on the house DiT (CPU, float32): a NaN planted in 4 entries of one
    sample's query gradient (at block 0's norm_q output, where the cuDNN backward's dq arrives) is reported
    there and for that sample's t alone, norm_k's gradient stays finite, the non-finite parameters are the query
    path's (to_q, not to_k: as in the uniform DiT's skipped steps), and the probe's hooks go on exit."""
    from stas.house.models import make_dit
    from stas.house.nonfinite import BlockZeroProbe, backward_once
    from stas.house.train import flow_matching_batch

    torch.manual_seed(0)
    model = make_dit().train()
    names, plist = zip(*model.named_parameters())
    lat, emb = torch.randn(4, 16, 1, 16, 16), torch.randn(4, 32, 384)
    b = flow_matching_batch(0, lat, emb, torch.zeros(1, 32, 384), batch=2, image_every=0)
    norm_q = model.blocks[0].attn1.norm_q

    def plant(module, inputs, out):
        def nan_in_sample_1(g):
            g = g.clone()
            g[1, 0, :4] = float("nan")
            return g
        out.register_hook(nan_in_sample_1)

    with BlockZeroProbe(model) as probe:
        clean = backward_once(model, list(plist), names, b, probe, autocast=False)
        handle = norm_q.register_forward_hook(plant, prepend=True)  # before the probe's, so the probe sees the NaN
        try:
            r = backward_once(model, list(plist), names, b, probe, autocast=False)
        finally:
            handle.remove()
    assert clean["finite"] and clean["norm_q.grad_out.finite"] and not clean["nonfinite_params"]
    assert not r["finite"] and not r["norm_q.grad_out.finite"] and r["norm_q.grad_out.nonfinite"] == 4
    assert r["norm_q.grad_out.t_of_bad_samples"] == [round(float(b["t"][1]), 4)]
    assert r["norm_k.grad_out.finite"] and r["norm_k.grad_in.finite"]
    assert {"blocks.0.attn1.to_q.weight", "blocks.0.attn1.norm_q.weight"} <= set(r["nonfinite_params"])
    assert not any(n.startswith(("blocks.0.attn1.to_k", "blocks.1.")) for n in r["nonfinite_params"])
    assert not norm_q._forward_hooks and not model.blocks[0].attn1.norm_k._forward_hooks


def test_dit_trainer_keeps_attention_off_cudnn_by_default():
    """cuDNN SDPA's backward gave the uniform DiT non-finite query gradients (1-4 % of steps skipped); without it
    no step was skipped in 24 614 (data/house/dit_continuation_6.json), so `train dit` leaves it off unless asked."""
    from stas.house.train import build_parser
    assert build_parser().parse_args(["dit"]).cudnn_attention is False
    assert build_parser().parse_args(["dit", "--cudnn-attention"]).cudnn_attention is True
    assert build_parser().parse_args(["dit", "--no-cudnn-attention"]).cudnn_attention is False  # earlier runs' lines
