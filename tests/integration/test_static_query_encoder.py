"""A static query encoder distilled at build time (real MovieLens-100K titles, real MiniLM teacher), served
over real gRPC beside the same catalog with MiniLM query encoding."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from common.encoders.static import StaticQueryEncoder
from common.v1 import search_pb2 as pb
from common.v1 import search_pb2_grpc
from tests.conftest import ServerThread
from tests.integration.ann_queries import QUERIES, ann_ids, ann_overlaps, build_movielens

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def static_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_movielens(tmp_path_factory, "mlstatic", encoder="minilm", query_encoder="static")


@pytest.fixture(scope="module")
def stub(
    static_snapshot: Path, movielens_snapshot: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[search_pb2_grpc.SearchServiceStub]:
    # the same snapshot without its static part, served with the static setting: ann must say why it is off
    bare = tmp_path_factory.mktemp("snap") / "mlbare"
    shutil.copytree(static_snapshot, bare)
    manifest = json.loads((bare / "manifest.json").read_text())
    manifest["collection"] = "mlbare"
    del manifest["parts"]["vectors"]["query_encoders"]
    (bare / "manifest.json").write_text(json.dumps(manifest))
    static = {"ann": {"query_encoder": "static"}}
    srv = ServerThread(
        [static_snapshot, movielens_snapshot, bare], collections={"mlstatic": static, "mlbare": static}
    )
    try:
        with grpc.insecure_channel(srv.target) as channel:
            yield search_pb2_grpc.SearchServiceStub(channel)
    finally:
        srv.close()


def test_the_build_records_the_distilled_encoder(static_snapshot: Path) -> None:
    manifest = json.loads((static_snapshot / "manifest.json").read_text())
    part = manifest["parts"]["vectors"]
    entry = part["query_encoders"]["static"]
    assert entry["teacher"] == part["encoder"]["fingerprint"]
    assert {f"vectors/{f}" for f in entry["files"]} <= set(part["files"])
    assert entry["held_out_cosine"] > 0.8  # cosine to MiniLM on titles it never fitted


def test_static_queries_land_near_minilm_ones(static_snapshot: Path) -> None:
    from common.encoders import get_encoder
    from common.encoders.minilm import MiniLMEncoder

    model = get_encoder("minilm")
    assert isinstance(model, MiniLMEncoder)
    enc = StaticQueryEncoder.load(static_snapshot / "vectors", model.tokenizer)
    cos = (enc.encode(list(QUERIES)) * model.encode(list(QUERIES))).sum(axis=1)
    assert float(np.mean(cos)) > 0.7, cos  # free-text queries, unlike the titles it was fitted on


def test_static_ann_over_grpc_agrees_with_minilm(stub: search_pb2_grpc.SearchServiceStub) -> None:
    overlap = ann_overlaps(stub, "mlstatic", stub, "movielens")
    assert np.mean(overlap) >= 0.3, overlap
    assert ann_ids(stub, "mlstatic", "star wars")[0] == ann_ids(stub, "movielens", "star wars")[0]


def test_static_setting_without_the_part_disables_ann_with_reason(
    stub: search_pb2_grpc.SearchServiceStub,
) -> None:
    resp = stub.Search(
        pb.SearchRequest(collection="mlbare", query="star wars", top_k=5, debug=True), timeout=10
    )
    ann = next(b for b in resp.branch_stats if b.branch == "ann")
    assert ann.status == pb.BRANCH_STATUS_DISABLED and "--query-encoder static" in ann.detail
    assert resp.hits and resp.hits[0].title == "Star Wars"  # text recall still answers


def test_cli_refuses_a_static_encoder_it_cannot_build(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from quarry.cli import main

    catalog = tmp_path / "c.jsonl"
    catalog.write_text('{"id": "a", "text": {"name": "harbour"}}\n')
    base = [
        "index",
        "build",
        "--catalog",
        str(catalog),
        "--out",
        str(tmp_path / "o"),
        "--query-encoder",
        "static",
    ]
    r = CliRunner().invoke(main, [*base, "--shards", "2"])
    assert r.exit_code == 2 and "single-node snapshots" in r.output
    r = CliRunner().invoke(main, [*base, "--encoder", "none"])
    assert r.exit_code == 2 and "needs --encoder minilm" in r.output
