"""What the registry gets: the archive `comfy node pack` builds under .comfyignore holds the pack and none of the
development material, its sources pass comfy-test's lint (cp1252 and ComfyUI-native patterns) and
`comfy node validate`, and pyproject's [tool.comfy] points at committed images.

The registry tools (comfy-cli, comfy-test) live in their own environment, .venv-checkers (`make checkers`;
they need packages ComfyUI's pins do not want in the test venv). Without it the tool runs skip with the
command that installs it; the checks of our own below always run.
"""
from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
CHECKERS = REPO / ".venv-checkers" / "bin"
RUNTIME = ("__init__.py", "nodes", "patches", "toyworld", "sensitivity_tables", "web", "example_workflows",
           "pyproject.toml",
           "README.md", "requirements.txt")
DEV_ONLY = ("tests", "bench", "eval", "scripts", "conduit", "workflows", ".ci", "Makefile", "constraints-dev.txt",
            "requirements-dev.txt")
needs_checkers = pytest.mark.skipif(not (CHECKERS / "comfy").is_file() or not (CHECKERS / "comfy-test").is_file(),
                                    reason="registry tools not installed: run `make checkers` (comfy-cli and "
                                           "comfy-test from PyPI into .venv-checkers)")


def tracked_files() -> list[str]:
    return subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()


def comfyignore_patterns() -> list[str]:
    lines = (REPO / ".comfyignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_comfyignore_leaves_out_the_development_material_and_keeps_the_pack():
    patterns = comfyignore_patterns()
    for name in DEV_ONLY:
        assert any(p.rstrip("/") == name for p in patterns), f"{name} would ship; add it to .comfyignore"
    for name in RUNTIME:
        assert not any(p.rstrip("/") == name for p in patterns), f"{name} is needed at runtime"


def test_shipped_python_is_cp1252_clean():
    """comfy-test refuses characters a Windows console (cp1252) cannot print; checked here without the tool,
    on every tracked .py file (tests and tooling included: they run on Windows clones too)."""
    bad = []
    for rel in tracked_files():
        if rel.endswith(".py"):
            for n, line in enumerate((REPO / rel).read_text(encoding="utf-8").splitlines(), 1):
                try:
                    line.encode("cp1252")
                except UnicodeEncodeError:
                    bad.append(f"{rel}:{n}")
    assert not bad, bad


def test_registry_metadata_is_complete_and_honest():
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    urls = meta["project"]["urls"]
    for key in ("Repository", "Homepage", "Documentation", "Issues"):
        assert urls.get(key, "").startswith("https://"), key
    comfy = meta["tool"]["comfy"]
    # the oldest released ComfyUI the suite runs on (the pinned 2024 host predates version numbers)
    assert comfy["requires-comfyui"] == ">=0.3.64"
    for key, path, ratio in (("Icon", "assets/icon.png", 1.0), ("Banner", "assets/banner.png", 21 / 9)):
        assert comfy[key].endswith("/main/" + path), key
        assert path in tracked_files(), f"{path} is not committed"
        with Image.open(REPO / path) as img:
            assert abs(img.width / img.height - ratio) < 0.01, (key, img.size)
        assert (REPO / path).stat().st_size < 200_000, f"{path} is large for a registry image"


def run_tool(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HOME=str(cwd.parent / "home"), PYTHONUTF8="1")
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """The archive `comfy node pack` builds from this clone, unpacked."""
    work = tmp_path_factory.mktemp("pack")
    (work / "home").mkdir()
    result = run_tool([CHECKERS / "comfy", "--skip-prompt", "node", "pack"], REPO)
    zip_path = REPO / "node.zip"
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        out = work / "conduit"
        with zipfile.ZipFile(zip_path) as z:
            z.extractall(out)
        (work / "size").write_text(str(zip_path.stat().st_size))
    finally:
        zip_path.unlink(missing_ok=True)
    return out


@needs_checkers
def test_the_registry_archive_holds_the_pack_and_no_development_material(packed):
    shipped = {p.relative_to(packed).parts[0] for p in packed.rglob("*") if p.is_file()}
    assert set(RUNTIME) <= shipped, sorted(set(RUNTIME) - shipped)
    assert not shipped & set(DEV_ONLY), sorted(shipped & set(DEV_ONLY))
    size = int((packed.parent / "size").read_text())
    # the demo model's weights (toy UNet + VAE + CLIP and the toy ControlNet, 20 MB; the toy world's bound is 30 MB)
    # are most of it, then under 2 MB of pictures (docs, thumbnails, help pages): anything larger is material
    # that should not ship
    assert size < 23_000_000, size


@needs_checkers
def test_comfy_test_lint_passes_on_the_archive(packed):
    result = run_tool([CHECKERS / "comfy-test", "lint", packed], packed.parent)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "[SYNTAX] PASSED" in result.stdout and "[JAVASCRIPT] PASSED" in result.stdout


@needs_checkers
def test_comfy_node_validate_passes_on_the_archive(packed):
    result = run_tool([CHECKERS / "comfy", "--skip-prompt", "node", "validate"], packed)
    said = result.stdout + result.stderr
    assert result.returncode == 0, said
    assert "All validation checks passed" in said and "Security warnings" not in said, said
