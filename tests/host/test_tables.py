"""Sensitivity tables against real ComfyUI UNets: layer mapping, validation, statistics hooks, planted grading."""
import json

import pytest
import torch

from conduit import testing
import conduit  # noqa: F401  (registers conduit_pack for the imports below)
from conduit_pack.toyworld import build

import conduit_pack.patches.tables.table as tables
import conduit_pack.patches.tables.analysis as analysis
import conduit_pack.patches.engine.layers as layers
import conduit_pack.patches.engine.errors as errors
import conduit_pack.nodes  # noqa: E402
import conduit_pack.patches.engine.attention  # noqa: E402
import conduit_pack.patches.engine.batch  # noqa: E402


def meta_unet(family_config: dict, head_channels: int, cls_name: str = "SDXL"):
    """A ModelPatcher around a full-size ComfyUI UNet built on the meta device: real topology, no weights."""
    import comfy.model_patcher
    import comfy.supported_models as sm

    mc = getattr(sm, cls_name)(dict(family_config))
    mc.unet_config["num_heads"] = -1
    mc.unet_config["num_head_channels"] = head_channels
    model = mc.get_model({}, "", device=torch.device("meta"))
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


@pytest.fixture(scope="module")
def sdxl_full():
    return meta_unet(build.SDXL_FULL_UNET, 64)


# Conditional Balance spec §1.3: in how many of the 50 timesteps each CB layer index is among the
# top 30 (lambda_S = 0.43) of the main table, feature q. Every index not listed: 0.
SPEC_Q_FREQUENCY = {0: 33, 1: 42, 2: 44, 3: 48, 4: 30, 5: 36, 8: 14, 9: 4, 10: 44, 11: 41, 12: 41, 13: 34, 16: 8,
                    17: 6, 18: 15, 19: 6, 20: 14, 21: 12, 22: 10, 23: 7, 35: 1, 36: 4, 37: 20, 38: 42, 39: 50,
                    40: 50, 41: 50, 42: 50, 43: 50, 44: 49, 45: 50, 46: 41, 47: 46, 48: 50, 49: 50, 50: 50,
                    51: 41, 52: 31, 53: 9, 54: 30, 55: 49, 56: 50, 57: 49, 58: 49, 59: 49, 60: 1}


def test_sdxl_tables_use_comfyui_layer_order_and_keys(sdxl_full):
    model_layers = layers.attention_layers(sdxl_full)
    assert len(model_layers) == 70
    for name in ("sdxl_style_qk", "sdxl_style_qkv"):
        table = tables.builtin_table(name)
        assert table.layer_keys == [layer.key for layer in model_layers]
        assert tables.validate_against(table, sdxl_full, "T") == {k: i for i, k in enumerate(table.layer_keys)}
        # source order is down, up, mid last: CB indices 60-69 are ComfyUI's ("middle", 0, j)
        src = table.provenance["source_index"]
        mid = [table.layer_keys[c] for c in range(70) if src[c] >= 60]
        assert mid == [("middle", 0, j) for j in range(10)]
        assert all(table.source_names[c].startswith("mid_block") for c in range(70) if src[c] >= 60)
        # per column, channels agree with the diffusers block: down_blocks.1 / up_blocks.1 are 640 wide
        for layer, source in zip(model_layers, table.source_names):
            wide = source.startswith(("down_blocks.1", "up_blocks.1"))
            assert layer.heads * layer.dim_head == (640 if wide else 1280), source


def test_top_style_layers_at_lambda_043_are_the_ones_the_spec_names():
    table = tables.builtin_table("sdxl_style_qk")
    src = table.provenance["source_index"]
    cb_of = {table.layer_keys[c]: src[c] for c in range(70)}
    freq = {i: 0 for i in range(70)}
    for t in table.timesteps:
        top = table.top_layers("q", t, 0.43)
        assert len(top) == 30
        for key in top:
            freq[cb_of[key]] += 1
        assert not any(k[0] == "output" and k[1] == 0 for k in top)  # up_blocks.0.attentions.0 (content)
        assert {("output", 1, j) for j in range(5, 10)} <= set(top)  # up_blocks.0.attentions.1 t5-t9 (style)
    assert {i: n for i, n in freq.items() if n} == SPEC_Q_FREQUENCY


def test_validate_against_wrong_family_and_wrong_layers(sdxl_full, tiny_sdxl, tiny_sd15):
    shipped = tables.builtin_table("sdxl_style_qk")
    with pytest.raises(errors.ConduitError, match="does not match this model's layers") as exc:
        tables.validate_against(shipped, tiny_sdxl.model, "Conduit Style Node")
    assert "[Conduit Style Node]" in str(exc.value) and "Sensitivity Analysis" in str(exc.value)
    with pytest.raises(errors.ConduitError, match="model family 'sdxl'.*SD1.x"):
        tables.validate_against(shipped, tiny_sd15.model, "N")
    with pytest.raises(errors.ConduitError, match="Sensitivity Analysis"):
        tables.table_for_family("sd15", "style_qk", "N")
    assert tables.table_for_family("sdxl", "style_qkv", "N").features == ["q", "k", "v"]


def planted_patch(block: tuple, strength: float):
    """attn1 patch that shifts only the query input of one layer by an amount set by the sampled group."""
    def patch(n, context, value, extra):
        info = extra.get(analysis.TRANSFORMER_KEY)
        if info is not None and extra.get("block") == block and extra.get("block_index") == 0:
            n = n + strength * (info["group"] + 1)
        return n, context, value
    return patch


@pytest.mark.parametrize("family, block", [("sdxl", ("output", 3)), ("sd15", ("input", 3)),
                                           ("sd2", ("output", 4))])
def test_planted_group_dependent_layer_ranks_first(family, block):
    tiny = testing.tiny_model(family)
    model = tiny.model.clone()
    model.set_model_attn1_patch(planted_patch(block, 2.0))
    neg = tiny.cond(1, 99)
    items = [analysis.AnalysisItem(g, tiny.cond(1, g), neg, [0, 1], label=f"g{g}") for g in range(3)]
    ticks = []
    table = analysis.analyse(model, items, analysis.AnalysisSettings(steps=3, latent_hw=(16, 16)), "T",
                             progress=ticks.append)
    assert len(ticks) == 3 * 3 + 3  # every sampling step of every item, then every graded step
    assert table.family == family and len(table.timesteps) == 3
    assert table.layer_keys == [layer.key for layer in layers.attention_layers(tiny.model)]
    planted = table.layer_keys.index((*block, 0))
    for t in table.timesteps:
        assert table.ranking("q", t)[0] == planted
        assert table.top_layers("q", t, 0.2) == [(*block, 0)]  # int(0.2 * 7 or 8) = 1 layer
    tables.validate_against(table, tiny.model, "T")


def test_collected_statistics_are_the_attention_inputs_and_chain(tiny_sdxl):
    """An inner replace (another pack) still runs, and the recorded stats equal the q/k/v it receives."""
    seen = {}
    key = ("output", 2, 0)
    model = tiny_sdxl.model.clone()

    def make(inner):
        def other_pack(q, k, v, extra):
            seen.setdefault(float(extra["sigmas"].flatten()[0]), []).append(
                (q.detach().clone(), k.detach().clone(), v.detach().clone(), list(extra["cond_or_uncond"])))
            return inner(q, k, v, extra)
        return other_pack

    conduit_pack.patches.engine.attention.set_replace(model, "attn1", key, make)
    layer_list = layers.attention_layers(model)
    sigmas = analysis.schedule_sigmas(model, 2, "euler", "normal")
    collector = analysis.StatsCollector(layer_list, sigmas)
    hooked = collector.install(model)
    collector.begin(2)
    c = tiny_sdxl.cond(1, 0)
    testing.sample(hooked, c, tiny_sdxl.cond(1, 1), latent_hw=(16, 24), batch=2, steps=2, sigmas=sigmas)
    buf, recorded = collector.end()
    assert recorded.all()
    a, b = collector.offsets[key]
    for step, sigma in enumerate(sigmas[:-1].tolist()):
        (calls,) = [val for s, val in seen.items() if abs(s - sigma) < 1e-4 * sigma]
        ((q, k, v, cou),) = calls  # cond and uncond in one batched call at this size
        for kind, rows in conduit_pack.patches.engine.batch.chunk_slices(q.shape[0], cou):
            slot = 1 if kind == 0 else 0
            for fi, x in enumerate((q, k, v)):
                x = x[rows].double()
                assert torch.allclose(buf[:, step, fi, slot, 0, a:b].double(), x.mean(1), atol=1e-5)
                sd = (x.var(1, unbiased=True) + 1e-5).sqrt()
                assert torch.allclose(buf[:, step, fi, slot, 1, a:b].double(), sd, atol=1e-4, rtol=1e-4)


def test_memory_does_not_grow_with_tokens(tiny_sdxl):
    layer_list = layers.attention_layers(tiny_sdxl.model)
    sizes = []
    for hw in ((8, 8), (32, 48)):
        sigmas = analysis.schedule_sigmas(tiny_sdxl.model, 2, "euler", "normal")
        collector = analysis.StatsCollector(layer_list, sigmas)
        hooked = collector.install(tiny_sdxl.model)
        collector.begin(1)
        c = tiny_sdxl.cond(1, 0)
        testing.sample(hooked, c, c, latent_hw=hw, steps=2, sigmas=sigmas)
        buf, _ = collector.end()
        sizes.append(buf.numel())
    assert sizes[0] == sizes[1] == 2 * 3 * 2 * 2 * sum(l.heads * l.dim_head for l in layer_list)


def test_empty_or_single_groups_get_a_clear_error(tiny_sdxl):
    c = tiny_sdxl.cond()
    settings = analysis.AnalysisSettings(steps=2, latent_hw=(8, 8))
    cases = [
        ([], "no prompts or images"),
        ([analysis.AnalysisItem(0, c, c, [0, 1]), analysis.AnalysisItem(0, c, c, [2])], "at least 2 groups"),
        ([analysis.AnalysisItem(0, c, c, [0]), analysis.AnalysisItem(1, c, c, [0])], "2 or more images"),
        ([analysis.AnalysisItem(0, c, c, [0, 1]), analysis.AnalysisItem(1, c, c, [], label="oils")], "has no samples"),
    ]
    for items, message in cases:
        with pytest.raises(errors.ConduitError, match=message) as exc:
            analysis.analyse(tiny_sdxl.model, items, settings, "Conduit Sensitivity Analysis")
        assert str(exc.value).startswith("[Conduit Sensitivity Analysis]") and "Fix:" in str(exc.value)


def test_analysis_node_writes_a_table_and_heatmap_draws_it(pack, tiny_sdxl, tmp_path, monkeypatch):
    import folder_paths

    nodes = conduit_pack.nodes.NODE_CLASS_MAPPINGS
    clip = build.build_clip("sdxl", 1)
    vae = build.build_vae(2)
    images = torch.rand(4, 64, 64, 3)
    table_dir = tmp_path / "conduit_tables"
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "conduit_tables", ([str(table_dir)], {".json"}))
    monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path))  # default folder = tmp_path/conduit_tables
    old = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path / "output"))
    try:
        out = nodes["ConduitSensitivityAnalysis"]().analyse(
            tiny_sdxl.model, clip, "oil painting | impasto\nwatercolor\n# ignored line\n", "a rabbit", "", 2, 2,
            5.0, "euler", "normal", 128, 128, 10, "structure", "sens/t", images=images, vae=vae,
            images_per_group=2)
    finally:
        folder_paths.set_output_directory(old)
    table, text = out["result"]
    saved = out["ui"]["tables"][0]
    path = tmp_path / "output" / saved["subfolder"] / saved["filename"]
    assert path.exists() and saved["filename"] in text
    again = tables.load_table(path)
    assert again.to_json() == table.to_json() and again.dimension == "structure"
    # the same file is in conduit_tables, listed by the loader under its output-relative name
    (name,) = out["ui"]["table_names"]
    assert name == "sens/" + saved["filename"] and (table_dir / name).read_bytes() == path.read_bytes()
    loader = nodes["ConduitLoadSensitivityTable"]
    assert name in loader.INPUT_TYPES()["required"]["table"][0]
    listed, _ = loader().load(name)
    assert listed.to_json() == table.to_json()
    # 3 prompts x 2 samples in groups 0, 1, then 4 images in groups 2, 3
    assert table.provenance["groups"] == [["oil painting", "impasto"], ["watercolor"], ["image 1", "image 2"],
                                          ["image 3", "image 4"]]
    assert table.provenance["image_count"] == 10 and len(table.timesteps) == 2
    (img,) = nodes["ConduitSensitivityHeatmap"]().draw(table, 0.43, "q")
    assert img.shape[0] == 1 and img.shape[-1] == 3 and img.shape[1] > 100 and 0 <= float(img.min()) <= 1
    with pytest.raises(errors.ConduitError, match="no VAE"):
        nodes["ConduitSensitivityAnalysis"]().analyse(
            tiny_sdxl.model, clip, "a\nb", "", "", 2, 2, 5.0, "euler", "normal", 64, 64, 0, "style", "x",
            images=images, vae=None)
    loaded, summary = nodes["ConduitLoadSensitivityTable"]().load("sdxl_style_qk", "")
    assert loaded.num_layers == 70 and "o1.9" in summary
    bad = table_dir / "bad.json"
    bad.write_text(json.dumps({"schema": "conduit.sensitivity_table"}))
    with pytest.raises(errors.ConduitError, match="Load Sensitivity Table.*missing field"):
        nodes["ConduitLoadSensitivityTable"]().load("bad.json")
    with pytest.raises(errors.ConduitError, match="Load Sensitivity Table.*missing field"):
        nodes["ConduitLoadSensitivityTable"]().load("sdxl_style_qk", str(tmp_path / "elsewhere" / "bad.json"))


SD15_FULL_UNET = {**build.SD15_UNET, "model_channels": 320, "channel_mult": [1, 2, 4, 4],
                  "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
                  "transformer_depth_output": [1] * 9 + [0] * 3, "context_dim": 768, "image_size": 64}


def test_diffusers_mapping_covers_a_full_sd15_unet():
    """SD1.x: attention in down levels 0-2 and up levels 1-3; every diffusers name lands on a real layer."""
    model = meta_unet(SD15_FULL_UNET, 40, "SD15")
    keys = [layer.key for layer in layers.attention_layers(model)]
    attn1 = "transformer_blocks.0.attn1.processor"
    names = ([f"down_blocks.{b}.attentions.{a}.{attn1}" for b in range(3) for a in range(2)]
             + [f"up_blocks.{b}.attentions.{a}.{attn1}" for b in (1, 2, 3) for a in range(3)]
             + ["mid_block.attentions.0.transformer_blocks.0.attn1.processor"])
    mapped = [tables.diffusers_attn1_key(n) for n in names]
    assert len(keys) == 16 and set(mapped) == set(keys)
    assert [mapped[c] for c in tables.comfy_order(mapped)] == keys


def test_cfg_one_grades_from_the_cond_pass_alone(tiny_sd15):
    items = [analysis.AnalysisItem(g, tiny_sd15.cond(1, g), tiny_sd15.cond(1, 9), [0, 1]) for g in range(2)]
    table = analysis.analyse(tiny_sd15.model, items, analysis.AnalysisSettings(steps=2, cfg=1.0, latent_hw=(8, 8)), "T")
    assert all(torch.isfinite(s).all() for s in table.scores.values())
