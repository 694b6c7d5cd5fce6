"""The editor the tier drives: the pinned 2024 host's built-in one, or on current ComfyUI the
comfyui-frontend-package version its requirements.txt names, unpacked once into the conduit cache."""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from conduit.host import Host, cache_dir
from conduit.server import supported_flags

PACKAGE = "comfyui-frontend-package"


class NoFrontend(RuntimeError):
    pass


def required_version(host: Host) -> str | None:
    req = host.path / "requirements.txt"
    if not req.is_file():
        return None
    match = re.search(rf"^{PACKAGE}==([\w.]+)", req.read_text(), re.M)
    return match.group(1) if match else None


def frontend_root(host: Host) -> Path | None:
    """The static folder to pass as --front-end-root, or None where the host serves its own editor."""
    if "--front-end-root" not in supported_flags(host):
        if (host.path / "web" / "index.html").is_file():
            return None
        raise NoFrontend(f"{host.describe()} has no built-in editor (web/index.html)")
    version = required_version(host)
    if version is None:
        raise NoFrontend(f"{host.describe()}: requirements.txt names no {PACKAGE} version")
    target = cache_dir() / f"frontend-{version}"
    static = target / "comfyui_frontend_package" / "static"
    if (static / "index.html").is_file():
        return static
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp,
                              f"{PACKAGE}=={version}"], capture_output=True, text=True, timeout=600)
        wheels = list(Path(tmp).glob("*.whl"))
        if got.returncode != 0 or not wheels:
            raise NoFrontend(f"could not download {PACKAGE}=={version} (offline?): {got.stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheels[0]) as z:
            z.extractall(target)
    return static
