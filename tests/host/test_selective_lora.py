"""Conduit Selective LoRA: ComfyUI's LoRA loader, restricted to the table's style (or content) layers."""
import pytest
import torch

from conduit import testing
import conduit  # noqa: F401  (registers conduit_pack for the imports below)
from tests.host.cb_helpers import hand_table, tiny_keys

import conduit_pack.nodes.conditional_balance as cbn
import conduit_pack.patches.conditional_balance.selective_lora as sl
import conduit_pack.patches.engine.errors  # noqa: E402

ATTN = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_out.0")


def tiny_lora(model, rank=2, seed=0, extra_outside=True):
    """Kohya-format LoRA on every attention projection of every transformer block (+ one resnet conv)."""
    g = torch.Generator().manual_seed(seed)
    sd = model.model.state_dict()
    names = [k for k in sd if ".transformer_blocks." in k and any(f".{a}.weight" in k for a in ATTN)]
    if extra_outside:
        names.append("diffusion_model.input_blocks.1.0.in_layers.2.weight")
    lora = {}
    for name in names:
        w = sd[name]
        key = "lora_unet_" + name[len("diffusion_model."):-len(".weight")].replace(".", "_")
        flat_in = w[0].numel()
        lora[f"{key}.lora_up.weight"] = torch.randn(w.shape[0], rank, generator=g) * 0.5
        down = torch.randn(rank, flat_in, generator=g) * 0.5
        lora[f"{key}.lora_down.weight"] = down.view(rank, *w.shape[1:]) if w.ndim == 4 else down
        lora[f"{key}.alpha"] = torch.tensor(float(rank))
    return lora


def expected_style_layers(model, strength):
    """Independent: mean score over timesteps, n lowest by q and by k, union."""
    table = hand_table(model)
    keys = tiny_keys(model)
    n = int(strength * len(keys))
    chosen = set()
    for f in ("q", "k"):
        means = [sum(float(table.scores[f][r][i]) for r in range(len(table.timesteps))) / len(table.timesteps)
                 for i in range(len(keys))]
        chosen |= {keys[i] for i in sorted(range(len(keys)), key=lambda i: (means[i], i))[:n]}
    return chosen


def hand_filtered(lora, layer_keys):
    """Keep LoRA entries whose name lies in one of the layers' transformer blocks (kohya underscore names)."""
    prefixes = []
    for block, block_id, index in layer_keys:
        blocks = "middle_block" if block == "middle" else f"{block}_blocks_{block_id}"
        prefixes.append(f"lora_unet_{blocks}_1_transformer_blocks_{index}_")
    return {k: v for k, v in lora.items() if any(k.startswith(p) for p in prefixes)}


def sample(model, tiny):
    return testing.sample(model, tiny.cond(), tiny.cond(seed=1), steps=2)


@pytest.mark.parametrize("layers_mode", ["style layers", "content layers"])
def test_selected_layers_only_equals_hand_filtered_lora(tiny_sdxl, layers_mode):
    import comfy.sd

    lora = tiny_lora(tiny_sdxl.model)
    style = expected_style_layers(tiny_sdxl.model, 0.5)
    assert 0 < len(style) < 8
    want_layers = style if layers_mode == "style layers" else set(tiny_keys(tiny_sdxl.model)) - style
    m = cbn.selective_lora(tiny_sdxl.model, lora, 0.8, 0.5, layers_mode, hand_table(tiny_sdxl.model))
    want, _ = comfy.sd.load_lora_for_models(tiny_sdxl.model, None, hand_filtered(lora, want_layers), 0.8, 0)
    assert set(m.patches) == set(want.patches) and len(m.patches) == 6 * len(want_layers)
    out = sample(m, tiny_sdxl)
    assert torch.equal(out, sample(want, tiny_sdxl))
    full, _ = comfy.sd.load_lora_for_models(tiny_sdxl.model, None, lora, 0.8, 0)
    assert (out - sample(full, tiny_sdxl)).abs().max() > 1e-4
    assert not tiny_sdxl.model.patches  # the input model is untouched


def test_no_matching_keys_warns_and_returns_model_unchanged(tiny_sdxl, caplog):
    foreign = {"lora_unet_not_a_layer_of_this_model.lora_up.weight": torch.ones(4, 1),
               "lora_unet_not_a_layer_of_this_model.lora_down.weight": torch.ones(1, 4)}
    with caplog.at_level("WARNING"):
        m = cbn.selective_lora(tiny_sdxl.model, foreign, 1.0, 0.5, "style layers", hand_table(tiny_sdxl.model))
    assert m is tiny_sdxl.model and "no weights that match" in caplog.text
    caplog.clear()
    outside_only = {k: v for k, v in tiny_lora(tiny_sdxl.model).items() if "in_layers" in k}
    with caplog.at_level("WARNING"):
        m = cbn.selective_lora(tiny_sdxl.model, outside_only, 1.0, 0.5, "style layers", hand_table(tiny_sdxl.model))
    assert m is tiny_sdxl.model and "none of the LoRA" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        m = cbn.selective_lora(tiny_sdxl.model, tiny_lora(tiny_sdxl.model), 1.0, 1.0, "content layers",
                               hand_table(tiny_sdxl.model))
    assert m is tiny_sdxl.model and "no layers selected" in caplog.text


def test_static_style_layers_on_shipped_sdxl_table_match_b_lora_blocks():
    """With lambda_S = 0.57 the official table's static style set holds B-LoRA's style block (output 1, the
    InstantStyle block) in part and never B-LoRA's content block (output 0) or the middle block."""
    import conduit_pack.patches.tables.table as tables
    style = set(sl.static_style_layers(tables.table_for_family("sdxl", "style_qk", "t"), 0.57))
    assert not any(k[:2] == ("output", 0) for k in style)
    assert not any(k[0] == "middle" for k in style)
    assert {("output", 1, j) for j in range(5, 10)} <= style


def test_node_loads_lora_file(tiny_sdxl, tmp_path, monkeypatch):
    import folder_paths
    import safetensors.torch

    path = tmp_path / "tiny_style.safetensors"
    safetensors.torch.save_file(tiny_lora(tiny_sdxl.model), str(path))
    monkeypatch.setattr(folder_paths, "get_full_path", lambda kind, name: str(path) if kind == "loras" else None)
    node = cbn.ConduitSelectiveLoRA()
    (m,) = node.apply(tiny_sdxl.model, "tiny_style.safetensors", 1.0, 0.5, "style layers",
                      hand_table(tiny_sdxl.model))
    assert len(m.patches) == 6 * len(expected_style_layers(tiny_sdxl.model, 0.5))
    with pytest.raises(conduit_pack.patches.engine.errors.ConduitError, match="Sensitivity Analysis"):
        node.apply(tiny_sdxl.model, "tiny_style.safetensors", 1.0, 0.5, "style layers")  # shipped 70-layer table
