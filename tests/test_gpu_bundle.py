"""tools/gpu_bundle.py and tools/gpu_ctl.sh agree: pieces made here are reassembled, checked and unpacked there.

The real bundles (wheels and two GGUF models, 336 MiB) are built by hand before a GPU lease
(docs/metadataset.md); this checks the same code paths on small, incompressible files.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parent.parent
_spec = importlib.util.spec_from_file_location("gpu_bundle", ROOT / "tools" / "gpu_bundle.py")
gpu_bundle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_bundle)

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("sha256sum") is None,
                                reason="needs bash and coreutils")


def _tree(tmp_path: Path) -> dict[str, list[tuple[Path, str]]]:
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    (src / "whl").mkdir(parents=True)
    (src / "pkg").mkdir()
    (src / "whl" / "a-1.0-py3-none-any.whl").write_bytes(rng.bytes(30_000))
    (src / "pkg" / "model.gguf").write_bytes(rng.bytes(50_000))
    (src / "big.gguf").write_bytes(rng.bytes(70_000))
    return {"smol": [(src / "whl", "whl"), (src / "pkg", "site/pkg")],
            "gemma": [(src / "big.gguf", "cache/assembled/g/big.gguf")]}


def _ctl(repo: Path, qt: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "QT_ROOT": str(qt)}
    return subprocess.run(["bash", str(ROOT / "tools" / "gpu_ctl.sh"), *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=60)


def test_pieces_are_planned_reassembled_checked_and_unpacked(tmp_path):
    members = _tree(tmp_path)
    repo = tmp_path / "repo"
    out = repo / ".gpu"
    paths = {name: tmp_path / f"{name}.tgz" for name in members}
    sums = {name: gpu_bundle.write_bundle(m, paths[name]) for name, m in members.items()}
    calls = gpu_bundle.plan(gpu_bundle.split_bundles(paths, out, 32_000))
    # smol (~80 kB) then gemma (~70 kB): 3 + 3 pieces; each bundle's last piece starts its workers
    assert [c["verb"] for c in calls] == ["piece", "piece", "start-smol", "piece", "piece", "start-gemma"]
    assert [c["carry"] for c in calls][:2] == [".gpu/p0", ".gpu/p1"]
    assert all(c["bytes"] <= 32_000 for c in calls)
    (out / "ctl").mkdir()
    (out / "ctl" / "SHA256SUMS").write_text("".join(f"{h}  {n}.tgz\n" for n, h in sums.items()))

    qt = tmp_path / "qt"
    for call in calls[:2]:
        assert _ctl(repo, qt, "piece", str(call["call"])).returncode == 0
    assert _ctl(repo, qt, "unpack", "smol").returncode != 0  # a piece is missing: the checksum fails
    assert _ctl(repo, qt, "piece", "2").returncode == 0
    done = _ctl(repo, qt, "unpack", "smol")
    assert done.returncode == 0, done.stdout + done.stderr
    for src, name in members["smol"]:
        for f in src.rglob("*"):
            if f.is_file():
                assert (qt / "x" / name / f.relative_to(src)).read_bytes() == f.read_bytes()
    assert not (qt / "x" / "cache").exists()  # the gemma bundle is separate: nothing of it yet

    for call in calls[3:]:
        assert _ctl(repo, qt, "piece", str(call["call"])).returncode == 0
    bad = qt / "pieces" / "gemma.01"
    bad.write_bytes(bad.read_bytes()[:-1] + b"\0")  # a piece damaged in transit
    assert _ctl(repo, qt, "unpack", "gemma").returncode != 0
    shutil.copy(out / "p4" / "gemma.01", bad)
    assert _ctl(repo, qt, "unpack", "gemma").returncode == 0
    assert (qt / "x" / "cache/assembled/g/big.gguf").read_bytes() == members["gemma"][0][0].read_bytes()
