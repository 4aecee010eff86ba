"""The helpers notebooks 06/07 write "What we saw" with: table provenance against this checkout,
the STAS setting in words, CI notes and difference text, the baseline vs the VAE-round-trip floor,
the ablation families a table lacks, and the summary table's column headers with and without CIs."""

import math

import pandas as pd
import pytest

from stas import ablations as A
from stas import evaluate as E
from stas.steer import STASConfig

nan = math.nan


def rec(method, metric, mean=nan, sem=nan, diff=nan, lo=nan, hi=nan, p_holm=nan, n=4):
    return dict(method=method, metric=metric, mean=mean, sem=sem, n=n, diff=diff, lo=lo, hi=hi, p=nan, p_holm=p_holm)


def test_summary_frame_header_names_a_ci_only_when_there_is_one():
    no_ci = [rec("baseline", "flicker", 0.02, 0.001), rec("stas", "flicker", 0.021, 0.001, diff=0.001)]
    assert list(E.summary_frame(no_ci).columns) == ["baseline", "stas", "Δ stas"]
    with_ci = no_ci[:1] + [rec("stas", "flicker", 0.021, 0.001, diff=0.001, lo=-0.002, hi=0.004, p_holm=0.01)]
    tab = E.summary_frame(with_ci)
    assert tab.loc["flicker", "Δ stas [95% CI]"] == "+0.001 [-0.002, +0.004]*"


def test_ci_note_and_diff_text():
    assert E.ci_note(E.MIN_PROMPTS_FOR_CI) == ""
    assert E.ci_note(2).startswith(" (no CI: 2 prompts, fewer than the 6 a prompt bootstrap needs")
    assert E.diff_text(dict(diff=-0.00021, lo=nan, hi=nan, p_holm=nan)) == "-0.00021"
    assert E.diff_text(dict(diff=0.5, lo=0.1, hi=0.9, p_holm=0.2)) == "+0.5 [+0.1, +0.9]"
    assert E.diff_text(dict(diff=0.5, lo=0.1, hi=0.9, p_holm=0.01)) == "+0.5 [+0.1, +0.9]*"
    assert E.diff_text(None) == "n/a" and E.diff_text(dict(diff=nan, lo=nan, hi=nan, p_holm=nan)) == "n/a"
    row = pd.DataFrame([dict(diff=-1.0, lo=nan, hi=nan, p_holm=nan)]).iloc[0]   # a pandas row works too
    assert E.diff_text(row) == "-1"


def test_floor_comparison_relations():
    """Baseline above / below / within 2 combined se of vae_floor (the numbers of results/06 for the first two)."""
    s = [rec("baseline", "flicker", 0.0224, 0.0014), rec("vae_floor", "flicker", 0.0099, 0.0003),
         rec("real", "flicker", 0.0018, 0.0001),
         rec("baseline", "seam_excess", -0.0037, 0.0007), rec("vae_floor", "seam_excess", 0.0029, 0.0025),
         rec("baseline", "first", 0.10, 0.01), rec("vae_floor", "first", 0.11, 0.01),
         rec("baseline", "warp_error", 0.02, 0.001)]                          # no floor row: left out
    out = {f["metric"]: f for f in E.floor_comparison(s, ["flicker", "seam_excess", "first", "warp_error"])}
    assert list(out) == ["flicker", "seam_excess", "first"]
    assert out["flicker"]["relation"] == "above" and out["flicker"]["real"] == 0.0018
    # -0.0037 - 0.0029 = -0.0066, 2 * hypot(0.0007, 0.0025) = 0.0052: below
    assert out["seam_excess"]["relation"] == "below" and math.isnan(out["seam_excess"]["real"])
    assert out["first"]["relation"] == "within"                               # |-0.01| <= 2 * 0.0141


def test_steering_text_reads_a_config_repr():
    cfg = STASConfig(steps=2, blocks=(4,), channels=(257, 234))
    assert E.steering_text(repr(cfg), 2) == (
        "K=2 of 2 steps (every step), blocks [4], α=1, channels [257, 234], "
        "positions first_frame+boundary (boundary 1 token), CFG branches cond+uncond")
    t = E.steering_text(repr(STASConfig(steps=1, blocks=(3, 4), channels=(7,), alpha=2.0, boundary_width=2,
                                        boundary_unit="rows", mode="zero")), 10)
    assert t.startswith("K=1 of 10 steps (the first 1), blocks [3, 4], α=2, channels [7]") and "(boundary 2 rows)" in t
    assert t.endswith(", mode zero")
    with pytest.raises(ValueError, match="not a STASConfig"):
        E.steering_text("EnhanceConfig(temperature=1.0)", 2)
    with pytest.raises(ValueError, match="not a STASConfig"):
        E.steering_text("STASConfig(steps=os.system('x'))", 2)


def test_table_provenance_against_this_checkout():
    meta = dict(model="house", weights="abc", vae="def", device="cpu", dtype="float32", prompts=["a", "b"], seeds=[0],
                call=dict(height=64, width=64, num_frames=17, num_inference_steps=2))
    head = E.code_commit().split("+")[0]   # the work tree may be dirty
    if head == "unknown":
        pytest.skip("not a git checkout")
    txt = E.table_provenance(dict(meta, commit=head))
    assert txt.startswith("house, weights abc, VAE def, cpu float32; 2 prompts × 1 seeds, 64x64x17, 2 steps; made at commit ")
    assert "this checkout's HEAD" in txt and "predates" not in txt
    assert E.table_provenance(dict(meta, commit=head, vae=None)).startswith("house, weights abc, no VAE, cpu")
    assert E.table_provenance(dict({k: v for k, v in meta.items() if k != "vae"}, commit=head)).startswith(
        "house, weights abc, VAE not recorded, cpu")
    other = E.table_provenance(dict(meta, commit="0123456789ab"))
    assert "not in this checkout's history" in other
    try:
        parent = E._git("rev-parse", "--short=12", "HEAD~1")
    except Exception:                                        # a depth-1 clone has no parent
        return
    older = E.table_provenance(dict(meta, commit=parent))
    assert f"made at commit {parent}, 1 commit before this checkout's HEAD {head}" in older


def test_missing_families():
    names = A.family_names()
    assert names[:3] == ["alpha", "K (steps)", "CFG branch"] and "zero MAs" in names and len(names) == 9
    table = pd.DataFrame(dict(family=["CFG branch", "alpha", "blocks", "K (steps)", "boundary", "channel set"]))
    assert A.missing_families(table) == ["block", "positions", "zero MAs"]


def test_table_provenance_skips_commits_to_the_house_trainers(tmp_path, monkeypatch):
    import subprocess

    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()

    def commit(path, text):
        f = tmp_path / path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
        git("add", "-A")
        git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", path)
        return git("rev-parse", "--short=12", "HEAD")

    git("init", "-q")
    made = commit("stas/evaluate.py", "a")
    monkeypatch.setattr(E, "_git", git)
    meta = dict(model="house", weights="abc", device="cpu", dtype="float32", prompts=["a"], seeds=[0],
                call=dict(height=64, width=64, num_frames=17, num_inference_steps=2), commit=made)
    for f in E.TRAINING_ONLY:
        commit(f, "trainer")
    commit("README.md", "docs")
    txt = E.table_provenance(meta)
    assert f"{len(E.TRAINING_ONLY) + 1} commits before" in txt and "0 of them changing `stas/`" in txt
    assert "predates" not in txt
    commit("stas/house/metrics.py", "evaluation code")
    txt = E.table_provenance(meta)
    assert f"{len(E.TRAINING_ONLY) + 2} commits before" in txt and "1 of them changing `stas/`" in txt
    assert "**the table predates the current code**" in txt


def test_training_only_modules_are_imported_only_by_command_lines():
    """Every import of a `TRAINING_ONLY` module elsewhere in stas/ sits in a command-line function
    (``main`` or ``*_cli``), so no evaluation runs their code."""
    import ast
    from pathlib import Path

    root = Path(E.__file__).resolve().parents[1]
    only = {f[:-3].replace("/", ".") for f in E.TRAINING_ONLY}
    seen = []
    for path in (root / "stas").rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if rel in E.TRAINING_ONLY:
            continue
        pkg = rel[:-3].split("/")[:-1]   # the package a relative import starts from

        def visit(node, func):
            for child in ast.iter_child_nodes(node):
                name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
                if isinstance(child, ast.ImportFrom):
                    base = ".".join(pkg[:len(pkg) - child.level + 1]) if child.level else ""
                    mod = ".".join(x for x in (base, child.module or "") if x)
                    targets = [mod] + [f"{mod}.{a.name}" for a in child.names]
                elif isinstance(child, ast.Import):
                    targets = [a.name for a in child.names]
                else:
                    targets = []
                for t in set(targets) & only:
                    seen.append((rel, t, func))
                    assert func == "main" or (func or "").endswith("_cli"), f"{rel} imports {t} in {func or 'module'}"
                visit(child, name)

        visit(ast.parse(path.read_text()), None)
    assert ("stas/house/train.py", "stas.house.gates", "gates_cli") in seen   # the check sees the one importer
