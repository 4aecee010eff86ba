"""benchmarks/evaluate_sharded.py: the row-for-row comparison behind the README's "rows equal" column,
and the README table is the committed results JSON."""

import json
import math

import pandas as pd

from conftest import load_benchmark

bench = load_benchmark("evaluate_sharded")
ROOT = bench.ROOT


def _table(**over):
    t = pd.DataFrame({"prompt": ["a", "a", "b"], "method": ["baseline", "stas", "baseline"],
                      "flicker": [0.1, 0.2, math.nan], "seconds": [1.0, 2.0, 3.0], "device": ["cuda:0"] * 3})
    for k, v in over.items():
        t[k] = v
    return t


def test_equal_tables_count_every_row_nan_included_and_ignore_seconds_and_device():
    c = bench.compare(_table(), _table(seconds=[9.0, 9.0, 9.0], device=["cuda:1"] * 3))
    assert c == dict(same_shape=True, rows=3, rows_equal=3, columns_differing=[], max_abs_diff={})


def test_a_changed_value_is_found_with_its_size():
    c = bench.compare(_table(), _table(flicker=[0.1, 0.25, math.nan]))
    assert c["rows_equal"] == 2 and c["columns_differing"] == ["flicker"]
    assert math.isclose(c["max_abs_diff"]["flicker"], 0.05)
    assert bench.compare(_table(), _table().iloc[:2])["same_shape"] is False


def test_readme_table_is_the_committed_results():
    res = json.loads(bench.RESULTS.read_text())
    readme = (ROOT / "README.md").read_text()
    a, b = (readme.index(m) for m in bench.MARKERS)
    assert readme[a + len(bench.MARKERS[0]):b].strip() == bench.table(res).strip()
    assert res["compare"]["rows_equal"] == res["compare"]["rows"]
