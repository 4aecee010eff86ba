"""stas.evaluate and the house plug-in's metrics: the evaluation table on the tiny random Wan pipeline
(1 prompt x 1 seed), paired rows and expected columns; house metrics only where they apply; the
statistics of the summary; the ablation grid."""

import csv
import json

import numpy as np
import pytest
import torch

import stas
from stas.evaluate import clip_metrics, evaluate, paired, reference_rows, summary_frame, summarize_rows
from stas.house.metrics import HOUSE_METRICS, house_metrics

PROMPT = "a red square moves left"
METHODS = ("baseline", "stas", "enhance")


def test_clip_metrics_on_a_static_clip():
    m = clip_metrics(torch.full((9, 3, 32, 32), 0.3), PROMPT, metrics_={"house": house_metrics})
    assert m["flicker"] == 0 and m["object_speed"] == 0 and m["warp_error"] == 0 and m["flicker_score"] == 1.0
    assert m["seam_excess"] == 0 and m["first"] == 0 and m["adherence"] == 0.0   # a house prompt: nothing drawn -> 0
    assert [k for k in m if k.startswith("d_")] == [f"d_{i:02d}" for i in range(8)]
    assert "adherence" not in clip_metrics(torch.full((9, 3, 32, 32), 0.3), PROMPT)  # temporal metrics only


def test_house_metrics_not_applicable_outside_the_world():
    """A prompt that names no house-world object gets NaN ("not applicable"), never 0."""
    v = torch.full((9, 3, 32, 32), 0.3)
    m = house_metrics(v, "a brown dog runs along a sandy beach")
    assert set(m) == set(HOUSE_METRICS) and all(np.isnan(x) for x in m.values())
    assert house_metrics(v, PROMPT)["adherence"] == 0.0


def test_uniform_seams_count_every_transition():
    """Temporal factor 1 (the house uniform control): each of the 7 transitions of 8 frames crosses
    latent frames; there is no within-chunk transition, so the seam excess is undefined (NaN) and the
    per-transition change (transitions 1..6, the first frame's on its own) is the measure."""
    v = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    m = clip_metrics(v, None, temporal_factor=1)
    assert np.isnan(m["seam_excess"]) and np.isnan(m["within_mean"])
    assert m["seam_mean"] == pytest.approx(np.mean([m[f"d_{i:02d}"] for i in range(1, 7)]))
    assert m["per_transition"] == m["seam_mean"] and m["first"] == m["d_00"]


def test_evaluate_cli_table(tmp_path, monkeypatch):
    from stas.__main__ import main

    monkeypatch.setenv("STAS_MODEL", "tiny-random-wan")
    out = tmp_path / "results.csv"
    main(["evaluate", "--prompts", "house:1", "--seeds", "1", "--methods", ",".join(METHODS), "--out", str(out),
          "--real-per-prompt", "2", "--steps", "2", "--channels", "3",    # random weights: no MA to measure
          "--dtype", "bfloat16"])   # not the CPU default: the option reaches the loaded pipeline
    rows = list(csv.DictReader(open(out)))
    assert [r["method"] for r in rows] == list(METHODS)
    assert {(r["prompt"], r["seed"]) for r in rows} == {(PROMPT, "0")}  # paired: same prompt and seed
    need = {"prompt", "seed", "method", "seconds", "first", "seam_excess", "per_transition", "flicker",
            "flicker_score", "warp_error", "object_speed", "d_00", "d_07", "commit", "weights", "device", "dtype"}
    assert need <= set(rows[0])
    assert rows[0]["device"] == "cpu" and rows[0]["dtype"] == "bfloat16" and len(rows[0]["weights"]) >= 8
    assert not set(HOUSE_METRICS) & set(rows[0])   # the tiny model registered no house metrics
    doc = json.loads(out.with_suffix(".json").read_text())
    assert len(doc["rows"]) == 3 and "channels=(3,)" in doc["meta"]["methods"]["stas"]
    assert not [d for d in doc["summary"] if d["metric"] == "kid"]   # no feature extractor registered
    assert doc["meta"]["weights"] == rows[0]["weights"]
    assert (tmp_path / "results_summary.csv").exists()
    assert not list(tmp_path.glob(".results.rank*"))  # shards merged and removed


def test_evaluate_api_pairs_and_differs(wan):
    kw = dict(stas.native_defaults(wan), num_inference_steps=2)
    cfg = stas.STASConfig(alpha=2.0, steps=2, blocks=(1,), channels=(3,))
    rows, extra = evaluate(wan, [PROMPT], [0, 1], {"baseline": None, "stas": cfg}, kw,
                           metrics_={"house": house_metrics}, keep_videos=True, progress=False, warmup=False)
    assert rows[0]["adherence"] == 0.0 and "adherence" in rows[0]   # metric functions passed in are used
    assert [(r["seed"], r["method"]) for r in rows] == [(s, m) for s in (0, 1) for m in ("baseline", "stas")]
    v = extra["videos"]
    assert not torch.equal(v[(PROMPT, 0, "stas")], v[(PROMPT, 0, "baseline")])
    a, b = paired(rows, "flicker", "stas")
    assert len(a) == len(b) == 2
    summ = summarize_rows(rows)
    d = next(x for x in summ if x["method"] == "stas" and x["metric"] == "flicker")
    assert d["diff"] == pytest.approx(float(np.mean(a - b))) and d["n"] == 2
    assert d["n_prompts"] == 1 and np.isnan(d["lo"])   # one prompt: no prompt-level CI
    tab = summary_frame(summ)
    assert tab.loc["flicker", "baseline"].endswith("(n=2)") and "Δ stas" in tab.columns   # no CI: no [95% CI]


def test_world_clip_scores_as_ground_truth():
    from stas.house.metrics import matched_world_seeds, real_clips

    prompt = "a blue circle moves right"
    (seed,) = matched_world_seeds([prompt], 1)
    ((p, s, clip),) = real_clips([prompt], 1)
    assert (p, s) == (prompt, seed) and clip.shape == (29, 3, 128, 128)
    (r,) = reference_rows([(p, s, clip)], 4, {"house": house_metrics})
    assert r["method"] == "real" and r["adherence"] == 1 and r["persist_ok"] == 1 and r["motion_acc"] == 1
    assert r["traj_jerk"] < 0.2 and r["size_cv"] < 0.02   # constant-speed motion, constant size
    assert r["flicker"] < 0.01 and abs(r["seam_excess"]) < 1e-3   # no seam structure in real clips


def test_summary_bootstrap_holm_and_references():
    """Paired differences resample prompts; Holm adjusts across the methods of one metric; the
    unpaired reference rows (real, vae_floor) get means only."""
    from stas.statistics import holm, paired_bootstrap_ci

    rng = np.random.default_rng(0)
    rows = []
    for p in range(6):
        for s in range(2):
            base = rng.normal()
            for m, shift in (("baseline", 0.0), ("stas", -1.0), ("control_positions", 0.05)):
                rows.append(dict(prompt=f"p{p}", seed=s, method=m, seam_excess=base + shift + 0.1 * rng.normal()))
    rows += [dict(prompt="p0", seed=99, method="vae_floor", seam_excess=0.5)]
    summ = summarize_rows(rows)
    got = {d["method"]: d for d in summ if d["metric"] == "seam_excess"}
    a, b, g = paired(rows, "seam_excess", "stas", groups=True)
    ref = paired_bootstrap_ci(a, b, g, min_groups=6)
    assert got["stas"]["diff"] == pytest.approx(ref["mean_diff"]) and got["stas"]["lo"] == ref["lo"]
    assert got["stas"]["n_prompts"] == 6 and got["stas"]["hi"] < 0
    ps = [got["stas"]["p"], got["control_positions"]["p"]]
    assert [got["stas"]["p_holm"], got["control_positions"]["p_holm"]] == pytest.approx(list(holm(ps)))
    assert got["vae_floor"]["mean"] == 0.5 and np.isnan(got["vae_floor"]["diff"])


def test_kid_by_method_and_prompt_counts():
    from stas.evaluate import default_prompts, kid_by_method, read_prompts

    rng = np.random.default_rng(0)
    real = rng.normal(size=(20, 4))
    k = kid_by_method({"a": rng.normal(size=(20, 4)), "b": rng.normal(size=(20, 4)) + 2, "c": rng.normal(size=(2, 4))},
                      real)
    assert k["a"]["lo"] < 0 < k["a"]["hi"] and k["b"]["lo"] > 0 and np.isnan(k["c"]["kid"])
    assert len(read_prompts("house:32")) == 32 and len(set(read_prompts("house"))) >= 32
    with pytest.raises(ValueError, match="only"):
        default_prompts(["a", "b"], 3)
    with pytest.raises(ValueError, match="only"):
        read_prompts("house:1000")


def test_floor_rows_vae_round_trip_on_house():
    """The house model registers its VAE round trip: a real clip and its reconstruction give the
    ``real`` and ``vae_floor`` rows; the round trip adds the seam artefact the real clip lacks."""
    from stas.evaluate import floor_rows
    from stas.registry import entry

    pipe = stas.load("house")
    clips = entry("house").reference([PROMPT], 1, None)
    rows = floor_rows(pipe, clips)
    assert [r["method"] for r in rows] == ["real", "vae_floor"]
    real, floor = rows
    assert abs(real["seam_excess"]) < 1e-3 and floor["seam_excess"] > 10 * abs(real["seam_excess"])
    assert "adherence" in floor and (floor["prompt"], floor["seed"]) == (real["prompt"], real["seed"])


def test_ablation_grid_cli_holm_and_picks(tmp_path, monkeypatch):
    """`--grid ablations`: every family's settings against one paired baseline; Holm within a family;
    the pick rule records the table row that chose each value (none qualifies at this size)."""
    import pandas as pd

    from stas.__main__ import main
    from stas.ablations import DECISIONS, PICK_RULE

    monkeypatch.setenv("STAS_MODEL", "tiny-random-wan")
    out = tmp_path / "abl.csv"
    main(["evaluate", "--grid", "ablations", "--prompts", "house:2", "--seeds", "1", "--out", str(out),
          "--real-per-prompt", "0", "--steps", "2", "--channels", "3", "5"])
    doc = json.loads(out.with_suffix(".json").read_text())
    tab = pd.read_csv(tmp_path / "abl_summary.csv")
    assert {"CFG branch", "blocks", "boundary", "channel set", "alpha", "K (steps)"} <= set(tab["family"])
    assert {"control: random positions", "control: random channel", "cond", "uncond", "both", "1 row"} <= set(tab["setting"])
    fam = tab[(tab["family"] == "channel set") & (tab["metric"] == "flicker")]
    assert (fam["n_prompts"] == 2).all() and fam["p"].isna().all()   # 2 prompts: no CI, no p (MIN_PROMPTS_FOR_CI)
    assert doc["meta"]["pick_rule"] == PICK_RULE and len(doc["meta"]["picks"]) == len(DECISIONS)
    assert all(p["row"] is None or p["row"] in set(tab["row"]) for p in doc["meta"]["picks"])
    rows = pd.read_csv(out)
    assert rows.groupby("method").size().eq(2).all() and {"commit", "weights", "device", "dtype"} <= set(rows)


def test_ablation_table_holm_per_family_and_pick_rule():
    """Synthetic rows, 6 prompts x 2 seeds: Holm adjusts within a family; the rule picks the largest
    significant seam-excess reduction without significant flicker harm, and names its row."""
    import dataclasses

    from stas.ablations import ablation_table, pick_defaults
    from stas.statistics import holm

    base = stas.STASConfig(steps=2, blocks=(1,), channels=(3,))
    groups = {"alpha": {"α=1": base, "α=2": dataclasses.replace(base, alpha=2.0),
                        "α=4": dataclasses.replace(base, alpha=4.0)}}
    where = {("alpha", "α=1"): "s0", ("alpha", "α=2"): "s1", ("alpha", "α=4"): "s2"}
    effect = {"baseline": (0, 0), "s0": (-0.5, 0), "s1": (-1.0, 0), "s2": (-2.0, 1.0)}   # (seam, flicker)
    rng = np.random.default_rng(1)
    rows = [dict(prompt=f"p{p}", seed=s, method=m, seam_excess=e[0] + 0.05 * rng.normal(),
                 flicker=e[1] + 0.05 * rng.normal(), adherence=1.0)
            for p in range(6) for s in range(2) for m, e in effect.items()]
    t = ablation_table(rows, where, groups, ("seam_excess", "flicker", "adherence"))
    fam = t[t["metric"] == "seam_excess"]
    assert np.allclose(fam["p_holm"], holm(fam["p"].to_numpy())) and (fam["n_prompts"] == 6).all()
    (pick,) = pick_defaults(t, groups, base)
    # α=4 reduces most but harms flicker: α=2 is picked, with the row that chose it
    assert pick["setting"] == "α=2" and pick["value"] == (2.0,) and pick["row"] == "alpha/α=2/seam_excess"


def test_cli_refused_input_exits_2_with_the_message_and_no_traceback(capsys, tmp_path):
    from stas.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--prompts", "house:999", "--out", str(tmp_path / "t.csv")])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "error: asked for 999 prompts, only 32 exist" in err and "Traceback" not in err
