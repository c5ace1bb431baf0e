"""The load report's ideal server (`quarry.load.ideal_queue_p99`): a first-come-first-served queue with
the floor's request times, checked against queueing theory where it has a closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quarry.load import ideal_queue_p99


def test_one_server_with_exponential_times_matches_m_m_1() -> None:
    """M/M/1: the response time is exponential with rate μ − λ, so p99 = ln(100) / (μ − λ)."""
    service = np.random.default_rng(0).exponential(1.0, 200_000)  # μ = 1 a ms
    got = ideal_queue_p99(service, servers=1, utilization=0.7, arrival="poisson", n=400_000)
    assert got == pytest.approx(math.log(100) / (1.0 - 0.7), rel=0.05)


def test_two_servers_with_exponential_times_match_erlang_c() -> None:
    """M/M/2 at ρ = 0.7: P(wait > t) = C·e^(−(2μ−λ)t) with Erlang's C; the response's p99 solves
    P(wait + service > t) = 0.01 for the sum of that wait and an exponential service."""
    lam, mu, c = 1.4, 1.0, 2
    a = lam / mu
    rho = a / c
    erlang_c = (a**c / math.factorial(c) / (1 - rho)) / (
        sum(a**k / math.factorial(k) for k in range(c)) + a**c / math.factorial(c) / (1 - rho)
    )
    theta = c * mu - lam

    def tail(t: float) -> float:  # P(W + S > t), W = 0 w.p. 1 − C else Exp(θ), S ~ Exp(μ)
        mixed = (mu * math.exp(-theta * t) - theta * math.exp(-mu * t)) / (mu - theta)
        return (1 - erlang_c) * math.exp(-mu * t) + erlang_c * mixed

    lo, hi = 0.0, 100.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if tail(mid) > 0.01 else (lo, mid)
    service = np.random.default_rng(1).exponential(1.0, 200_000)
    got = ideal_queue_p99(service, servers=2, utilization=rho, arrival="poisson", n=400_000)
    assert got == pytest.approx(lo, rel=0.05)


def test_constant_arrivals_and_times_never_wait() -> None:
    assert ideal_queue_p99([4.0] * 10, servers=2, utilization=0.9, arrival="constant") == pytest.approx(4.0)


def test_more_load_waits_longer() -> None:
    times = np.random.default_rng(2).lognormal(1.5, 0.3, 500)
    p99 = [ideal_queue_p99(times, utilization=u) for u in (0.3, 0.5, 0.7, 0.9)]
    assert p99 == sorted(p99) and p99[-1] > 2 * p99[0]


@pytest.mark.parametrize(
    ("times", "kwargs", "message"),
    [
        ([], {}, "positive mean"),
        ([0.0, 0.0], {}, "positive mean"),
        ([1.0, float("nan")], {}, "finite"),
        ([1.0, -1.0, 5.0], {}, "non-negative"),
        ([1.0], {"utilization": 1.0}, "utilization"),
        ([1.0], {"servers": 0}, "servers"),
        ([1.0], {"arrival": "bursty"}, "arrival"),
    ],
)
def test_bad_input_is_refused(times: list[float], kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ideal_queue_p99(times, **kwargs)  # type: ignore[arg-type]
