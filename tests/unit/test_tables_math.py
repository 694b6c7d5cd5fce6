"""Sensitivity tables: shipped files, exact conversion from the published gradings, schema validation."""
import json
import math
from pathlib import Path

import pytest
import torch

from conduit.host import REPO_ROOT as REPO
import conduit  # noqa: F401  (registers conduit_pack for the imports below)

import conduit_pack.patches.tables.tables_math as tm
import conduit_pack.patches.engine.errors as errors
GRADINGS = Path(REPO).parent / "shared" / "data" / "cb_gradings.json"
SHIPPED = {"sdxl_style_qk": "sdxl_style_layer_grading", "sdxl_style_qkv": "sdxl_style_balance_grading_v",
           "sd35l_style_qkv": "sd35L_gradingSd35L"}
TABLE_DIR = Path(REPO) / "sensitivity_tables"


def shipped(name):
    return tm.load_table(TABLE_DIR / f"{name}.json")


def test_every_shipped_file_is_known():
    assert sorted(p.stem for p in TABLE_DIR.glob("*.json") if p.name != "schema.json") == sorted(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_table_round_trips(name, tmp_path):
    table = shipped(name)
    tm.save_table(table, tmp_path / "t.json")
    again = tm.load_table(tmp_path / "t.json")
    assert again.layer_keys == table.layer_keys and again.timesteps == table.timesteps
    assert again.source_names == table.source_names and again.provenance == table.provenance
    for f in table.features:
        assert torch.equal(again.scores[f], table.scores[f])
    assert again.to_json() == table.to_json()
    assert tm.SensitivityTable.from_json(json.loads(json.dumps(table.to_json()))).to_json() == table.to_json()


@pytest.mark.skipif(not GRADINGS.exists(), reason="shared reference data not present")
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_table_equals_published_scores_bit_for_bit(name):
    src = json.loads(GRADINGS.read_text())[SHIPPED[name]]
    table = shipped(name)
    assert table.timesteps == src["timesteps"]
    assert sorted(table.source_names) == sorted(src["layer_names"])
    for col, source_name in enumerate(table.source_names):
        i = src["layer_names"].index(source_name)
        for r, t in enumerate(table.timesteps):
            for f in table.features:
                assert table.scores[f][r, col].item() == src["stats"][str(t)][f][i]
    assert set(table.features) == set(src["stats"][str(src["timesteps"][0])])


def test_diffusers_to_comfy_mapping_known_points():
    k = tm.diffusers_attn1_key
    assert k("down_blocks.1.attentions.0.transformer_blocks.1.attn1.processor") == ("input", 4, 1)
    assert k("down_blocks.2.attentions.1.transformer_blocks.9.attn1.processor") == ("input", 8, 9)
    assert k("up_blocks.0.attentions.0.transformer_blocks.0.attn1.processor") == ("output", 0, 0)
    assert k("up_blocks.1.attentions.2.transformer_blocks.1.attn1.processor") == ("output", 5, 1)
    assert k("mid_block.attentions.0.transformer_blocks.3.attn1.processor") == ("middle", 0, 3)
    # SD1.5: attention in down levels 0..2 and up levels 1..3
    assert k("down_blocks.0.attentions.1.transformer_blocks.0.attn1.processor") == ("input", 2, 0)
    assert k("up_blocks.3.attentions.2.transformer_blocks.0.attn1.processor") == ("output", 11, 0)
    assert k("transformer_blocks.7.attn.processor") == ("double_block", 7, 0)
    with pytest.raises(ValueError):
        k("down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor")


def test_sdxl_source_order_is_down_up_mid_last():
    table = shipped("sdxl_style_qk")
    src_index = table.provenance["source_index"]
    assert sorted(src_index) == list(range(70))
    by_source = sorted(range(70), key=lambda c: src_index[c])
    names = [table.source_names[c] for c in by_source]
    assert all(n.startswith("down_blocks") for n in names[:24])
    assert all(n.startswith("up_blocks") for n in names[24:60])
    assert all(n.startswith("mid_block") for n in names[60:])
    assert [table.layer_keys[c] for c in by_source[60:]] == [("middle", 0, j) for j in range(10)]


def test_top_layers_rank_ascending_and_lambda_rule():
    table = shipped("sdxl_style_qk")
    assert table.count_for(0.43) == 30 and table.count_for(0.57) == 39 and table.count_for(1.0) == 70
    assert table.count_for(12) == 12 and table.count_for(0) == 0
    top = table.top_layers("q", 981, 0.43)
    row = table.scores["q"][0]
    cols = [table.layer_keys.index(k) for k in top]
    assert len(top) == 30 and [row[c] for c in cols] == sorted(row[c] for c in cols)
    assert max(row[c] for c in cols) <= min(row[c] for c in range(70) if c not in cols)
    assert table.row_for(995) == 0 and table.row_for(0) == 49 and table.row_for(972) == 0 and table.row_for(970) == 1


def valid():
    return shipped("sd35l_style_qkv").to_json()


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("scores"), "missing field"),
    (lambda d: d.update(schema="other"), "schema"),
    (lambda d: d.update(version=99), "version"),
    (lambda d: d.update(dimension="colour"), "dimension"),
    (lambda d: d["scores"]["q"].pop(), "rows for 28 timesteps"),
    (lambda d: d["scores"]["k"][3].pop(), "values for 38 layers"),
    (lambda d: d["scores"]["v"][2].__setitem__(5, math.nan), "non-finite"),
    (lambda d: d["scores"]["v"][2].__setitem__(5, "x"), "non-finite or non-numeric"),
    (lambda d: d["layer_keys"].__setitem__(0, ["down", 0, 0]), "layer_keys"),
    (lambda d: d["layer_keys"].__setitem__(1, d["layer_keys"][0]), "duplicates"),
    (lambda d: d["source_names"].pop(), "source_names"),
    (lambda d: d["scores"].update(z=d["scores"]["q"]), "unknown feature"),
])
def test_bad_tables_get_a_clear_error(mutate, message):
    data = valid()
    mutate(data)
    with pytest.raises(errors.ConduitError, match=message) as exc:
        tm.load_table(data, "Conduit Test Node")
    assert "[Conduit Test Node]" in str(exc.value) and "Sensitivity Analysis" in str(exc.value)


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "conduit.sensitivity_table", "version": 1, ')
    with pytest.raises(errors.ConduitError, match="not valid JSON"):
        tm.load_table(bad, "N")
    with pytest.raises(errors.ConduitError, match="does not exist"):
        tm.load_table(tmp_path / "none.json", "N")
    nan = tmp_path / "nan.json"
    data = valid()
    nan.write_text(json.dumps(data).replace(str(data["scores"]["q"][0][0]), "NaN", 1))
    with pytest.raises(errors.ConduitError, match="non-finite"):
        tm.load_table(nan, "N")


def test_json_schema_file_agrees_with_the_loader():
    schema = json.loads((TABLE_DIR / "schema.json").read_text())
    assert schema["properties"]["schema"]["const"] == tm.SCHEMA_ID
    assert schema["properties"]["version"]["const"] == tm.TABLE_VERSION
    assert set(schema["properties"]["dimension"]["enum"]) == set(tm.DIMENSIONS)
    data = valid()
    for field in schema["required"]:
        broken = dict(data)
        broken.pop(field)
        with pytest.raises(errors.ConduitError):
            tm.load_table(broken)
