"""bench/encoder_bench.py on real texts: GeoNames places (the short texts of an index build) and SciFact
queries, two encoders side by side in one run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_two_encoders_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import encoder_bench
    finally:
        sys.path.remove(str(ROOT / "bench"))
    out = tmp_path / "enc.json"
    args = ["--corpus", "geonames", "--limit", "200", "--queries", "20", "--against", "minilm-int8"]
    assert encoder_bench.main([*args, "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == res
    assert res["encoder"] == "minilm" and res["corpus"] == "geonames" and res["docs"] == 200
    assert res["fields"] == "name. country" and "_vectors" not in res
    other = res["against"]
    assert other["encoder"] == "minilm-int8" and "_vectors" not in other
    for r in (res, other):
        assert r["bulk_sorted"]["texts_per_s"] > 0 and r["query_latency_1_thread"]["n"] == 20
    ratio = other["ratio_to_minilm"]
    assert ratio["bulk_texts_per_s"] == pytest.approx(
        other["bulk_sorted"]["texts_per_s"] / res["bulk_sorted"]["texts_per_s"], rel=1e-2
    )
    cos = other["cosine_to_minilm"]
    assert 0.98 < cos["mean"] < 1.0 and cos["min"] <= cos["p1"] <= cos["mean"]
