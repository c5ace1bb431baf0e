"""Regenerate the Python stubs in common/v1/ from proto/quarry/v1/*.proto.

The stubs are committed (so installs need no grpcio-tools) and never edited by hand;
tests/unit/test_proto_drift.py regenerates them into a temporary folder and fails on drift.
The proto package stays `quarry.v1` (the public API: service names, reflection, ghz --proto); only the
Python package that holds the generated modules is `common.v1`, the shared ground every layer may import.
Usage: python scripts/gen_protos.py [--out DIR]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
#: Where the generated modules live, relative to --out.
PACKAGE = Path("common") / "v1"


def _relocate(text: str) -> str:
    # protoc names the modules after the proto path (quarry/v1/x.proto → quarry.v1.x_pb2); ours live in
    # common.v1, so the cross-module imports and the module names recorded in the code move with them.
    text = re.sub(r"\bfrom quarry\.v1 import\b", "from common.v1 import", text)
    text = re.sub(r"'quarry\.v1\.(\w+_pb2)'", r"'common.v1.\1'", text)
    return text.replace("generated code in quarry/v1/", "generated code in common/v1/")


def generate(out: Path) -> list[Path]:
    protos = sorted(PROTO_ROOT.glob("quarry/v1/*.proto"))
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(p.relative_to(PROTO_ROOT)) for p in protos],
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        dest = out / PACKAGE
        dest.mkdir(parents=True, exist_ok=True)
        written = []
        for src in sorted((Path(tmp) / "quarry" / "v1").glob("*_pb2*.py*")):
            target = dest / src.name
            target.write_text(_relocate(src.read_text()))
            written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT)
    ns = parser.parse_args()
    for path in generate(ns.out):
        print(path.relative_to(ns.out), file=sys.stderr)


if __name__ == "__main__":
    main()
