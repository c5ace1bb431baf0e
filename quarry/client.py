"""A small synchronous client used by `quarry query` and the demo."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from common.v1 import search_pb2 as pb
from common.v1 import search_pb2_grpc


def channel(
    target: str, *, ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> grpc.Channel:
    """A channel to `target`: TLS when `ca` is given (plus a client certificate for mutual TLS)."""
    if ca is None:
        if cert is not None or key is not None:
            raise ValueError("a client certificate needs --tls-ca too")
        return grpc.insecure_channel(target)
    if (cert is None) != (key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key is not None else None,
        certificate_chain=cert.read_bytes() if cert is not None else None,
    )
    return grpc.secure_channel(target, creds)


def _locate_and_filter(
    req: pb.SearchRequest | pb.RecommendRequest,
    lat: float | None,
    lon: float | None,
    categories: Sequence[str],
) -> None:
    if (lat is None) != (lon is None):
        raise ValueError("give both --lat and --lon")
    if lat is not None and lon is not None:
        req.location.lat, req.location.lon = lat, lon
    req.filters.categories.extend(categories)


def build_request(
    collection: str,
    text: str,
    *,
    lat: float | None = None,
    lon: float | None = None,
    radius_m: float = 0.0,
    user: str = "",
    top_k: int = 10,
    categories: Sequence[str] = (),
    ranges: Sequence[str] = (),
    debug: bool = False,
) -> pb.SearchRequest:
    req = pb.SearchRequest(
        collection=collection, query=text, user_id=user, top_k=top_k, radius_m=radius_m, debug=debug
    )
    _locate_and_filter(req, lat, lon, categories)
    for spec in ranges:
        parts = spec.split(":")
        if len(parts) != 3 or not parts[0]:
            raise ValueError(f"--range {spec!r}: expected FIELD:MIN:MAX")
        r = req.filters.ranges.add(field=parts[0])
        try:
            if parts[1]:
                r.min = float(parts[1])
            if parts[2]:
                r.max = float(parts[2])
        except ValueError:
            raise ValueError(f"--range {spec!r}: MIN and MAX must be numbers") from None
    return req


def search(
    target: str, collection: str, text: str, *, timeout: float = 5.0, **kw: object
) -> pb.SearchResponse:
    req = build_request(collection, text, **kw)  # type: ignore[arg-type]
    with grpc.insecure_channel(target) as channel:
        return search_pb2_grpc.SearchServiceStub(channel).Search(req, timeout=timeout)


def recommend(
    target: str,
    collection: str,
    *,
    user: str = "",
    lat: float | None = None,
    lon: float | None = None,
    radius_m: float = 0.0,
    top_k: int = 10,
    categories: Sequence[str] = (),
    debug: bool = False,
    timeout: float = 5.0,
) -> pb.SearchResponse:
    req = pb.RecommendRequest(
        collection=collection, user_id=user, radius_m=radius_m, top_k=top_k, debug=debug
    )
    _locate_and_filter(req, lat, lon, categories)
    with grpc.insecure_channel(target) as channel:
        return search_pb2_grpc.SearchServiceStub(channel).Recommend(req, timeout=timeout)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _number(v: float) -> str:
    """24874500.0 → 24,874,500; 0.25 → 0.25 (never scientific notation for a count)."""
    if float(v).is_integer() and abs(v) < 1e15:
        return f"{int(v):,}"
    return f"{v:,.4g}"


def _source(s: pb.SourceScore) -> str:
    # The geo branch scores by negated distance in metres (closer is higher): show the distance.
    if s.branch == "geo":
        return f"geo#{s.rank}({-s.score / 1000:.1f} km)"
    return f"{s.branch}#{s.rank}({s.score:.3g})"


def format_response(resp: pb.SearchResponse, text: str = "", *, what: str | None = None) -> str:
    """Readable hits. `what` names the request in the header (default: the query text)."""
    label = what if what is not None else repr(text)
    lines = [
        f"{_plural(len(resp.hits), 'hit')} for {label} from {resp.snapshot_version} in {resp.took_ms:.2f} ms"
        + (" [DEGRADED]" if resp.degraded else "")
    ]
    for i, h in enumerate(resp.hits, 1):
        extra = []
        if h.category:
            extra.append(h.category)
        for k, v in sorted(h.attributes.items()):
            extra.append(f"{k}={_number(v)}")
        if h.HasField("distance_m"):
            extra.append(f"{h.distance_m / 1000:.1f} km")
        srcs = " ".join(_source(s) for s in h.sources)
        lines.append(f"{i:>3}. {h.title}  [{h.id}]  score={h.score:.4g}  {' · '.join(extra)}  via {srcs}")
    status = {v: k for k, v in pb.BranchStatus.items()}
    for b in resp.branch_stats:
        detail = f" ({b.detail})" if b.detail else ""
        lines.append(
            f"     branch {b.branch}: {status[b.status].removeprefix('BRANCH_STATUS_').lower()} "
            f"{b.latency_ms:.2f} ms, {_plural(b.candidates, 'candidate')}{detail}"
        )
    return "\n".join(lines)


def item_message(record: dict[str, Any]) -> Any:
    """A catalog record (common/catalog.py's format) as an admin Item message. Raises ValueError when a
    field has the wrong shape for the message; the server validates everything else, item by item."""
    from common.v1 import admin_pb2

    try:
        return admin_pb2.Item(
            id=str(record.get("id", "")),
            text={str(k): str(v) for k, v in (record.get("text") or {}).items()},
            category=record.get("category"),
            tags=[str(t) for t in record.get("tags") or ()],
            lat=record.get("lat"),
            lon=record.get("lon"),
            attrs={str(k): float(v) for k, v in (record.get("attrs") or {}).items()},
            embedding=[float(x) for x in record.get("embedding") or ()],
        )
    except (TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"record {record.get('id', '?')!r}: {exc}") from None


class AdminClient:
    """quarry.v1.AdminService with the bearer token on every call (used by `quarry admin ...`)."""

    def __init__(
        self,
        target: str,
        token: str,
        *,
        timeout_s: float = 600.0,
        ca: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
    ) -> None:
        from common.v1 import admin_pb2_grpc

        self._channel = channel(target, ca=ca, cert=cert, key=key)
        self._stub = admin_pb2_grpc.AdminServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._timeout = timeout_s

    def status(self, collection: str = "") -> Any:
        from common.v1 import admin_pb2

        return self._stub.Status(
            admin_pb2.StatusRequest(collection=collection), metadata=self._metadata, timeout=self._timeout
        )

    def reload(self, collection: str, generation: str = "") -> Any:
        from common.v1 import admin_pb2

        return self._stub.Reload(
            admin_pb2.ReloadRequest(collection=collection, generation=generation),
            metadata=self._metadata,
            timeout=self._timeout,
        )

    def upsert(self, collection: str, records: list[dict[str, Any]]) -> Any:
        """Catalog records (dicts in the catalog format) as one Upsert call."""
        from common.v1 import admin_pb2

        return self._stub.Upsert(
            admin_pb2.UpsertRequest(collection=collection, items=[item_message(r) for r in records]),
            metadata=self._metadata,
            timeout=self._timeout,
        )

    def delete(self, collection: str, ids: list[str]) -> Any:
        from common.v1 import admin_pb2

        return self._stub.Delete(
            admin_pb2.DeleteRequest(collection=collection, ids=ids),
            metadata=self._metadata,
            timeout=self._timeout,
        )

    def rollback(self, collection: str, generation: str = "") -> Any:
        from common.v1 import admin_pb2

        return self._stub.Rollback(
            admin_pb2.RollbackRequest(collection=collection, generation=generation),
            metadata=self._metadata,
            timeout=self._timeout,
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
