"""Start a real ComfyUI (main.py --cpu) on 127.0.0.1 with this pack loaded, and always stop it."""
from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .client import ComfyClient
from .host import REPO_ROOT, Host

log = logging.getLogger(__name__)

PACK_FOLDER = "comfyui-conduit"
TEST_NODES = REPO_ROOT / "tests" / "comfy_nodes"


class ServerFailed(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def supported_flags(host: Host) -> set[str]:
    text = (host.path / "comfy" / "cli_args.py").read_text()
    return set(re.findall(r'"(--[a-z0-9-]+)"', text))


class ComfyServer:
    """Context manager. extra_node_dirs are added as custom_nodes folders (tests add their loader pack).
    frontend_root: the editor to serve on hosts that take --front-end-root (none by default: an empty folder;
    the 2024 host always serves its built-in editor)."""

    def __init__(self, host: Host, extra_node_dirs: list[Path] | None = None, port: int | None = None,
                 workdir: Path | None = None, startup_timeout: float = 240.0,
                 frontend_root: Path | None = None, model_folders: dict[str, Path] | None = None) -> None:
        self.host = host
        self.frontend_root = frontend_root
        self.model_folders = dict(model_folders or {})  # extra folder_paths entries, e.g. {"checkpoints": dir}
        self.extra_node_dirs = list(extra_node_dirs or [])
        self.port = port or free_port()
        self._own_tmp = None if workdir else tempfile.TemporaryDirectory(prefix="conduit-comfy-")
        self.workdir = Path(workdir or self._own_tmp.name)
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "comfyui.log"
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def output_dir(self) -> Path:
        return self.workdir / "output"

    def _layout(self) -> Path:
        nodes = self.workdir / "custom_nodes"
        nodes.mkdir(parents=True, exist_ok=True)
        link = nodes / PACK_FOLDER
        if not link.exists():
            link.symlink_to(REPO_ROOT, target_is_directory=True)
        for d in ("output", "input", "temp", "user", "frontend", "conduit_tables"):
            (self.workdir / d).mkdir(exist_ok=True)
        folders = [str(nodes)] + [str(p) for p in self.extra_node_dirs]
        yaml = self.workdir / "extra_model_paths.yaml"
        # Tables the analysis node saves go to the first conduit_tables folder: keep them in this server's
        # work dir, never in the host's own models/ folder.
        yaml.write_text("conduit:\n    custom_nodes: |\n" + "".join(f"        {f}\n" for f in folders)
                        + f"    conduit_tables: {self.workdir / 'conduit_tables'}\n"
                        + "".join(f"    {name}: {path}\n" for name, path in self.model_folders.items()))
        return yaml

    def command(self) -> list[str]:
        yaml = self._layout()
        flags = supported_flags(self.host)
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--dont-print-server", "--extra-model-paths-config", str(yaml),
               "--output-directory", str(self.workdir / "output"),
               "--input-directory", str(self.workdir / "input"),
               "--temp-directory", str(self.workdir / "temp")]
        optional = {"--front-end-root": [str(self.frontend_root or self.workdir / "frontend")],
                    "--disable-api-nodes": [], "--database-url": ["sqlite:///:memory:"],
                    "--user-directory": [str(self.workdir / "user")]}
        for flag, values in optional.items():
            if flag in flags:
                cmd += [flag, *values]
        return cmd

    def log_tail(self, lines: int = 80) -> str:
        if not self.log_path.exists():
            return "(no ComfyUI log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def start(self) -> "ComfyServer":
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("OMP_NUM_THREADS", "2")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.command(), cwd=self.host.path, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
        client = ComfyClient(self.url)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerFailed(f"ComfyUI exited with {self.proc.returncode}.\n--- log tail ---\n"
                                   + self.log_tail())
            if client.alive():
                return self
            time.sleep(0.5)
        self.stop()
        raise ServerFailed(f"ComfyUI did not answer within {self.startup_timeout:.0f}s.\n--- log tail ---\n"
                           + self.log_tail())

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()

    def client(self, timeout: float = 600.0) -> ComfyClient:
        return ComfyClient(self.url, timeout=timeout)

    def __enter__(self) -> "ComfyServer":
        try:
            return self.start()
        except BaseException:  # Ctrl-C or a failed start: __exit__ will not run, so stop it here
            self.__exit__()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._own_tmp is not None:
            self._own_tmp.cleanup()
