"""Long items found by their best passage, over gRPC, on real SciFact abstracts and claims with MiniLM.

Each "composite" item is six real abstracts end to end; the one that holds a claim's evidence comes last,
past the 256 tokens MiniLM reads of the item's own text, and the composite takes that abstract's id (so
SciFact's judgments grade it). With passages the ANN branch finds it by the window that holds the
evidence; with `ann.passages = false` (the items' own vectors) it cannot. The collection is named
"scifact" because `quarry eval scifact` searches that collection.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from common.catalog import Item
from common.changelog import ChangeLog
from common.passages import PassageOptions, passage_texts
from common.settings import AnnSettings
from common.snapshot import read_manifest
from common.snapshot_root import SnapshotRoot
from common.v1 import admin_pb2, admin_pb2_grpc, search_pb2_grpc
from common.v1 import search_pb2 as pb
from indexer.build import BuildOptions, build_snapshot
from indexer.datasets import scifact
from tests.conftest import ServerThread

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def longdocs(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Path, dict[str, str]]:
    """The snapshot, and claim text → the id of the composite that holds its evidence (the evidence's id)."""
    docs = {it.id: it for it in scifact.load(data_dir).items()}
    queries = scifact.queries(data_dir)
    judged = list(scifact.qrels(data_dir, "train").items())[:8]
    # one claim per evidence abstract (two claims may cite the same one)
    by_doc = {next(iter(rel)): qid for qid, rel in reversed(judged) if len(rel) == 1}
    claims = sorted(((qid, doc) for doc, qid in by_doc.items()), key=lambda c: int(c[0]))
    evidence = set(by_doc)
    filler = [it for doc_id, it in docs.items() if doc_id not in evidence][:60]
    items, want = [], {}
    for n, (qid, doc) in enumerate(claims):
        bodies = [filler[n * 5 + m].text["body"] for m in range(5)] + [docs[doc].text["body"]]
        items.append(Item(id=doc, text={"title": f"Collected abstracts {n}", "body": " ".join(bodies)}))
        want[queries[qid]] = doc
    items += filler[40:60]  # real abstracts as they are: short enough to need no passages
    # Published into a snapshot root, so the real-time test below can upsert and delete over it.
    root = SnapshotRoot(tmp_path_factory.mktemp("passages") / "root")
    ds = scifact.load(data_dir)
    options = BuildOptions(
        collection="scifact",
        text_fields=ds.text_fields,
        embed_fields=["title", "body"],
        passages=PassageOptions(sentences=3, stride=2),
        progress=False,
    )
    with root.publish("scifact") as out:
        build_snapshot(items, out, options, {"dataset": "scifact composites (test)"})
    return root.live("scifact"), want


def _ranks(target: str, want: dict[str, str], n_items: int) -> list[int]:
    ranks = []
    with grpc.insecure_channel(target) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        for claim, item in want.items():
            resp = stub.Search(
                pb.SearchRequest(collection="scifact", query=claim, top_k=n_items, branches=["ann"]),
                timeout=30,
            )
            assert not resp.degraded
            ids = [h.id for h in resp.hits]
            assert all(s.branch == "ann" for h in resp.hits for s in h.sources)
            ranks.append(ids.index(item) + 1 if item in ids else n_items + 1)
    return ranks


def test_long_items_are_found_by_their_best_passage(longdocs: tuple[Path, dict[str, str]]) -> None:
    snap, want = longdocs
    manifest = read_manifest(snap)
    part = manifest.parts["vectors"]["passages"]
    assert (part["sentences"], part["stride"]) == (3, 2)
    assert part["items_with_windows"] >= len(want) and part["windows"] > 0
    assert set(part["indexes"]) == {"hnsw", "ivf"}
    assert all((snap / f).is_file() for f in manifest.parts["vectors"]["files"])
    n_items = manifest.counts["items"]

    with_passages = ServerThread([snap])
    try:
        found = _ranks(with_passages.target, want, n_items)
    finally:
        with_passages.close()
    from retriever.settings import load_settings

    defaults = load_settings().defaults
    items_only = ServerThread(
        [snap], defaults=defaults.model_copy(update={"ann": AnnSettings(passages=False)})
    )
    try:
        missed = _ranks(items_only.target, want, n_items)
    finally:
        items_only.close()
    # Measured: passages [1, 1, 1, 1, 1, 1, 1], the items' own vectors [4, 24, 12, 27, 15, 5, 15].
    assert max(found) <= 3 and sum(r == 1 for r in found) >= len(found) // 2, found
    assert sum(missed) >= 3 * sum(found), (found, missed)


def test_eval_compares_passages_with_items_paired(
    longdocs: tuple[Path, dict[str, str]], data_dir: Path
) -> None:
    from quarry.evaluate import evaluate_scifact

    snap, _want = longdocs
    report = evaluate_scifact(snapshot=snap, data_dir=data_dir, branches=["ann"], passages="both")
    assert "windows of 3 sentences every 2" in report["passages"]
    # Only the composites' claims have their evidence in this catalog: every other claim scores 0 both ways.
    assert report["passages.ndcg@10"] > report["items.ndcg@10"] > 0
    diff = report["passages-items.ndcg@10"]
    assert diff["mean"] == pytest.approx(report["passages.ndcg@10"] - report["items.ndcg@10"], abs=2e-4)
    assert diff["ci95"][0] > 0
    with pytest.raises(ValueError, match="one at a time"):
        evaluate_scifact(
            snapshot=snap, data_dir=data_dir, branches=["ann"], passages="both", query_encoder="both"
        )


def test_cli_builds_passages_and_refuses_bad_specs(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from quarry.cli import main

    sentences = " ".join(f"Finding number {n} concerns protein {n} in mice." for n in range(1, 8))
    cat = tmp_path / "papers.jsonl"
    cat.write_text(
        json.dumps({"id": "long", "text": {"title": "A long abstract", "body": sentences}})
        + "\n"
        + json.dumps({"id": "short", "text": {"title": "A note", "body": "One finding."}})
        + "\n"
    )
    out = tmp_path / "snap"
    args = ["index", "build", "--catalog", str(cat), "--out", str(out), "--no-progress"]
    r = CliRunner().invoke(main, [*args, "--passages", "3"])
    assert r.exit_code == 2 and "SENTENCES:STRIDE like 3:2" in r.output
    r = CliRunner().invoke(main, [*args, "--passages", "2:3"])
    assert r.exit_code == 2 and "stride must be 1..2" in r.output
    r = CliRunner().invoke(main, [*args, "--passages", "3:2", "--vector-index", "hnsw"])
    assert r.exit_code == 0, r.output
    part = read_manifest(out).parts["vectors"]["passages"]
    # 7 sentences in windows of 3 every 2: starts 1, 3, 5 (the last reaches sentence 7)
    assert (part["windows"], part["items_with_windows"], list(part["indexes"])) == (3, 1, ["hnsw"])
    assert part["indexes"]["hnsw"]["rows"] == 2 + 3
    r = CliRunner().invoke(main, ["index", "verify", str(out)])
    assert r.exit_code == 0, r.output
    # catalog embeddings came from elsewhere: this build cannot encode passages consistent with them
    cat.write_text(
        json.dumps({"id": "long", "text": {"title": "A", "body": sentences}, "embedding": [1.0] * 384}) + "\n"
    )
    r = CliRunner().invoke(main, [*args, "--force", "--passages", "3:2"])
    assert r.exit_code == 1 and "not with catalog embeddings" in r.output


def test_upserts_are_searched_by_their_passages_and_deletes_leave_none_behind(
    longdocs: tuple[Path, dict[str, str]], tmp_path: Path, data_dir: Path
) -> None:
    """Upsert cuts and encodes the new version's windows as the build did (and logs them, so a restarted or
    second process replays them unencoded); the generation's passage rows belong to the old version's
    ordinal, so a replaced or deleted item's old passages find nothing."""
    import shutil

    snap, want = longdocs
    root = tmp_path / "root"
    shutil.copytree(snap.parent.parent, root)  # a private copy of the published root
    token = "passages-token"
    auth = (("authorization", f"Bearer {token}"),)
    (replaced_claim, replaced), (deleted_claim, deleted), (moved_claim, moved) = list(want.items())[:3]
    docs = {it.id: it for it in scifact.load(data_dir).items()}
    other = [it.text["body"] for i, it in list(docs.items())[300:320] if i not in want.values()][:5]
    # `moved` keeps its evidence, last, behind five other abstracts: only its windows can find it
    rewritten = admin_pb2.Item(
        id=moved, text={"title": "Rewritten", "body": " ".join([*other, docs[moved].text["body"]])}
    )
    emptied = admin_pb2.Item(id=replaced, text={"title": "Renamed", "body": "Nothing about that claim now."})

    def check(target: str) -> None:
        with grpc.insecure_channel(target) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)

            def hits(claim: str) -> list[pb.Hit]:
                resp = stub.Search(
                    pb.SearchRequest(collection="scifact", query=claim, top_k=50, branches=["ann"]),
                    timeout=30,
                )
                assert not resp.degraded
                return list(resp.hits)

            assert deleted not in [h.id for h in hits(deleted_claim)]
            found = hits(replaced_claim)
            assert replaced not in [h.id for h in found[:3]], [h.id for h in found]
            assert next(h for h in found if h.id == replaced).title == "Renamed"
            top = hits(moved_claim)[0]
            assert (top.id, top.title) == (moved, "Rewritten")
        # the untouched composites still come first for their own claims
        untouched = dict(list(want.items())[3:])
        assert untouched and _ranks(target, untouched, 50) == [1] * len(untouched)

    srv = ServerThread([], root=root, admin_token=token)
    try:
        admin = admin_pb2_grpc.AdminServiceStub(grpc.insecure_channel(srv.target))
        res = admin.Upsert(
            admin_pb2.UpsertRequest(collection="scifact", items=[emptied, rewritten]), metadata=auth
        )
        assert res.accepted == 2, res
        res = admin.Delete(admin_pb2.DeleteRequest(collection="scifact", ids=[deleted]), metadata=auth)
        assert list(res.not_found) == []
        check(srv.target)
    finally:
        srv.close()
    entries, _ = ChangeLog(root / "scifact" / "changes").read()
    logged = {e["item"]["id"]: len(e["pvec"]) for e in entries if e["op"] == "upsert"}
    cut, _ = passage_texts(
        [Item(id=moved, text=dict(rewritten.text))], ["title", "body"], PassageOptions(sentences=3, stride=2)
    )
    assert logged == {replaced: 0, moved: len(cut)} and len(cut) > 10
    restarted = ServerThread([], root=root, admin_token=token)  # replays the log over the generation
    try:
        check(restarted.target)
    finally:
        restarted.close()


def test_bench_ann_sets_the_passage_search_beside_its_raw_hnswlib_call(
    longdocs: tuple[Path, dict[str, str]], data_dir: Path
) -> None:
    from quarry.bench import bench_ann

    snap, _want = longdocs
    out = bench_ann(snap, n=8, k=5, data_dir=data_dir)
    # the raw yardstick is hnswlib over the rows the passage index first asks for (k × 4 rows an item)
    assert "passages ef=" in out and "raw search of the first 20 rows" in out, out
    assert "Quarry ANN branch, query cache hit" in out
    out = bench_ann(snap, n=8, k=5, data_dir=data_dir, passages=False)
    assert "hnsw ef=" in out and "passage rows" not in out, out


def test_a_shard_set_carries_each_shards_passages(tmp_path: Path, data_dir: Path) -> None:
    """Each shard of a set cuts and indexes its own items' windows; a shard serves its passage index."""
    from common.index.vectors import PassageIndex
    from common.settings import BranchSpec, CollectionSettings
    from indexer.sharded import build_sharded
    from retriever.generations import Collection

    ds = scifact.load(data_dir)
    items = [it for _, it in zip(range(40), ds.items(), strict=False)]
    opts = ds.build_options(progress=False, vector_indexes=("hnsw",))
    assert opts.passages == PassageOptions(sentences=2, stride=1)  # the data set's default
    out = tmp_path / "set"
    build_sharded(items, out, opts, ds.source, shards=2, processes=1)
    windows = 0
    for shard in sorted(p for p in out.iterdir() if p.name.startswith("shard-")):
        part = read_manifest(shard).parts["vectors"]["passages"]
        windows += part["windows"]
        coll = Collection(shard, CollectionSettings(branches={"ann": BranchSpec(quota=5)}))
        index = coll.branches["ann"].index  # type: ignore[attr-defined]
        assert isinstance(index, PassageIndex) and index.count == len(coll.forward)
    cut, _ = passage_texts(items, ["title", "body"], PassageOptions(sentences=2, stride=1))
    assert windows == len(cut) > 0  # every item's windows, each in its own shard
