"""Property-based fuzzing (hypothesis) of the public gRPC API and the catalog reader.

Every answer to a random or hostile request — any field values, huge strings and lists, NaN/inf, control
and astral characters, random and truncated bytes (invalid UTF-8 included) — is OK or INVALID_ARGUMENT /
NOT_FOUND with a message, never INTERNAL or UNKNOWN, and the server keeps answering. A few hundred cases
per property here; `QUARRY_FUZZ_EXAMPLES=10000 pytest tests/integration/test_fuzz.py` for the long run.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.catalog import CatalogError, read_events, read_items
from common.v1 import search_pb2 as pb
from common.v1 import search_pb2_grpc

pytestmark = pytest.mark.integration
EXAMPLES = int(os.environ.get("QUARRY_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
COLLECTIONS = st.sampled_from(["tiny", "geonames", "movielens", "", "nope", "x" * 300])
TEXT = st.one_of(
    st.text(max_size=64),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=600),
    st.sampled_from(["上海", "title:x AND *", "\x00\x01", "🙂" * 50, "a" * 5000, " ", "\u202e"]),
)
FLOAT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e308, -91.0, 181.0])
)
INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
#: Request options: real branch names (some not in every pipeline), hostile ones, fusion names.
BRANCHES = st.lists(
    st.one_of(st.sampled_from(["inverted", "ann", "geo", "behavior", "popular", "", "INVERTED"]), TEXT),
    max_size=40,
)
FUSION = st.one_of(st.sampled_from(["", "rrf", "weighted", "RRF", "borda"]), TEXT)


@st.composite
def filters(draw: st.DrawFn, msg: pb.Filters) -> None:
    msg.categories.extend(draw(st.lists(TEXT, max_size=5)))
    msg.tags.extend(draw(st.lists(TEXT, max_size=5)))
    msg.exclude_ids.extend(draw(st.lists(TEXT, max_size=5)))
    for _ in range(draw(st.integers(0, 3))):
        r = msg.ranges.add(field=draw(st.sampled_from(["population", "year", "", "nope"])))
        if draw(st.booleans()):
            r.min = draw(FLOAT)
        if draw(st.booleans()):
            r.max = draw(FLOAT)
        r.min_exclusive, r.max_exclusive = draw(st.booleans()), draw(st.booleans())


@st.composite
def search_requests(draw: st.DrawFn) -> bytes:
    req = pb.SearchRequest(collection=draw(COLLECTIONS), query=draw(TEXT), user_id=draw(TEXT))
    req.top_k, req.radius_m, req.debug = draw(INT32), draw(FLOAT), draw(st.booleans())
    if draw(st.booleans()):
        req.location.lat, req.location.lon = draw(FLOAT), draw(FLOAT)
    draw(filters(req.filters))
    req.branches.extend(draw(BRANCHES))
    req.fusion = draw(FUSION)
    return req.SerializeToString()


@st.composite
def recommend_requests(draw: st.DrawFn) -> bytes:
    req = pb.RecommendRequest(collection=draw(COLLECTIONS), user_id=draw(TEXT), top_k=draw(INT32))
    req.radius_m, req.debug = draw(FLOAT), draw(st.booleans())
    if draw(st.booleans()):
        req.location.lat, req.location.lon = draw(FLOAT), draw(FLOAT)
    draw(filters(req.filters))
    req.branches.extend(draw(BRANCHES))
    req.fusion = draw(FUSION)
    return req.SerializeToString()


@st.composite
def log_events_requests(draw: st.DrawFn) -> bytes:
    req = pb.LogEventsRequest(collection=draw(COLLECTIONS))
    for _ in range(draw(st.integers(0, 20))):
        req.events.add(
            event_id=draw(TEXT), user_id=draw(TEXT), item_id=draw(TEXT), type=draw(TEXT),
            ts=draw(FLOAT), weight=draw(FLOAT),
        )  # fmt: skip
    return req.SerializeToString()


def mangle(body: bytes, cut: int, junk: bytes) -> bytes:
    """Truncated, or with random bytes appended (invalid UTF-8 and bad tags included)."""
    return body[: cut % (len(body) + 1)] + junk


def _call(server: str, method: str, body: bytes) -> None:
    with grpc.insecure_channel(server) as ch:
        call = ch.unary_unary(f"/quarry.v1.SearchService/{method}")
        try:
            call(body, timeout=30)
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            assert code in ALLOWED, f"{method} answered {code.name}: {exc.details()}"  # type: ignore[attr-defined]
            assert exc.details(), "an error must say what is wrong"  # type: ignore[attr-defined]


def _alive(server: str) -> None:
    with grpc.insecure_channel(server) as ch:
        res = search_pb2_grpc.SearchServiceStub(ch).Search(
            pb.SearchRequest(collection="tiny", query="paris"), timeout=10
        )
        assert res.hits


@FUZZ
@given(body=search_requests())
def test_fuzz_search(server: str, body: bytes) -> None:
    _call(server, "Search", body)


@FUZZ
@given(body=recommend_requests())
def test_fuzz_recommend(server: str, body: bytes) -> None:
    _call(server, "Recommend", body)


@FUZZ
@given(body=log_events_requests())
def test_fuzz_log_events(server: str, body: bytes) -> None:
    _call(server, "LogEvents", body)


@FUZZ
@given(
    method=st.sampled_from(["Search", "Recommend", "LogEvents"]),
    body=st.one_of(search_requests(), recommend_requests(), log_events_requests(), st.binary(max_size=200)),
    cut=st.integers(0, 10_000),
    junk=st.binary(max_size=40),
)
def test_fuzz_raw_bytes(server: str, method: str, body: bytes, cut: int, junk: bytes) -> None:
    _call(server, method, mangle(body, cut, junk))


def test_server_survives_the_fuzzing(server: str) -> None:
    _alive(server)


RECORD_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=12,
)


@FUZZ
@given(
    records=st.lists(
        st.one_of(
            st.dictionaries(
                st.sampled_from(
                    ["id", "text", "category", "tags", "lat", "lon", "attrs", "embedding", "extra"]
                ),
                RECORD_VALUES,
                max_size=8,
            ),
            RECORD_VALUES,
        ),
        min_size=1,
        max_size=5,
    ),
    raw=st.binary(max_size=60),
)
def test_fuzz_catalog_reader(
    tmp_path_factory: pytest.TempPathFactory, records: list[object], raw: bytes
) -> None:
    """Any JSONL content (invalid UTF-8 included) reads as valid records or fails with a CatalogError
    naming the file and line — nothing else."""
    d = tmp_path_factory.mktemp("fuzz")
    for name, content in (
        ("items.jsonl", "\n".join(json.dumps(r) for r in records).encode() + b"\n" + raw),
        ("events.jsonl", "\n".join(json.dumps(r) for r in records).encode()),
    ):
        path = Path(d) / name
        path.write_bytes(content)
        reader = read_items if name.startswith("items") else read_events
        try:
            list(reader(path))
        except CatalogError as exc:
            assert re.search(rf"{name}:\d+: \S", str(exc)), f"an error names the file and line: {exc}"


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from common.snapshot_root import SnapshotRoot
    from tests.conftest import ServerThread
    from tests.integration.test_lifecycle import TOKEN, publish

    root = SnapshotRoot(tmp_path_factory.mktemp("fuzz-root") / "root")
    publish(root, 1)
    publish(root, 2)
    srv = ServerThread([], root=root.root, admin_token=TOKEN)
    try:
        yield srv.target
    finally:
        srv.close()


@FUZZ
@given(
    method=st.sampled_from(["Status", "Reload", "Rollback"]),
    collection=st.one_of(st.just("tiny"), TEXT),
    generation=st.one_of(st.sampled_from(["", "1", "gen-000002", "gen-9", "-1", "../x"]), TEXT),
    # Header values gRPC can send (printable ASCII); others are refused client-side ("Invalid metadata").
    token=st.one_of(
        st.just("good"), st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)
    ),
    cut=st.integers(0, 10_000),
    junk=st.binary(max_size=20),
)
def test_fuzz_admin(
    admin_server: str, method: str, collection: str, generation: str, token: str, cut: int, junk: bytes
) -> None:
    from common.v1 import admin_pb2
    from tests.integration.test_lifecycle import TOKEN

    if method == "Status":
        body = admin_pb2.StatusRequest(collection=collection).SerializeToString()
    elif method == "Reload":
        body = admin_pb2.ReloadRequest(collection=collection, generation=generation).SerializeToString()
    else:
        body = admin_pb2.RollbackRequest(collection=collection, generation=generation).SerializeToString()
    if junk:
        body = mangle(body, cut, junk)
    bearer = f"Bearer {TOKEN}" if token == "good" else token
    allowed = ALLOWED | {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAUTHENTICATED}
    with grpc.insecure_channel(admin_server) as ch:
        call = ch.unary_unary(f"/quarry.v1.AdminService/{method}")
        try:
            call(body, timeout=60, metadata=(("authorization", bearer),))
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            assert code in allowed, f"{method} answered {code.name}: {exc.details()}"  # type: ignore[attr-defined]
            assert exc.details()  # type: ignore[attr-defined]
    _alive_admin(admin_server)


def _alive_admin(target: str) -> None:
    with grpc.insecure_channel(target) as ch:
        res = search_pb2_grpc.SearchServiceStub(ch).Search(
            pb.SearchRequest(collection="tiny", query="paris"), timeout=10
        )
        assert res.snapshot_version
