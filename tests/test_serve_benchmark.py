"""Smoke test of the serving benchmark: a real server, a few streaming clients, figures that are
numbers (not their values), and the RESULTS.md section it writes."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("fastapi", reason='the server needs the serve extra: pip install -e ".[serve]"')


def test_serving_benchmark_quick(tmp_path):
    from benchmarks import serving

    results = serving.run(quick=True, levels=(1, 3), requests=1, tokens=6)
    assert [level["clients"] for level in results["levels"]] == [1, 3]
    for level in results["levels"]:
        assert level["characters"] == 6 * level["clients"]
        assert level["chars_per_s"] > 0 and math.isfinite(level["ttfc_p95_ms"])
    out = tmp_path / "RESULTS.md"
    out.write_text("# Benchmark results\n\nkept\n")
    about = {"started": "now", "machine": {"cpu": "cpu", "cores": 2, "load": "0"}}
    serving.write_section(out, serving.render(results, about))
    serving.write_section(out, serving.render(results, about))  # replaced, not appended
    text = out.read_text()
    assert text.count(serving.BEGIN) == 1 and "kept" in text and "| 3 | 3 |" in text
    assert serving.percentile([5.0, 1.0, 3.0, 2.0], 50) == 2.0
