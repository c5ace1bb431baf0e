"""README's main job: build a GeoNames snapshot, serve it over gRPC, show example queries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

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


def _ensure_snapshot(out: Path, rebuild: bool, variant: str, encoder: str | None) -> None:
    from common.snapshot import SnapshotError, open_snapshot
    from indexer.build import build_snapshot
    from indexer.datasets import geonames

    if not rebuild:
        try:
            m = open_snapshot(out, verify="size")
            print(f"using existing snapshot {m.snapshot_version} at {out} (pass --rebuild to rebuild)")
            return
        except SnapshotError:
            pass
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
) -> None:
    from retriever.api.server import QuarryServer, load_collections

    await asyncio.to_thread(_ensure_snapshot, out, rebuild, variant, encoder)
    settings = load_settings()
    settings = settings.model_copy(update={"server": settings.server.model_copy(update={"port": port})})
    server = QuarryServer(settings, load_collections(settings, [out]))
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
        access.setLevel(access_level)
        if keep_serving:
            print(
                f"still serving on {target}; try: quarry query --target {target} --collection geonames 'berlin'  (Ctrl-C stops)"
            )
            with contextlib.suppress(asyncio.CancelledError):
                await server.wait()
    finally:
        await server.stop(grace=1.0)


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
