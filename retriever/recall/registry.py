"""The recall-branch registry: branch name → branch class, filled by each branch module's `@register`.

This is the only place branch names are known: the generation loader builds branches from it, and the
serving settings validate branch names against it (`retriever.settings.load_settings`).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TypeVar

from common.settings import CollectionSettings
from retriever.recall.base import RecallBranch

_BRANCHES: dict[str, type[RecallBranch]] = {}
_discovered = False
B = TypeVar("B", bound=type[RecallBranch])
#: Modules of this package that are infrastructure, not branches.
_NOT_BRANCHES = frozenset({"base", "registry", "executor"})


def register(cls: B) -> B:
    """Class decorator: add a recall branch under its `name`, checking its options type against the
    settings schema (`CollectionSettings.<name>` must exist and be of that type, or the branch has none)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise TypeError(f"{cls.__qualname__}.name must be an identifier string, got {name!r}")
    options = cls.options
    if options is not None:
        field = CollectionSettings.model_fields.get(name)
        if field is None or field.annotation is not options:
            raise TypeError(
                f"recall branch {name!r} declares options {options.__name__}, but CollectionSettings.{name} "
                f"is {getattr(field, 'annotation', None)!r}"
            )
    if name in _BRANCHES and _BRANCHES[name] is not cls:
        raise ValueError(
            f"recall branch {name!r} registered twice ({_BRANCHES[name].__qualname__}, {cls.__qualname__})"
        )
    _BRANCHES[name] = cls
    return cls


def _discover() -> None:
    global _discovered
    # Importing a branch module runs its @register; every module in this package but the infrastructure
    # is a branch, so a new branch needs no line here.
    package = __name__.rpartition(".")[0]
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
        if info.name not in _NOT_BRANCHES:
            importlib.import_module(f"{package}.{info.name}")
    _discovered = True


def branches() -> dict[str, type[RecallBranch]]:
    """Every registered branch class by name (importing the branch modules on first use)."""
    if not _discovered:
        _discover()
    return dict(_BRANCHES)


def branch_names() -> tuple[str, ...]:
    return tuple(sorted(branches()))


def branch_class(name: str) -> type[RecallBranch]:
    table = branches()
    try:
        return table[name]
    except KeyError:
        raise KeyError(f"unknown recall branch {name!r}; known: {sorted(table)}") from None
