"""The test server's first conduit_tables folder (a `conduit_tables` entry of its extra_model_paths.yaml, else its
host's models/conduit_tables): what a test puts there, and what the analysis node writes there during it, is
removed afterwards."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml


def first_table_folder(comfy_server) -> Path:
    """Where the server's analysis node writes tables (patches/tables.py: configured folders come first)."""
    config = comfy_server.workdir / "extra_model_paths.yaml"
    data = yaml.safe_load(config.read_text()) if config.exists() else None
    for conf in (data or {}).values():
        if isinstance(conf, dict) and conf.get("conduit_tables"):
            first = next(line for line in str(conf["conduit_tables"]).split("\n") if line.strip()).strip()
            base = conf.get("base_path")
            if base:
                first = os.path.join(os.path.expandvars(os.path.expanduser(base)), first)
            elif not os.path.isabs(first):
                first = os.path.join(config.parent, first)
            return Path(os.path.normpath(first))
    return Path(comfy_server.host.path) / "models" / "conduit_tables"


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()} if root.exists() else set()


@pytest.fixture(name="server_tables")
def server_tables_fixture(comfy_server):
    root = first_table_folder(comfy_server)
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
