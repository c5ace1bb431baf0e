"""The console's third-party browser files, from pinned npm packages (no CDN at run time).

`quarry console install` (run by scripts/setup.sh) downloads each pinned tarball from the npm registry,
checks it against the registry's sha512 integrity, and extracts only the files the page loads into the
user's cache. Leaflet draws the map, topojson-client decodes world-atlas's Natural Earth country shapes;
there are no map tiles (they would need a tile server), so the map works offline.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REGISTRY = "https://registry.npmjs.org"


@dataclass(frozen=True, slots=True)
class NpmAsset:
    package: str
    version: str
    #: The registry's `dist.integrity` for this version.
    integrity: str
    #: Paths inside the tarball (under `package/`) → the name the console serves them as.
    files: tuple[tuple[str, str], ...]

    @property
    def tarball(self) -> str:
        return f"{REGISTRY}/{self.package}/-/{self.package.rsplit('/', 1)[-1]}-{self.version}.tgz"


ASSETS: tuple[NpmAsset, ...] = (
    NpmAsset(
        "leaflet",
        "1.9.4",
        "sha512-nxS1ynzJOmOlHp+iL3FyWqK89GtNL8U8rvlMOsQdTTssxZwCXh8N2NB3GDQOL+YR3XnWyZAxwQixURb+FA74PA==",
        (("package/dist/leaflet.js", "leaflet.js"), ("package/dist/leaflet.css", "leaflet.css")),
    ),
    NpmAsset(
        "topojson-client",
        "3.1.0",
        "sha512-605uxS6bcYxGXw9qi62XyrV6Q3xwbndjachmNxu8HWTtVPxZfEJN9fd/SZS1Q54Sn2y0TMyMxFj/cJINqGHrKw==",
        (("package/dist/topojson-client.min.js", "topojson-client.min.js"),),
    ),
    NpmAsset(
        "world-atlas",
        "2.0.2",
        "sha512-IXfV0qwlKXpckz1FhwXVwKRjiIhOnWttOskm5CtxMsjgE/MXAYRHWJqgXOpM8IkcPBoXnyTU5lFHcYa5ChG0LQ==",
        (("package/countries-110m.json", "countries-110m.json"),),
    ),
)


class AssetsMissing(Exception):
    """The console's browser files are not installed (message says how to install them)."""


def assets_dir() -> Path:
    """$QUARRY_CONSOLE_ASSETS, else the user's cache ($XDG_CACHE_HOME or ~/.cache)/quarry/console."""
    env = os.environ.get("QUARRY_CONSOLE_ASSETS")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "quarry" / "console"


def _stamp(a: NpmAsset) -> str:
    return f".{a.package}@{a.version}"


def missing(where: Path | None = None) -> list[str]:
    d = where or assets_dir()
    return [f"{a.package}@{a.version}" for a in ASSETS if not (d / _stamp(a)).is_file()]


def require(where: Path | None = None) -> Path:
    d = where or assets_dir()
    gone = missing(d)
    if gone:
        raise AssetsMissing(
            f"the console's browser files ({', '.join(gone)}) are not installed in {d}: "
            "run `quarry console install` (downloads them from the npm registry)"
        )
    return d


def _verify(data: bytes, integrity: str) -> None:
    algo, _, expected = integrity.partition("-")
    digest = base64.b64encode(hashlib.new(algo, data).digest()).decode()
    if digest != expected:
        raise ValueError(f"integrity mismatch: expected {integrity}, got {algo}-{digest}")


def install(where: Path | None = None, *, timeout_s: float = 60.0) -> list[str]:
    """Download, verify and extract every missing asset; returns what was installed (already present
    ones are skipped). Raises OSError/ValueError with the package named when one cannot be had."""
    d = where or assets_dir()
    d.mkdir(parents=True, exist_ok=True)
    done: list[str] = []
    for a in ASSETS:
        if (d / _stamp(a)).is_file():
            continue
        try:
            with urllib.request.urlopen(a.tarball, timeout=timeout_s) as resp:
                data = resp.read()
            _verify(data, a.integrity)
        except (OSError, ValueError) as exc:
            raise type(exc)(f"{a.package}@{a.version} from {a.tarball}: {exc}") from exc
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for inner, name in a.files:
                member = tar.extractfile(inner)
                if member is None:
                    raise ValueError(f"{a.package}@{a.version}: {inner} is not a file in the tarball")
                tmp = d / f".{name}.tmp"
                tmp.write_bytes(member.read())
                tmp.replace(d / name)
        (d / _stamp(a)).write_text(a.integrity + "\n")
        done.append(f"{a.package}@{a.version}")
    return done
