"""Regenerate the Python code for protos/pausewatch/v1/*.proto, or check that it is current.

    python scripts/gen_protos.py          # rewrite the generated files in place
    python scripts/gen_protos.py --check  # exit 1 if the committed files differ from a fresh run

The generated modules (``*_pb2.py``, ``*_pb2.pyi``, ``*_pb2_grpc.py``, ``*_pb2_grpc.pyi``) are
committed beside their sources and imported as ``pausewatch.v1.<name>_pb2``. The generator versions
are pinned in pyproject.toml (grpcio-tools, mypy-protobuf), so a fresh run is byte-for-byte stable.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = PROTO_ROOT / "pausewatch" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(out_dir: Path) -> None:
    sources = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PACKAGE_DIR.glob("*.proto"))
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *sources,
    ]
    subprocess.run(cmd, check=True, cwd=PROTO_ROOT, env=env, stdout=subprocess.DEVNULL)


def _has_service(proto: Path) -> bool:
    return any(
        line.startswith("service ") for line in proto.read_text(encoding="utf-8").splitlines()
    )


def generated_files(directory: Path) -> set[str]:
    """The generated files in a directory, leaving out gRPC modules of files with no service."""
    with_service = {p.stem for p in PACKAGE_DIR.glob("*.proto") if _has_service(p)}
    names = set()
    for path in directory.iterdir():
        if not (path.is_file() and path.name.endswith(GENERATED_SUFFIXES)):
            continue
        stem, _, kind = path.name.partition("_pb2")
        if kind.startswith("_grpc") and stem not in with_service:
            continue
        names.add(path.name)
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed code drifted")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate(out)
        fresh_dir = out / "pausewatch" / "v1"
        fresh = generated_files(fresh_dir)
        if args.check:
            current = generated_files(PACKAGE_DIR)
            drift = sorted(fresh ^ current)
            drift += sorted(
                name
                for name in fresh & current
                if not filecmp.cmp(fresh_dir / name, PACKAGE_DIR / name, shallow=False)
            )
            if drift:
                print("generated code is out of date with the .proto files:", file=sys.stderr)
                for name in drift:
                    print(f"  protos/pausewatch/v1/{name}", file=sys.stderr)
                print("run: make proto", file=sys.stderr)
                return 1
            print(f"generated code is current ({len(fresh)} files)")
            return 0
        for path in PACKAGE_DIR.iterdir():
            if path.name.endswith(GENERATED_SUFFIXES) and path.name not in fresh:
                path.unlink()
        for name in sorted(fresh):
            shutil.copyfile(fresh_dir / name, PACKAGE_DIR / name)
        print(f"wrote {len(fresh)} files to {PACKAGE_DIR.relative_to(ROOT)}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
