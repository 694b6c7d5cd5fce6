"""The test server's conduit_tables folder (its host's models/conduit_tables): what a test puts there, and what
the analysis node writes there during it, is removed afterwards."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()} if root.exists() else set()


@pytest.fixture(name="server_tables")
def server_tables_fixture(comfy_server):
    root = Path(comfy_server.host.path) / "models" / "conduit_tables"
    existed = root.exists()
    before = _files(root)
    dirs_before = {p for p in root.rglob("*") if p.is_dir()} if existed else set()
    yield root
    for p in _files(root) - before:
        p.unlink()
    if not existed:
        shutil.rmtree(root, ignore_errors=True)
        return
    for d in sorted({p for p in root.rglob("*") if p.is_dir()} - dirs_before, key=lambda p: -len(p.parts)):
        if not any(d.iterdir()):
            d.rmdir()
