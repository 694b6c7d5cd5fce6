"""One declaration, two node APIs: V3 nodes (comfy_entrypoint) on hosts with comfy_api.latest, classic mappings
on older hosts, never both; the V3 schema ComfyUI serves equals the classic declaration, so node ids, input
names, widget order and saved workflows stay the same; the input guard runs on both."""
import asyncio
import math

import pytest

import conduit  # noqa: F401  (registers conduit_pack for the imports below)

import conduit_pack.nodes as nodes
import conduit_pack.patches.engine.errors as errors
from conduit_pack.patches.engine.host import v3_node_api

V3 = v3_node_api()
needs_v3 = pytest.mark.skipif(V3 is None, reason="this host has no comfy_api.latest (V3 nodes came with ComfyUI "
                                                  "0.3.4x); the pack registers classic mappings here")


def v3_classes(pack) -> dict[str, type]:
    extension = asyncio.run(pack.comfy_entrypoint())
    assert isinstance(extension, V3.ComfyExtension)
    node_list = asyncio.run(extension.get_node_list())
    return {cls.GET_SCHEMA().node_id: cls for cls in node_list}


def classic_form(spec: dict) -> dict:
    """An /object_info input dict with V3's combo form ("COMBO", {"options": [...]}) written the classic way."""
    out = {}
    for section, entries in spec.items():
        out[section] = {}
        for name, entry in entries.items():
            kind, opts = entry[0], dict(entry[1]) if len(entry) > 1 else {}
            if kind == "COMBO":
                kind = list(opts.pop("options"))
                assert opts.pop("multiselect", False) is False
            out[section][name] = (list(kind) if isinstance(kind, (list, tuple)) else kind, opts)
    return out


def test_the_pack_exports_exactly_one_api(pack):
    exported = {name for name in ("NODE_CLASS_MAPPINGS", "comfy_entrypoint") if hasattr(pack, name)}
    if V3 is None:
        assert exported == {"NODE_CLASS_MAPPINGS"} and pack.NODE_API == "classic"
        assert pack.NODE_CLASS_MAPPINGS == nodes.NODE_CLASS_MAPPINGS
        assert pack.NODE_DISPLAY_NAME_MAPPINGS == nodes.NODE_DISPLAY_NAME_MAPPINGS
    else:
        assert exported == {"comfy_entrypoint"} and pack.NODE_API == "v3"
    assert pack.WEB_DIRECTORY == "./web"


@needs_v3
def test_v3_nodes_are_the_declared_nodes(pack):
    classes = v3_classes(pack)
    assert list(classes) == list(nodes.NODE_CLASS_MAPPINGS)  # same ids, same order
    assert len(classes) >= 20
    for node_id, v3 in classes.items():
        decl = nodes.NODE_CLASS_MAPPINGS[node_id]
        assert issubclass(v3, V3.io.ComfyNode) and v3.DECLARATION is decl
        schema = v3.GET_SCHEMA()
        assert schema.display_name == decl.DISPLAY_NAME == nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id]
        assert v3.CATEGORY == decl.CATEGORY and v3.DESCRIPTION == decl.DESCRIPTION
        assert bool(v3.OUTPUT_NODE) == bool(getattr(decl, "OUTPUT_NODE", False))
        assert list(v3.RETURN_TYPES) == list(decl.RETURN_TYPES)
        assert list(v3.RETURN_NAMES) == list(getattr(decl, "RETURN_NAMES", None) or decl.RETURN_TYPES)
        assert list(v3.OUTPUT_TOOLTIPS) == list(decl.OUTPUT_TOOLTIPS)
        # what /object_info serves for the V3 node is the classic declaration, option by option, in order
        served = classic_form(v3.INPUT_TYPES(include_hidden=False))
        declared = classic_form({k: v for k, v in decl.INPUT_TYPES().items() if k in ("required", "optional")})
        assert served == declared, node_id
        for section in served:
            assert list(served[section]) == list(declared[section]), node_id  # widget order of saved workflows
        info = v3.GET_NODE_INFO_V1()
        assert info["name"] == node_id and info["output_name"] == list(v3.RETURN_NAMES)


@needs_v3
@pytest.mark.parametrize("node_id, name, value", [
    ("ConduitSmoothedEnergyGuidance", "scale", math.nan),
    ("ConduitBalancedStyle", "style_strength", math.inf),
    ("ConduitSmoothedEnergyGuidance", "layers", "no such preset"),
    ("ConduitModelLayers", "width", 3),
])
def test_the_guard_runs_in_front_of_v3_execute(pack, node_id, name, value):
    from tests.host.test_input_guard import good_values

    v3 = v3_classes(pack)[node_id]
    kwargs = good_values(v3.DECLARATION, fill=object())
    kwargs[name] = value
    with pytest.raises(errors.ConduitError) as err:
        v3.PREPARE_CLASS_CLONE({}).EXECUTE_NORMALIZED(**kwargs)  # the call ComfyUI's executor makes
    text = str(err.value)
    assert text.startswith(f"[{v3.DECLARATION.DISPLAY_NAME}]") and f"'{name}'" in text and "Fix:" in text


@needs_v3
def test_v3_execute_returns_the_declared_outputs_and_ui_text(pack, tiny_sdxl):
    model = tiny_sdxl.model
    v3 = v3_classes(pack)["ConduitModelLayers"]
    out = v3.PREPARE_CLASS_CLONE({}).EXECUTE_NORMALIZED(model=model, width=256, height=192)
    assert isinstance(out, V3.io.NodeOutput)
    classic = nodes.NODE_CLASS_MAPPINGS["ConduitModelLayers"]().list_layers(model, 256, 192)
    assert out.result == classic["result"] and out.ui == classic["ui"]
    assert "grid 6x8" in out.result[0] and out.ui["text"] == [out.result[0]]

    seg = v3_classes(pack)["ConduitSmoothedEnergyGuidance"].PREPARE_CLASS_CLONE({})
    patched = seg.EXECUTE_NORMALIZED(model=model, scale=3.0, blur_sigma=-1.0, start_percent=0.0,
                                     end_percent=1.0, layers="middle", custom_layers="", rescale=0.0)
    assert out.ui is not None and patched.ui is None and len(patched.result) == 1
    assert patched.result[0] is not model and patched.result[0].model is model.model  # a patched clone
