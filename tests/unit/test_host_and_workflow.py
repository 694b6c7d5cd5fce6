"""Host discovery order and messages; workflow conversion between the UI and API formats."""
import pytest

from conduit import host as host_mod
from conduit import workflow


def fake_comfy(path):
    (path / "comfy").mkdir(parents=True)
    (path / "main.py").write_text("")
    (path / "comfy" / "model_patcher.py").write_text("")
    (path / "comfyui_version.py").write_text('__version__ = "9.9.9"\n')
    return path


def test_comfyui_path_wins(tmp_path, monkeypatch):
    fake = fake_comfy(tmp_path / "c")
    monkeypatch.setenv("COMFYUI_PATH", str(fake))
    h = host_mod.find_host(allow_fetch=False)
    assert (h.source, h.version, h.path) == ("COMFYUI_PATH", "9.9.9", fake.resolve())


def test_bad_comfyui_path_says_what_to_set(tmp_path, monkeypatch):
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path))
    with pytest.raises(host_mod.HostNotFound, match="COMFYUI_PATH=.*not a ComfyUI checkout"):
        host_mod.find_host(allow_fetch=False)


def test_parent_comfyui_when_cloned_into_custom_nodes(tmp_path, monkeypatch):
    comfy = fake_comfy(tmp_path / "ComfyUI")
    pack = comfy / "custom_nodes" / "any-name"
    pack.mkdir(parents=True)
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    monkeypatch.setattr(host_mod, "REPO_ROOT", pack)
    h = host_mod.find_host(allow_fetch=False)
    assert h.source == "parent" and h.path == comfy


def test_missing_host_message_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    monkeypatch.setattr(host_mod, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.setenv("CONDUIT_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(host_mod.HostNotFound, match="Set COMFYUI_PATH"):
        host_mod.find_host(allow_fetch=False)


OBJECT_INFO = {
    "Loader": {"input": {"required": {"ckpt_name": [["a.safetensors", "b.safetensors"], {}]}},
               "input_order": {"required": ["ckpt_name"]}, "output": ["MODEL", "CLIP"],
               "output_name": ["MODEL", "CLIP"]},
    "Sampler": {"input": {"required": {"model": ["MODEL", {}], "seed": ["INT", {"default": 0}],
                                       "cfg": ["FLOAT", {"default": 8.0}], "name": [["euler", "heun"], {}]},
                          "optional": {"note": ["STRING", {"default": "x"}]}},
                "input_order": {"required": ["model", "seed", "cfg", "name"], "optional": ["note"]},
                "output": ["LATENT"], "output_name": ["LATENT"]},
}


def test_api_ui_round_trip_with_seed_control_value():
    api = {"1": {"class_type": "Loader", "inputs": {"ckpt_name": "b.safetensors"}},
           "2": {"class_type": "Sampler", "inputs": {"model": ["1", 0], "seed": 7, "cfg": 3.5, "name": "heun",
                                                     "note": "hello"}}}
    ui = workflow.ui_from_api(api, OBJECT_INFO)
    sampler = next(n for n in ui["nodes"] if n["type"] == "Sampler")
    assert sampler["widgets_values"] == [7, "fixed", 3.5, "heun", "hello"]
    assert ui["links"] == [[1, 1, 0, 2, 0, "MODEL"]]
    assert workflow.api_from_ui(ui, OBJECT_INFO) == api


def test_api_from_ui_fills_defaults_and_skips_muted_nodes():
    api = {"1": {"class_type": "Loader", "inputs": {"ckpt_name": "a.safetensors"}},
           "2": {"class_type": "Sampler", "inputs": {"model": ["1", 0], "seed": 1, "cfg": 8.0, "name": "euler"}}}
    ui = workflow.ui_from_api(api, OBJECT_INFO)
    ui["nodes"].append({"id": 9, "type": "Loader", "mode": 2, "widgets_values": ["a.safetensors"]})
    back = workflow.api_from_ui(ui, OBJECT_INFO)
    assert back["2"]["inputs"]["note"] == "x" and "9" not in back


def test_swap_loaders_and_seeds():
    api = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x"}},
           "3": {"class_type": "KSampler", "inputs": {"seed": 1, "model": ["4", 0]}},
           "7": {"class_type": "SamplerCustom", "inputs": {"noise_seed": 2}}}
    g = workflow.swap_loaders(api, "sd15")
    assert g["4"] == {"class_type": "ConduitTestTinyCheckpoint", "inputs": {"family": "sd15", "seed": 0}}
    assert api["4"]["class_type"] == "CheckpointLoaderSimple"
    assert workflow.set_seeds(g, 42) == 2 and g["7"]["inputs"]["noise_seed"] == 42
    assert workflow.use_demo_model(api)["4"] == {"class_type": "ConduitDemoToyModelLoader", "inputs": {}}
