"""Sensitivity tables: analyse a model (Conditional Balance's layer grading), load shipped tables, draw heatmaps."""
from __future__ import annotations

import logging
import os

from ..patches.engine.errors import ConduitError
from ..patches.engine.safe_files import MAX_TABLE_BYTES
from ..patches.tables.heatmap import HEATMAP_NODE as HEATMAP
from ..patches.tables.heatmap import MAX_HEIGHT, MAX_WIDTH, render, to_comfy_image
from ..patches.tables.tables_math import ANALYSIS_NODE as ANALYSIS
from ..patches.tables.table import (
    SOCKET, check_lambda, legacy_name, load_named_table, register_folder, resolve_table, save_analysis_table,
    summary, table_names,
)
from ._declare import conduit_node

log = logging.getLogger(__name__)
LOADER = "Conduit Load Sensitivity Table"
PAPER = "Conditional Balance (CVPR 2025)"
LAMBDA_TIP = (f"lambda_S from {PAPER}: the fraction of layers counted as style layers at each timestep "
              "(0.43 -> the 30 most sensitive of SDXL's 70); values above 1 are a layer count. Default 0.43.")

try:  # the conduit_tables folder exists as soon as the pack is loaded (after extra_model_paths.yaml)
    register_folder()
except ImportError:  # imported without a ComfyUI host (docs tooling)
    pass


class _TableNode:
    """What the analysis and loader nodes share: they both hand out a table and its summary text."""
    CATEGORY = "conduit/tables"
    RETURN_TYPES = (SOCKET, "STRING")
    RETURN_NAMES = ("table", "summary")


@conduit_node(ANALYSIS)
class ConduitSensitivityAnalysis(_TableNode):
    DESCRIPTION = (f"Grades every self-attention layer of an SD1.x/SD2.x/SDXL model at every timestep, as in {PAPER}: "
                   "it samples each group of prompts (and/or images) while hooks record the token mean and std of "
                   "q, k and v, then scores each layer by the mean within-group / mean between-group Jensen-Shannon "
                   "distance (lower = more sensitive). Writes a table file the style injection nodes accept.")
    OUTPUT_TOOLTIPS = ("The sensitivity table, to wire into injection or heatmap nodes.",
                       "Where the table was saved, the layers most often selected and the timestep ranking.")
    FUNCTION = "analyse"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        import comfy.samplers

        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The SD1.x, SD2.x, SDXL, SD3/SD3.5 or Flux model to analyse. On "
                                             "the DiTs every joint/single block's image-token q, k, v is recorded "
                                             "(after SD3's q/k norms and Flux's RoPE)."}),
                "clip": ("CLIP", {"tooltip": "Text encoder of the same checkpoint, to encode the prompts."}),
                "groups": ("STRING", {
                    "multiline": True,
                    "default": "an oil painting in the style of Van Gogh\n"
                               "a watercolor painting in the style of Winslow Homer\n"
                               "a pointillism painting in the style of Seurat\n"
                               "an ink drawing in the style of Hokusai",
                    "tooltip": "One group per line (a style for dimension 'style', a layout/structure for "
                               "'structure'); several prompts in one group are separated by '|'. Lines starting "
                               f"with # are ignored. {PAPER} used 10 artist styles."}),
                "content": ("STRING", {
                    "multiline": False, "default": "A dark brown rabbit",
                    "tooltip": "Shared text prepended to every prompt as '<content>, <group prompt>' (the paper's "
                               "content prompt; default 'A dark brown rabbit'). Leave empty to use the group "
                               "prompts alone. Also the prompt used when probing images."}),
                "negative": ("STRING", {"multiline": False, "default": "",
                                        "tooltip": "Negative prompt for every sample. Default empty."}),
                "samples_per_group": ("INT", {
                    "default": 3, "min": 1, "max": 64,
                    "tooltip": "Images sampled per prompt; sample j uses seed + j in every group, so groups differ "
                               "only by their prompt. Needs >= 2 to measure within-group spread. Paper: 5."}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 200,
                                  "tooltip": "Sampling steps; the table gets one row per step. Paper: 50."}),
                "cfg": ("FLOAT", {"default": 5.0, "min": 0.0, "max": 30.0, "step": 0.1,
                                  "tooltip": "Classifier-free guidance. Paper: 5.0 (SDXL); the SD3.5 port used "
                                             "3.5; guidance-distilled Flux runs at 1.0. Cond and uncond statistics "
                                             "are both recorded (uncond is absent when cfg is 1)."}),
                "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {
                    "default": "euler", "tooltip": "Sampler; it must evaluate the model at every schedule step. "
                                                   "Default euler (the paper used diffusers' Euler)."}),
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {
                    "default": "normal", "tooltip": "Noise schedule. Default normal."}),
                "width": ("INT", {"default": 1024, "min": 64, "max": 8192, "step": 8,
                                  "tooltip": "Width of the sampled images in pixels. Paper: 1024."}),
                "height": ("INT", {"default": 1024, "min": 64, "max": 8192, "step": 8,
                                   "tooltip": "Height of the sampled images in pixels. Paper: 1024."}),
                "seed": ("INT", {"default": 10, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                 "tooltip": "First seed; sample j of every group uses seed + j. Paper: 10."}),
                "dimension": (["style", "structure"], {
                    "default": "style",
                    "tooltip": "What the groups differ in. 'style' ranks layers for style injection (lambda_S); "
                               "'structure' tables also rank timesteps for the ControlNet gate (lambda_T)."}),
                "filename_prefix": ("STRING", {
                    "default": "sensitivity/table",
                    "tooltip": "Name of the table file, as for Save Image: <prefix>_00001_.json. It is written into "
                               "the first conduit_tables folder (models/conduit_tables unless extra_model_paths.yaml "
                               "lists others), so it appears in the list of Conduit Load Sensitivity Table, and a copy "
                               "into ComfyUI's output folder. Default sensitivity/table."}),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": "Optional images to analyse as extra groups (e.g. style "
                                                "references): consecutive runs of images_per_group images form "
                                                "one group. Each image is noised to every step and evaluated once."}),
                "vae": ("VAE", {"tooltip": "VAE to encode the images; required when images are connected."}),
                "images_per_group": ("INT", {"default": 2, "min": 1, "max": 64,
                                             "tooltip": "How many consecutive images form one group. Default 2."}),
            },
        }

    def analyse(self, model, clip, groups: str, content: str, negative: str, samples_per_group: int, steps: int,
                cfg: float, sampler_name: str, scheduler: str, width: int, height: int, seed: int, dimension: str,
                filename_prefix: str, images=None, vae=None, images_per_group: int = 2):
        import comfy.utils
        import nodes as comfy_nodes

        from ..patches.tables.analysis import AnalysisSettings, analyse, image_items, prompt_items

        def encode(text: str):
            return comfy_nodes.CLIPTextEncode().encode(clip, text)[0]

        negative_cond = encode(negative)
        items = prompt_items(encode, groups, content, negative_cond, samples_per_group, seed)
        if images is not None:
            if vae is None:
                raise ConduitError(ANALYSIS, "images are connected but no VAE.",
                                   "connect the checkpoint's VAE to the vae input.")
            latents = [vae.encode(images[i:i + 1, :, :, :3]) for i in range(images.shape[0])]
            first = len({i.group for i in items})
            items += image_items(latents, images_per_group, first, encode(content), negative_cond, seed)
        settings = AnalysisSettings(steps=steps, cfg=cfg, sampler=sampler_name, scheduler=scheduler,
                                    latent_hw=(height // 8, width // 8), dimension=dimension,
                                    provenance={"content": content, "negative": negative, "seed": seed})
        total = sum(steps for _ in items) + steps
        bar = comfy.utils.ProgressBar(total)
        table = analyse(model, items, settings, ANALYSIS, progress=bar.update)

        saved = save_analysis_table(table, filename_prefix, ANALYSIS)
        text = (f"saved {saved['name']} (in conduit_tables: pick it in {LOADER}; a copy is in the output "
                "folder)\n" + summary(table))
        log.info("%s: %s", ANALYSIS, text.splitlines()[0])
        ui = {"text": [text], "tables": [{"filename": saved["filename"], "subfolder": saved["subfolder"],
                                          "type": "output"}], "table_names": [saved["name"]]}
        return {"ui": ui, "result": (table, text)}


@conduit_node(LOADER)
class ConduitLoadSensitivityTable(_TableNode):
    DESCRIPTION = ("Loads a sensitivity table by name: one shipped with Conduit (the published Conditional Balance "
                   "tables) or a JSON file in ComfyUI's models/conduit_tables folder (where the Sensitivity Analysis "
                   "node writes its tables; more folders through extra_model_paths.yaml, key conduit_tables). "
                   "Only listed files are read, never a path. The file is validated.")
    OUTPUT_TOOLTIPS = ("The table, for injection or heatmap nodes.",
                       "Family, size, the layers most often selected and the timestep ranking.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        names = table_names() or ["sdxl_style_qk"]
        return {
            "required": {
                "table": (names, {
                    "default": "sdxl_style_qk" if "sdxl_style_qk" in names else names[0],
                    "tooltip": "The table to load. Shipped: sdxl_style_qk (the paper's main SDXL table, q/k), "
                               "sdxl_style_qkv (q/k/v), sd35l_style_qkv (SD3.5-Large joint blocks). Then every .json "
                               "file in models/conduit_tables (e.g. sensitivity/table_00001_.json from the analysis "
                               f"node; at most {MAX_TABLE_BYTES // (1024 * 1024)} MiB). Default sdxl_style_qk."}),
            },
            "optional": {
                "path": ("STRING", {
                    "default": "",
                    "tooltip": "Legacy input of old workflows; leave empty. An old value (a file path) is mapped "
                               "to the listed table of the same name in models/conduit_tables; the path itself is "
                               "never opened. If no such table is listed, the node says where to put the file. "
                               "Default empty."}),
            },
        }

    def load(self, table: str, path: str = ""):
        name = table
        if isinstance(path, str) and path.strip():
            name = legacy_name(path, LOADER)
            if name != table:
                log.info("%s: old path input %r loads the listed table %r.", LOADER, os.path.basename(path), name)
        loaded = load_named_table(name, LOADER)
        return (loaded, summary(loaded))


@conduit_node(HEATMAP)
class ConduitSensitivityHeatmap:
    DESCRIPTION = ("Draws a sensitivity table as an image: layers (rows, UNet order, labelled) by timesteps "
                   "(columns, noisiest first), bright = more sensitive, with a white line around the lambda_S "
                   f"cut (the layers style injection would use at each step). The image is at most {MAX_WIDTH} x "
                   f"{MAX_HEIGHT} pixels: long tables are drawn with neighbouring timesteps (or layers) averaged.")
    CATEGORY = "conduit/tables"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("heatmap",)
    OUTPUT_TOOLTIPS = ("The heatmap as an image; connect Preview Image or Save Image.",)
    FUNCTION = "draw"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "table": (SOCKET, {"tooltip": "A table from the Sensitivity Analysis or Load Sensitivity Table node."}),
            "lambda_s": ("FLOAT", {"default": 0.43, "min": 0.0, "max": 200.0, "step": 0.01, "tooltip": LAMBDA_TIP}),
            "features": (["all", "q", "k", "v"], {"default": "all",
                                                 "tooltip": "Which features to draw, one panel each. Default all."}),
        }}

    def draw(self, table, lambda_s: float, features: str):
        table = resolve_table(table, HEATMAP)
        lambda_s = check_lambda(lambda_s, HEATMAP)
        if features != "all" and features not in table.scores:
            raise ConduitError(HEATMAP, f"the table has no {features!r} scores (it has {', '.join(table.features)}).",
                               "pick 'all' or one of the table's features.")
        img = render(table, lambda_s, None if features == "all" else [features], node=HEATMAP)
        return (to_comfy_image(img),)
