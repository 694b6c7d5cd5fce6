"""`make demo` on the toy model: every workflow is made runnable on it (prompts, inputs, ControlNet, table)."""
import numpy as np

from conduit import demo, demo_toy, inputs, workflow


def test_every_workflow_runs_on_the_toy_model_with_its_own_prompt_inputs_and_files():
    names = [n for n in workflow.short_names() if n in demo_toy.CASES]  # the DiT workflows are not for the toy
    assert {"balanced_style_sdxl", "balanced_style_controlnet_sdxl", "seg_sdxl", "gradsam_background",
            "cow_seed_cycle", "sow_mllm"} <= set(names)
    jobs = {j.name: j for j in demo.toy_jobs(names)}
    for name in names:
        g = jobs[name].graph
        classes = {n["class_type"] for n in g.values()}
        assert "CheckpointLoaderSimple" not in classes and "ControlNetLoader" not in classes, name
        for nid in workflow.nodes_of(g, "LoadImage"):
            assert g[nid]["inputs"]["image"] in demo_toy.IMAGE_NAMES.values(), (name, g[nid])
            assert g[nid]["inputs"]["image"] in inputs.IMAGES
        for nid in workflow.nodes_of(g, "ConduitBalancedStyle"):  # the toy table, from the analysis node
            src = g[nid]["inputs"]["sensitivity_table"]
            assert g[src[0]]["class_type"] == "ConduitSensitivityAnalysis"
            assert "a red striped circle on a gray background" in g[src[0]]["inputs"]["groups"]
        case = demo_toy.CASES[name]
        texts = [g[nid]["inputs"]["text"] for nid in workflow.nodes_of(g, "CLIPTextEncode")]
        if case.prompt:
            assert case.prompt in texts and set(texts) <= {case.prompt, ""}, (name, texts)
        if case.own_vanilla:  # SEG saves its own vanilla run: no second one beside it
            assert name + demo.VANILLA not in jobs
            assert any("vanilla" in g[n]["inputs"]["filename_prefix"] for n in workflow.nodes_of(g, "SaveImage"))
        elif name not in ("txt2img_vanilla", "sensitivity_analysis"):
            base = jobs[name + demo.VANILLA].graph
            assert {base[n]["inputs"]["text"] for n in workflow.nodes_of(base, "CLIPTextEncode")} == {case.prompt, ""}


def test_the_controlnet_workflow_gets_the_toy_controlnet_and_a_silhouette_hint():
    g = demo.toy_jobs(["balanced_style_controlnet_sdxl"])[0].graph
    assert workflow.nodes_of(g, "ConduitDemoToyControlNetLoader")
    hint = demo_toy.toy_image("toy_control.png")
    assert hint.size == (64, 64) and {0, 255} <= set(np.unique(np.asarray(hint.convert("L"))).tolist())


def test_cow_condition_is_drawn_at_the_box_size():
    g = demo.toy_jobs(["cow_seed_cycle"])[0].graph
    (canvas,) = workflow.nodes_of(g, "ConduitCOWSeedCanvas")
    assert g[canvas]["inputs"]["box_w"] == demo_toy.toy_image("toy_condition.png").size[0] == demo_toy.COW_BOX


def test_each_workflow_runs_at_consecutive_seeds_with_vanilla_at_the_same_seed_and_one_style_table():
    jobs = demo.toy_jobs(["balanced_style_sdxl", "gradsam_background"])
    for name in ("balanced_style_sdxl", "gradsam_background"):
        runs = [j for j in jobs if j.name == name]
        base = {j.seed: j for j in jobs if j.name == name + demo.VANILLA}
        first = demo_toy.first_seed(demo_toy.adapt(name, demo.demo_graph(workflow.load_api(name), "embedded")))
        assert [j.seed for j in runs] == [first + k for k in range(demo_toy.SEEDS)]
        assert set(base) == {j.seed for j in runs}
        for j in runs:
            assert demo_toy.first_seed(j.graph) == j.seed == demo_toy.first_seed(base[j.seed].graph)
    styles = [j.graph for j in jobs if j.name == "balanced_style_sdxl"]
    analysis = [{k: v for k, v in g[n]["inputs"].items() if not isinstance(v, list)}
                for g in styles for n in workflow.nodes_of(g, "ConduitSensitivityAnalysis")]
    assert len(analysis) == demo_toy.SEEDS and all(a == analysis[0] for a in analysis)  # same table every column


def test_every_sampler_runs_at_the_toy_models_cfg():
    names = [n for n in workflow.short_names() if n in demo_toy.CASES]
    for job in demo.toy_jobs(names):
        cfgs = [n["inputs"]["cfg"] for n in job.graph.values() if "cfg" in n["inputs"]]
        assert cfgs and set(cfgs) == {demo_toy.TOY_CFG}, (job.name, cfgs)


def test_the_compare_grid_puts_inputs_first_and_one_column_per_seed():
    from PIL import Image

    red, blue = Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))
    grid = demo_toy.compare_grid([("input", red)], [[("vanilla", blue), ("conduit", red)], [("vanilla", blue)]],
                                 scale=1)
    assert grid.size == (3 * (64 + 4), 2 * (64 + 14))
    px = grid.load()
    assert px[30, 14 + 30] == (255, 0, 0) and px[68 + 30, 14 + 30] == (0, 0, 255)  # input, then vanilla on top
    assert px[68 + 30, 78 + 14 + 30] == (255, 0, 0) and px[136 + 30, 78 + 14 + 30] == (255, 255, 255)


def test_a_runs_pictures_are_in_a_fixed_order_whatever_order_the_server_lists_them():
    from pathlib import Path

    from conduit.jobs import Job

    names = ["g_s0_mask_00003_.png", "g_s0_image_00001_.png", "g_s0_text.txt", "g_s0_mask_00002_.png",
             "g_s0_seg_vanilla_00001_.png"]
    orders = {tuple(p.name for p in demo._images(Job("g", {}, 0, outputs=[Path(n) for n in listed])))
              for listed in (names, names[::-1])}
    assert orders == {("g_s0_seg_vanilla_00001_.png", "g_s0_image_00001_.png", "g_s0_mask_00002_.png",
                       "g_s0_mask_00003_.png")}
