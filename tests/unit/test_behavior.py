"""Behavior tables: hand-computed ItemCF/Swing, a brute-force cross-check, the read side, MovieLens."""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

from common.catalog import Event
from common.index.behavior import BehaviorIndex
from indexer.behavior import BehaviorParams, build_behavior
from indexer.datasets import DatasetUnavailable, load_dataset
from quarry.behavior_eval import evaluate_behavior

DAY = 86400.0
ORD = {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4}  # "e" never interacted with

# Hand example (ts increasing down the list within each user):
#   u1: a b c   u2: a b   u3: a b d   u4: c d   u5: a c
HAND = {"u1": "abc", "u2": "ab", "u3": "abd", "u4": "cd", "u5": "ac"}


def hand_events() -> list[Event]:
    out = []
    t = 1_000_000.0
    for user, items in HAND.items():
        for item in items:
            t += 60
            out.append(Event(user=user, item=item, ts=t))
    return out


def build(
    tmp_path: Path, events: Iterable[Event], ord_of: dict[str, int] = ORD, **params: object
) -> BehaviorIndex:
    directory = tmp_path / "behavior"
    meta = build_behavior(events, ord_of, directory, params=BehaviorParams(**params))  # type: ignore[arg-type]
    return BehaviorIndex.load(directory, meta)


def row(index: BehaviorIndex, method: str, item: str) -> dict[int, float]:
    indices, scores = index.neighbors(method, ORD[item])
    return {int(i): float(s) for i, s in zip(indices, scores, strict=True)}


def test_itemcf_hand_computed(tmp_path: Path) -> None:
    index = build(tmp_path, hand_events())
    # |N(u)|: u1 3, u2 2, u3 3, u4 2, u5 2 → IUF weights 1/ln 4 and 1/ln 3.
    # |N(i)|: a 4, b 3, c 3, d 2; α = 0.5 → denominators sqrt(|N(i)|·|N(j)|).
    w3, w2 = 1 / math.log(4), 1 / math.log(3)
    expected = {
        ("a", "b"): (w3 + w2 + w3) / math.sqrt(4 * 3),  # u1, u2, u3
        ("a", "c"): (w3 + w2) / math.sqrt(4 * 3),  # u1, u5
        ("a", "d"): w3 / math.sqrt(4 * 2),  # u3
        ("b", "c"): w3 / math.sqrt(3 * 3),  # u1
        ("b", "d"): w3 / math.sqrt(3 * 2),  # u3
        ("c", "d"): w2 / math.sqrt(3 * 2),  # u4
    }
    for (i, j), sim in expected.items():
        assert row(index, "itemcf", i)[ORD[j]] == pytest.approx(sim, rel=1e-6)
        assert row(index, "itemcf", j)[ORD[i]] == pytest.approx(sim, rel=1e-6)
    assert list(index.neighbors("itemcf", ORD["a"])[0]) == [ORD["b"], ORD["c"], ORD["d"]]
    assert len(index.neighbors("itemcf", ORD["e"])[0]) == 0


def test_itemcf_alpha_is_asymmetric(tmp_path: Path) -> None:
    index = build(tmp_path, hand_events(), itemcf_alpha=1.0)
    w3, w2 = 1 / math.log(4), 1 / math.log(3)
    # α = 1: the row item's count alone normalises (a conditional-probability flavour).
    assert row(index, "itemcf", "a")[ORD["b"]] == pytest.approx((2 * w3 + w2) / 4, rel=1e-6)
    assert row(index, "itemcf", "b")[ORD["a"]] == pytest.approx((2 * w3 + w2) / 3, rel=1e-6)


def test_swing_hand_computed(tmp_path: Path) -> None:
    index = build(tmp_path, hand_events(), swing_alpha=1.0)
    # w_u = 1/sqrt(|I_u|): u1 1/√3, u2 1/√2, u3 1/√3, u5 1/√2.
    # (a,b): users {u1,u2,u3}; every pair shares exactly {a,b} → 1/(1+2) each.
    ab = (1 / math.sqrt(6) + 1 / 3 + 1 / math.sqrt(6)) / 3
    # (a,c): users {u1,u5} share {a,c}.
    ac = (1 / math.sqrt(6)) / 3
    assert row(index, "swing", "a") == pytest.approx({ORD["b"]: ab, ORD["c"]: ac}, rel=1e-6)
    assert row(index, "swing", "b") == pytest.approx({ORD["a"]: ab}, rel=1e-6)
    assert row(index, "swing", "c") == pytest.approx({ORD["a"]: ac}, rel=1e-6)
    # One common user makes no pair: (a,d), (b,c), (b,d), (c,d) have no Swing score.
    assert row(index, "swing", "d") == {}


def _reference(
    baskets: dict[str, set[int]], alpha_cf: float, alpha_swing: float
) -> tuple[dict[tuple[int, int], float], dict[tuple[int, int], float]]:
    """Direct transcription of the two formulas, O(everything), for small random data."""
    users_of: dict[int, set[str]] = {}
    for u, items in baskets.items():
        for i in items:
            users_of.setdefault(i, set()).add(u)
    cf: dict[tuple[int, int], float] = {}
    swing: dict[tuple[int, int], float] = {}
    for i, j in itertools.permutations(users_of, 2):
        common = sorted(users_of[i] & users_of[j])
        if not common:
            continue
        num = sum(1 / math.log(1 + len(baskets[u])) for u in common)
        cf[i, j] = num / (len(users_of[i]) ** alpha_cf * len(users_of[j]) ** (1 - alpha_cf))
        s = 0.0
        for u, v in itertools.combinations(common, 2):
            wu, wv = 1 / math.sqrt(len(baskets[u])), 1 / math.sqrt(len(baskets[v]))
            s += wu * wv / (alpha_swing + len(baskets[u] & baskets[v]))
        if s > 0:
            swing[i, j] = s
    return cf, swing


def test_matches_brute_force_on_random_data(tmp_path: Path) -> None:
    rng = random.Random(7)
    n_items = 30
    ord_of = {f"i{k}": k for k in range(n_items)}
    events = []
    baskets: dict[str, set[int]] = {}
    for u in range(40):
        # Skewed item choice so some items are popular, some rare.
        picks = {min(int(rng.expovariate(0.12)), n_items - 1) for _ in range(rng.randint(1, 12))}
        baskets[f"u{u}"] = picks
        for k in picks:
            events.append(Event(user=f"u{u}", item=f"i{k}", ts=rng.uniform(0, 1e6)))
    cf_ref, swing_ref = _reference(baskets, 0.3, 2.0)
    index = build(tmp_path, events, ord_of, neighbors=n_items, itemcf_alpha=0.3, swing_alpha=2.0)
    for method, ref in (("itemcf", cf_ref), ("swing", swing_ref)):
        got = {}
        for i in range(n_items):
            indices, scores = index.neighbors(method, i)
            assert np.all(np.diff(scores) <= 0), "rows must be score-descending"
            got.update({(i, int(j)): float(s) for j, s in zip(indices, scores, strict=True)})
        assert got.keys() == ref.keys()
        for key, value in ref.items():
            assert got[key] == pytest.approx(value, rel=1e-5), (method, key)


def _random_baskets(seed: int, n_users: int, n_items: int) -> tuple[list[Event], dict[str, set[int]]]:
    rng = random.Random(seed)
    events, baskets = [], {}
    for u in range(n_users):
        picks = {min(int(rng.expovariate(0.12)), n_items - 1) for _ in range(rng.randint(1, 12))}
        baskets[f"u{u}"] = picks
        events += [Event(user=f"u{u}", item=f"i{k}", ts=rng.uniform(0, 1e6)) for k in picks]
    return events, baskets


def _dense_ease(baskets: dict[str, set[int]], items: list[int], lam: float) -> np.ndarray:
    """EASE written out from the paper over `items` only: B = I − P·diag(1/diag P), B_ii = 0."""
    x = np.array([[k in b for k in items] for b in baskets.values()], dtype=np.float64)
    p = np.linalg.inv(x.T @ x + lam * np.eye(len(items)))
    b = np.eye(len(items)) - p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


def test_ease_matches_the_closed_form(tmp_path: Path) -> None:
    n_items = 30
    ord_of = {f"i{k}": k for k in range(n_items)}
    events, baskets = _random_baskets(11, 60, n_items)
    present = sorted(set().union(*baskets.values()))
    ref = _dense_ease(baskets, present, 3.0)
    assert (ref < 0).any() and (ref > 0).any()  # the data exercise both signs
    index = build(tmp_path, events, ord_of, ease_lambda=3.0, ease_neighbors=n_items)
    for i, item in enumerate(present):
        indices, scores = index.neighbors("ease", item)
        assert np.all(np.diff(scores) <= 0), "rows must be weight-descending"
        want = {present[j]: ref[i, j] for j in range(len(present)) if j != i and ref[i, j] != 0}
        assert dict(zip(indices.tolist(), scores.tolist(), strict=True)) == pytest.approx(want, rel=1e-4)
    absent = sorted(set(range(n_items)) - set(present))
    assert all(len(index.neighbors("ease", k)[0]) == 0 for k in absent)
    # A user's score is Σ over their items of B (row i → column j), for the items scored above 0.
    seeds = sorted(baskets["u3"])
    dense = ref[[present.index(k) for k in seeds]].sum(axis=0)
    got = dict(index.expand("ease", [(k, 1.0) for k in seeds], n_items))
    want = {present[j]: v for j, v in enumerate(dense) if v > 0 and present[j] not in seeds}
    assert got == pytest.approx(want, rel=1e-4)
    assert all(v > 0 for v in got.values())


def test_ease_caps_items_and_keeps_the_largest_weights_by_magnitude(tmp_path: Path) -> None:
    n_items = 30
    ord_of = {f"i{k}": k for k in range(n_items)}
    events, baskets = _random_baskets(2, 80, n_items)
    counts = {k: sum(k in b for b in baskets.values()) for k in range(n_items)}
    # The 6 items with the most users (ties: the lower ordinal) are the only ones that take part.
    chosen = sorted(sorted(counts, key=lambda k: (-counts[k], k))[:6])
    ref = _dense_ease(baskets, chosen, 0.5)
    index = build(tmp_path, events, ord_of, ease_lambda=0.5, ease_max_items=6, ease_neighbors=3)
    kept_negative = False
    for i, item in enumerate(chosen):
        indices, scores = index.neighbors("ease", item)
        mag = {chosen[j]: abs(ref[i, j]) for j in range(6) if j != i}
        top3 = sorted(mag, key=lambda k: -mag[k])[:3]
        assert sorted(indices.tolist()) == sorted(top3)
        kept_negative |= bool((scores < 0).any())
    assert kept_negative, "a large negative weight must be kept, not only positive ones"
    for k in set(range(n_items)) - set(chosen):
        assert len(index.neighbors("ease", k)[0]) == 0
    for method_row in (index.neighbors("ease", k)[0] for k in chosen):
        assert set(method_row.tolist()) <= set(chosen)


@pytest.mark.parametrize(
    "bad", [{"ease_lambda": 0.0}, {"ease_lambda": math.inf}, {"ease_max_items": 0}, {"ease_neighbors": 0}]
)
def test_ease_params_are_checked(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        BehaviorParams(**bad)  # type: ignore[arg-type]


def test_caps_keep_most_recent(tmp_path: Path) -> None:
    # u1 saw a, b, c in that order; with max_items_per_user=2 only b and c co-occur.
    events = [Event(user="u1", item=x, ts=t) for t, x in enumerate("abc")]
    events += [Event(user="u2", item=x, ts=10.0 + t) for t, x in enumerate("abc")]
    index = build(tmp_path, events, max_items_per_user=2)
    assert set(row(index, "itemcf", "b")) == {ORD["c"]}
    assert row(index, "itemcf", "a") == {} and row(index, "swing", "a") == {}
    # Swing: item a has users u1,u2,u3 (u3 newest); with 2 users per item only (u2,u3) pair up for a's row.
    events = [
        Event(user=u, item=x, ts=t0 + t)
        for t0, u in ((0, "u1"), (10, "u2"), (20, "u3"))
        for t, x in enumerate("ab" if u != "u3" else "ac")
    ]
    index = build(tmp_path / "s", events, swing_max_users_per_item=2)
    # Pair (u2,u3) shares only {a}: contributes to no co-item; (u1,u2) was sampled out of a's row.
    assert row(index, "swing", "a") == {}
    assert ORD["a"] in row(index, "swing", "b")  # b's users u1, u2 both kept


def test_round_trip_files_and_manifest(tmp_path: Path) -> None:
    directory = tmp_path / "behavior"
    meta = build_behavior(hand_events(), ORD, directory, params=BehaviorParams())
    assert meta["dir"] == "behavior" and meta["methods"] == ["itemcf", "swing", "ease"]
    assert all(f.startswith("behavior/") and (tmp_path / f).is_file() for f in meta["files"])
    assert {"behavior/i2i_swing.indptr.npy", "behavior/popularity.npy"} <= set(meta["files"])
    assert meta["counts"]["users"] == 5 and meta["items"] == 5
    assert json.loads(json.dumps(meta)) == meta  # goes into manifest.json as is
    assert BehaviorParams.from_json(meta["params"]) == BehaviorParams()
    indptr = np.load(directory / "i2i_itemcf.indptr.npy")
    indices = np.load(directory / "i2i_itemcf.indices.npy")
    scores = np.load(directory / "i2i_itemcf.scores.npy")
    assert (indptr.dtype, indices.dtype, scores.dtype) == (np.int64, np.int32, np.float32)
    assert len(indptr) == len(ORD) + 1 and indptr[-1] == len(indices) == len(scores)
    index = BehaviorIndex.load(directory, meta)
    assert _file_backed(index.neighbors("itemcf", 0)[0])  # memory-mapped, not read into RAM
    for i in range(len(ORD)):
        got_i, got_s = index.neighbors("itemcf", i)
        assert np.array_equal(got_i, indices[indptr[i] : indptr[i + 1]])
        assert np.array_equal(got_s, scores[indptr[i] : indptr[i + 1]])
    with pytest.raises(ValueError, match="unknown behavior method"):
        index.neighbors("als", 0)
    with pytest.raises(IndexError):
        index.neighbors("itemcf", len(ORD))
    bad = dict(meta, items=4)
    with pytest.raises(ValueError, match="does not match"):
        BehaviorIndex.load(directory, bad)


def test_expand_scores_excludes_and_orders(tmp_path: Path) -> None:
    index = build(tmp_path, hand_events())
    a, b, c, d = (ORD[x] for x in "abcd")
    sim = {i: row(index, "itemcf", x) for x, i in ORD.items()}
    got = index.expand("itemcf", [(a, 1.0), (d, 0.5)], 10)
    expected = {b: sim[a][b] + 0.5 * sim[d][b], c: sim[a][c] + 0.5 * sim[d][c]}
    assert [o for o, _ in got] == sorted(expected, key=lambda o: -expected[o])
    assert dict(got) == pytest.approx(expected)
    assert all(s1 >= s2 for (_, s1), (_, s2) in itertools.pairwise(got))
    assert index.expand("itemcf", [(a, 1.0), (d, 0.5)], 1) == got[:1]
    assert [o for o, _ in index.expand("itemcf", [(a, 1.0)], 10, exclude={b})] == [c, d]
    allowed = np.ones(len(ORD), dtype=bool)
    allowed[c] = False
    assert [o for o, _ in index.expand("itemcf", [(a, 1.0)], 10, allowed=allowed)] == [b, d]
    assert index.expand("itemcf", [], 10) == [] and index.expand("itemcf", [(a, 1.0)], 0) == []
    # The arrays the serving branch reads: the same answer, as (int64 items, float64 scores).
    items, scores = index.expand_arrays("itemcf", np.array([a, d]), np.array([1.0, 0.5]), 10)
    assert items.dtype == np.int64 and scores.dtype == np.float64
    assert list(zip(items.tolist(), scores.tolist(), strict=True)) == got
    items, scores = index.expand_arrays("itemcf", np.zeros(0, np.int64), np.zeros(0), 10)
    assert items.dtype == np.int64 and len(items) == len(scores) == 0
    with pytest.raises(ValueError, match="unknown behavior method 'nope'"):
        index.expand("nope", [], 10)
    assert index.expand("swing", [(ORD["e"], 1.0)], 10) == []
    with pytest.raises(ValueError, match="mask"):
        index.expand("itemcf", [(a, 1.0)], 10, allowed=np.ones(3, dtype=bool))


def test_user_history_recent_first_and_unknown_user(tmp_path: Path) -> None:
    events = [*hand_events(), Event(user="u1", item="a", ts=9e9)]  # re-interaction moves a to the front
    index = build(tmp_path, events, history_len=2)
    assert index.user_history("u1") == [ORD["a"], ORD["c"]]
    assert index.user_history("u4") == [ORD["d"], ORD["c"]]
    assert index.user_history("nobody") == [] and index.user_history("") == []
    assert index.user_history("u0") == [] and index.user_history("u9") == []
    # Asked again (rows remembered): the same answers, and a caller's list is its own.
    first = index.user_history("u1")
    first.append(-1)
    assert index.user_history("u1") == [ORD["a"], ORD["c"]] and index.user_history("nobody") == []


def test_weights_and_skips(tmp_path: Path) -> None:
    events = [
        Event(user="u1", item="a", type="buy", ts=0.0),
        Event(user="u1", item="zzz", ts=1.0),  # not in the catalog
        Event(user="u2", item="b", type="view", ts=2.0, weight=0.5),  # 0.5 < min_weight
        Event(user="u2", item="c", type="view", ts=3.0, weight=-1.0),  # negative feedback
        Event(user="u2", item="d", type="view", ts=4.0, weight=2.0),
    ]
    directory = tmp_path / "behavior"
    meta = build_behavior(
        events, ORD, directory, params=BehaviorParams(type_weights={"buy": 3.0}, min_weight=1.0)
    )
    assert meta["counts"]["skipped_unknown_item"] == 1
    assert meta["counts"]["skipped_not_positive"] == 2
    assert meta["counts"]["positive_events"] == 2
    index = BehaviorIndex.load(directory, meta)
    assert index.user_history("u2") == [ORD["d"]]


def test_item_weight_is_the_shrunk_mean_of_every_event(tmp_path: Path) -> None:
    """Mean event strength (type weight × weight) over every event of the item, positive or not, with
    ITEM_WEIGHT_PRIOR_EVENTS pseudo-events at the mean over all events; unknown items are not counted."""
    from indexer.behavior import ITEM_WEIGHT_PRIOR_EVENTS as m

    events = [
        Event(user="u1", item="a", ts=0.0, weight=5.0),
        Event(user="u2", item="a", ts=1.0, weight=4.0),
        Event(user="u3", item="a", ts=2.0, weight=1.0),  # below min_weight: still counts for the mean
        Event(user="u1", item="b", type="buy", ts=3.0, weight=2.0),  # strength 2 × 3
        Event(user="u1", item="zzz", ts=4.0, weight=100.0),  # not in the catalog: not counted
    ]
    directory = tmp_path / "behavior"
    meta = build_behavior(
        events, ORD, directory, params=BehaviorParams(type_weights={"buy": 3.0}, min_weight=4.0)
    )
    prior = (5 + 4 + 1 + 6) / 4
    assert meta["item_weight"] == {"prior": pytest.approx(prior), "prior_events": m}
    index = BehaviorIndex.load(directory, meta)
    assert index.item_weight is not None and _file_backed(index.item_weight)
    want = [(10 + prior * m) / (3 + m), (6 + prior * m) / (1 + m), prior, prior, prior]
    assert index.item_weight.tolist() == pytest.approx(want, rel=1e-6)
    # A snapshot from before the file: no item weights, everything else loads.
    old = {k: v for k, v in meta.items() if k != "item_weight"}
    assert BehaviorIndex.load(directory, old).item_weight is None


@pytest.mark.parametrize("seed", range(10))
def test_affinity_is_the_weighted_similarity_sum(tmp_path: Path, seed: int) -> None:
    """`affinity` = Σ_seed w · sim(seed, item) for asked-for items (duplicates, -1, items no seed
    reaches), once per weighting; for items `expand` returns, the score it ranks by."""
    rng = random.Random(seed)
    n_items = 25
    ord_of = {f"i{k}": k for k in range(n_items)}
    events = [
        Event(user=f"u{u}", item=f"i{min(int(rng.expovariate(0.15)), n_items - 1)}", ts=rng.uniform(0, 1e6))
        for u in range(30)
        for _ in range(rng.randint(1, 8))
    ]
    index = build(tmp_path, events, ord_of, neighbors=8)
    seeds = np.array(sorted(rng.sample(range(n_items), rng.randint(1, 6))), dtype=np.int64)
    weights = np.array([[rng.uniform(0, 2) for _ in seeds] for _ in range(2)])
    items = np.array([rng.randrange(-1, n_items) for _ in range(40)], dtype=np.int64)
    for method in ("itemcf", "swing"):
        got = index.affinity(method, seeds, weights, items)
        assert got.shape == (2, len(items))
        sims = [dict(zip(*(a.tolist() for a in index.neighbors(method, int(s))), strict=True)) for s in seeds]
        for j in range(2):
            want = [
                sum(w * sim.get(int(o), 0.0) for w, sim in zip(weights[j], sims, strict=True)) for o in items
            ]
            assert got[j].tolist() == pytest.approx(want, rel=1e-5, abs=1e-9)
        top = index.expand(method, list(zip(seeds.tolist(), weights[0].tolist(), strict=True)), n_items)
        if top:
            ords = np.array([o for o, _ in top])
            assert index.affinity(method, seeds, weights[:1], ords)[0].tolist() == pytest.approx(
                [sc for _, sc in top], rel=1e-6
            )
    assert index.affinity("swing", seeds[:0], weights[:, :0], items).tolist() == np.zeros((2, 40)).tolist()
    with pytest.raises(ValueError, match="columns"):
        index.affinity("swing", seeds, weights[:, :-1], items)
    with pytest.raises(IndexError):
        index.affinity("swing", np.array([n_items]), np.ones((1, 1)), items)


def test_popularity_decay(tmp_path: Path) -> None:
    now = 100 * DAY
    events = [
        Event(user="u1", item="a", ts=now),
        Event(user="u2", item="b", ts=now - 7 * DAY),  # one half-life old
        Event(user="u3", item="b", ts=now - 14 * DAY),  # two
        Event(user="u4", item="c", ts=now, type="buy"),
        Event(user="u4", item="c", ts=now - 1, type="buy"),  # same user and item: one interaction
    ]
    index = build(tmp_path, events, popularity_half_life_days=7.0, type_weights={"buy": 3.0})
    assert index.popularity.tolist() == pytest.approx([1.0, 0.75, 3.0, 0.0, 0.0])
    top = index.popular(10)
    assert [o for o, _ in top] == [2, 0, 1]
    assert [s for _, s in top] == pytest.approx([3.0, 1.0, 0.75])
    items, pop = index.popular_arrays(10, allowed=np.array([True, False, True, True, True]))
    assert items.dtype == np.int64 and pop.dtype == np.float64
    assert items.tolist() == [2, 0] and pop.tolist() == pytest.approx([3.0, 1.0])
    allowed = np.array([True, True, False, True, True])
    assert [o for o, _ in index.popular(1, allowed)] == [0]
    plain = build(tmp_path / "x", events, popularity_half_life_days=None)
    assert plain.popularity.tolist() == pytest.approx([1.0, 2.0, 1.0, 0.0, 0.0])


def test_no_events(tmp_path: Path) -> None:
    index = build(tmp_path, [])
    assert index.user_history("u1") == [] and index.popular(5) == []
    assert index.expand("swing", [(0, 1.0)], 5) == []


def test_evaluate_runs_on_tiny_data() -> None:
    result = evaluate_behavior(hand_events(), ORD, fraction=0.5, k=3)
    assert set(result["methods"]) == {"popularity", "itemcf", "swing", "ease"}
    assert all(0 <= m["recall@3"] <= 1 for m in result["methods"].values())


@pytest.fixture(scope="module")
def movielens() -> tuple[dict[str, int], list[Event]]:
    try:
        ds = load_dataset("movielens", Path("/nonexistent"))  # falls back to recbole's bundled copy
    except DatasetUnavailable as exc:
        pytest.skip(str(exc))
    assert ds.events is not None
    return {it.id: i for i, it in enumerate(ds.items())}, list(ds.events())


def test_movielens_star_wars_neighbors(tmp_path: Path, movielens: tuple[dict[str, int], list[Event]]) -> None:
    ord_of, events = movielens
    directory = tmp_path / "behavior"
    meta = build_behavior(events, ord_of, directory, params=BehaviorParams(min_weight=4))
    assert meta["counts"]["events"] == 100_000 and meta["counts"]["users"] > 900
    index = BehaviorIndex.load(directory, meta)
    sequels = {ord_of["181"], ord_of["172"]}  # Return of the Jedi, The Empire Strikes Back
    for method in ("itemcf", "swing", "ease"):
        top10 = set(index.neighbors(method, ord_of["50"])[0][:10].tolist())
        assert top10 & sequels, method
    history = index.user_history("1")
    assert 0 < len(history) <= 500
    seeds = [(o, 1.0) for o in history]
    got = index.expand("swing", seeds, 50, exclude=set(history[:5]))
    assert len(got) == 50 and not {o for o, _ in got} & set(history)


def _file_backed(arr: np.ndarray) -> bool:
    """True when `arr` is (a view of) a memory map: its chain of bases reaches an np.memmap or mmap."""
    import mmap

    base: object = arr
    while base is not None:
        if isinstance(base, np.memmap | mmap.mmap):
            return True
        base = getattr(base, "base", None)
    return False
