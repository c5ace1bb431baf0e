"""`common.protocols.implements` answers as isinstance does, once per class; the ranker checks over it."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from common import protocols
from ranker.base import FusedOrder, explains, scores_arrays


@runtime_checkable
class Named(Protocol):
    name: str

    def hello(self) -> str: ...


class Yes:
    def __init__(self) -> None:
        self.name = "yes"

    def hello(self) -> str:
        return "hi"


class No:
    name = "no"


def test_same_answer_as_isinstance_remembered_per_class() -> None:
    for obj in (Yes(), No(), None, 3):
        assert protocols.implements(obj, Named) is isinstance(obj, Named)
    assert protocols._KNOWN[(Yes, Named)] is True and protocols._KNOWN[(No, Named)] is False
    protocols._KNOWN[(Yes, Named)] = False  # remembered: the class's answer is not recomputed
    try:
        assert not protocols.implements(Yes(), Named)
    finally:
        del protocols._KNOWN[(Yes, Named)]
    assert protocols.implements(Yes(), Named)


def test_the_ranking_stage_checks() -> None:
    assert not explains(FusedOrder()) and not scores_arrays(FusedOrder())
    assert not explains(None) and not scores_arrays(None)
