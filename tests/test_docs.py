"""The documentation site builds with ``mkdocs build --strict`` (broken links, nav entries, API refs fail it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="needs mkdocs-material and mkdocstrings-python (the [dev] extra)")
    pytest.importorskip("material", reason="needs mkdocs-material (the [dev] extra)")
    pytest.importorskip("mkdocstrings", reason="needs mkdocstrings-python (the [dev] extra)")
    exe = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    cmd = [exe] if exe else [sys.executable, "-m", "mkdocs"]
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    r = subprocess.run([*cmd, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, f"mkdocs build --strict failed:\n{r.stdout}\n{r.stderr}"
    site = tmp_path / "site"
    for page in ("getting_started", "concepts", "phi3_metadataset", "distributed", "dashboard", "api",
                 "architecture", "trl_objectives", "performance"):
        assert (site / page / "index.html").is_file(), page
    api = (site / "api" / "index.html").read_text()
    assert "QuickTuneSampler" in api and "enqueue_portfolio" in api and "QuickTuneDashboard" in api
