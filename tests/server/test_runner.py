"""The headless runner CLI: overrides, seeds, and spreading runs across several servers."""
import json
import subprocess
import sys

import pytest

from conduit import workflow
from conduit.cli_run import parse_seeds
from conduit.host import REPO_ROOT, find_host
from conduit.server import TEST_NODES, ComfyServer


def test_parse_seeds_and_assignments():
    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    assert parse_seeds(None) == [None]
    assert workflow.parse_assignment("3.cfg=4.5") == ("3", "cfg", 4.5)
    assert workflow.parse_assignment("6.text=a cat") == ("6", "text", "a cat")
    with pytest.raises(ValueError, match="NODE.INPUT=VALUE"):
        workflow.parse_assignment("cfg=4")


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "conduit", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_runner_spreads_seeds_over_two_servers(comfy_server, tmp_path):
    with ComfyServer(find_host(), extra_node_dirs=[TEST_NODES]) as second:
        urls = [comfy_server.url, second.url]
        proc = run_cli("run", "txt2img_vanilla", "--model", "tiny-sdxl", "--seeds", "0-3",
                       "--set", "5.width=128", "--set", "5.height=128", "--set", "3.steps=2",
                       "--server", urls[0], "--server", urls[1], "--out", str(tmp_path))
        assert proc.returncode == 0, proc.stderr[-3000:]
        saved = sorted(p.name for p in tmp_path.glob("*.png"))
        assert len(saved) == 4 and all(f"_s{s}_" in " ".join(saved) for s in range(4))
        counts = [len(s_hist) for s_hist in (comfy_server.client().get_json("/history"),
                                             second.client().get_json("/history"))]
        assert all(c >= 2 for c in counts), counts


def test_runner_reports_unreachable_server(tmp_path):
    proc = run_cli("run", "txt2img_vanilla", "--server", "http://127.0.0.1:9", "--out", str(tmp_path), timeout=60)
    assert proc.returncode != 0
    assert "does not answer" in proc.stderr + proc.stdout
