"""README's main job: build GeoNames snapshots, serve them over gRPC, show every recall kind.

Two collections: `geonames` (cities500, 234,908 real places: BM25 in English and Chinese, filters, geo) and
`places` (cities15000, ~33k real places with MiniLM vectors and SYNTHETIC visit events — GeoNames has no
behaviour data — so ANN, behavior (Swing i2i) and popularity recall and Recommend show too)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

import grpc

from common.v1 import search_pb2_grpc
from quarry.client import build_request, format_response
from retriever.settings import load_settings

EXAMPLES: list[tuple[str, dict[str, object]]] = [
    ("Shanghai", {}),
    ("上海", {}),
    ("北京", {}),
    ("san francisco", {}),
    ("springfield", {"categories": ["US"], "top_k": 5}),
    ("paris", {"lat": 33.66, "lon": -95.55, "top_k": 5}),
    ("zürich", {"top_k": 3}),
    ("town", {"ranges": ["population:1000000:"], "top_k": 5}),
]


PLACES_VARIANT = "cities15000"
SYNTHETIC_USERS = 2000


def _reusable(out: Path) -> bool:
    """A valid snapshot already at `out` (sizes checked), announced; False builds a new one."""
    from common.snapshot import SnapshotError, open_snapshot

    try:
        m = open_snapshot(out, verify="size")
    except SnapshotError:
        return False
    print(f"using existing snapshot {m.snapshot_version} at {out} (pass --rebuild to rebuild)")
    return True


def _ensure_places(out: Path, rebuild: bool) -> None:
    from indexer.build import build_snapshot
    from indexer.datasets import geonames

    if not rebuild and _reusable(out):
        return
    ds = geonames.load(out, variant=PLACES_VARIANT)
    print(
        f"building 'places' at {out}: GeoNames {PLACES_VARIANT} with MiniLM vectors and SYNTHETIC events "
        f"({SYNTHETIC_USERS} made-up users; about 2 minutes on 2 cores) ..."
    )
    events = geonames.synthetic_events(PLACES_VARIANT, users=SYNTHETIC_USERS)
    source = {**ds.source, "events": f"SYNTHETIC: {SYNTHETIC_USERS} users, geonames.synthetic_events"}
    opts = ds.build_options(collection="places", overwrite=True, encoder="minilm", progress=False)
    build_snapshot(ds.items(), out, opts, source, events)


def _ensure_snapshot(out: Path, rebuild: bool, variant: str, encoder: str | None) -> None:
    from indexer.build import build_snapshot
    from indexer.datasets import geonames

    if not rebuild and _reusable(out):
        return
    ds = geonames.load(out, variant=variant)
    print(f"building the GeoNames ({variant}) snapshot at {out} (vectors: {encoder or 'none'}) ...")
    build_snapshot(ds.items(), out, ds.build_options(overwrite=True, encoder=encoder), ds.source)


async def run_demo(
    out: Path,
    *,
    rebuild: bool,
    port: int,
    keep_serving: bool,
    variant: str = "cities500",
    encoder: str | None = None,
    places: Path | None = None,
) -> None:
    """`places`: where the second collection lives (None: only `geonames`)."""
    from retriever.api.server import QuarryServer, load_collections

    await asyncio.to_thread(_ensure_snapshot, out, rebuild, variant, encoder)
    if places is not None:
        await asyncio.to_thread(_ensure_places, places, rebuild)
    settings = load_settings()
    overrides = dict(settings.collections)
    if encoder is None:
        # The geonames snapshot has no vectors and no events: turn those branches off for it instead of
        # warning at every start that they are unavailable ('places' shows them).
        off = {"enabled": False}
        overrides["geonames"] = {
            "branches": {"ann": off, "behavior": off, "preference": off},
            "recommend_branches": {"behavior": off, "preference": off, "popular": off},
        }
    settings = settings.model_copy(
        update={"server": settings.server.model_copy(update={"port": port}), "collections": overrides}
    )
    server = QuarryServer(settings, load_collections(settings, [out] + ([places] if places else [])))
    bound = await server.start()
    # The examples print their own results; per-request access-log lines would interleave with them.
    access = logging.getLogger("quarry.access")
    access_level = access.level
    access.setLevel(logging.WARNING)
    target = f"127.0.0.1:{bound}"
    print(f"\nQuarry is serving collection 'geonames' on {target}\n")
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            for text, kw in EXAMPLES:
                req = build_request("geonames", text, **{"top_k": 3, **kw})  # type: ignore[arg-type]
                resp = await stub.Search(req, timeout=5)
                print("$ quarry query --target", target, "--collection geonames", _flags(kw), repr(text))
                print(format_response(resp, text), "\n")
            if places is not None:
                await _places_examples(stub, server, target)
        access.setLevel(access_level)
        if keep_serving:
            print(
                f"still serving on {target}; try: quarry query --target {target} --collection geonames 'berlin'  (Ctrl-C stops)"
            )
            names = " ".join(f"--collection {c}" for c in ["geonames", *(["places"] if places else [])])
            print(f"or the web console: quarry console --target {target} {names}  → http://127.0.0.1:8090/")
            with contextlib.suppress(asyncio.CancelledError):
                await server.wait()
    finally:
        await server.stop(grace=1.0)


async def _places_examples(stub: search_pb2_grpc.SearchServiceStub, server: Any, target: str) -> None:
    from common.v1 import search_pb2 as pb

    behavior = server.registry.get("places").behavior
    user = behavior.sample_users(1)[0] if behavior is not None else "u0"
    print(f"Collection 'places' (real places, SYNTHETIC visits by made-up users such as {user!r}):\n")
    req = build_request("places", "old harbour town on the baltic sea", top_k=5, debug=True)
    print(
        "$ quarry query --target",
        target,
        "--collection places --top-k 5 --debug 'old harbour town on the baltic sea'",
    )
    print(format_response(await stub.Search(req, timeout=10), req.query), "\n")
    rec = pb.RecommendRequest(collection="places", user_id=user, top_k=5, debug=True)
    print("$ quarry recommend --target", target, f"--collection places --user {user} --top-k 5 --debug")
    print(format_response(await stub.Recommend(rec, timeout=10), what=f"Recommend for user {user!r}"), "\n")
    cold = pb.RecommendRequest(collection="places", user_id="new-visitor", top_k=3)
    cold.location.lat, cold.location.lon = 35.68, 139.69
    print(
        "$ quarry recommend --target",
        target,
        "--collection places --user new-visitor --lat 35.68 --lon 139.69 --top-k 3",
    )
    print(
        format_response(await stub.Recommend(cold, timeout=10), what="Recommend for a new user near Tokyo"),
        "\n",
    )


def _flags(kw: dict[str, object]) -> str:
    parts = []
    for k, v in kw.items():
        if k == "categories":
            parts += [f"--category {c}" for c in v]  # type: ignore[attr-defined]
        elif k == "ranges":
            parts += [f"--range {r}" for r in v]  # type: ignore[attr-defined]
        else:
            parts.append(f"--{k.replace('_', '-')} {v}")
    return " ".join(parts)
