"""The sensitivity analysis workflow on a real ComfyUI server: a table file and heatmaps come back."""
import io
import json
import subprocess
import sys

from PIL import Image

from conduit import workflow
from conduit.cli_tables import fetch_tables
from conduit.host import REPO_ROOT
import conduit  # noqa: F401  (registers conduit_pack for the imports below)
from tests.server.table_folder import server_tables_fixture  # noqa: F401  (the fixture server_tables)

import conduit_pack.patches.tables.tables_math as tm


def small(graph):
    workflow.set_all(graph, "ConduitSensitivityAnalysis", steps=2, width=64, height=64, samples_per_group=2)
    return graph


def test_analysis_workflow_writes_a_table_and_heatmaps(comfy_server, server_tables):
    graph = small(workflow.swap_loaders(workflow.load_api("sensitivity_analysis"), "sdxl"))
    client = comfy_server.client()
    result = client.run(graph)
    (node_id,) = workflow.nodes_of(graph, "ConduitSensitivityAnalysis")
    ref = result.outputs[node_id]["tables"][0]
    on_disk = comfy_server.output_dir / ref["subfolder"] / ref["filename"]
    table = tm.load_table(on_disk)
    # the same file is in models/conduit_tables and listed by the loader after the run
    (name,) = result.outputs[node_id]["table_names"]
    assert (server_tables / name).read_bytes() == on_disk.read_bytes()
    listed = workflow.combo_choices(client.object_info()["ConduitLoadSensitivityTable"]["input"]["required"]["table"])
    assert name in listed
    assert table.family == "sdxl" and table.num_layers == 8 and len(table.timesteps) == 2
    assert table.provenance["image_count"] == 6 and table.features == ["q", "k", "v"]
    (fetched,) = fetch_tables(client, result)
    assert tm.parse_table(fetched).to_json() == table.to_json()
    sizes = sorted(Image.open(io.BytesIO(data)).size for data in result.images)
    assert len(sizes) == 2 and all(w > 200 and h > 200 for w, h in sizes)  # analysed table + published table
    assert "saved " in result.outputs[node_id]["text"][0]


def test_analyze_cli_spreads_seeds_over_servers_and_combines(comfy_server, server_tables, tmp_path):
    out = tmp_path / "combined.json"
    url = comfy_server.url
    proc = subprocess.run(
        [sys.executable, "-m", "conduit", "analyze", "--groups", "oil painting\\nwatercolor\\npencil sketch",
         "--model", "tiny-sdxl", "--seeds", "1,2,3", "--samples", "2", "--steps", "2", "--width", "64",
         "--height", "64", "--server", url, "--server", url, "--out", str(out), "--heatmap",
         str(tmp_path / "h.png")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = tm.load_table(out)
    seeds = sorted(p["seed"] for p in table.provenance["combined"])
    assert seeds == [1, 2, 3] and "dropping the min and the max" in table.provenance["combine"]
    assert Image.open(tmp_path / "h.png").size[0] > 200
    json.loads(out.read_text())
