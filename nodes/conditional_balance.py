"""Conditional Balance nodes: balanced style injection (lambda_S), ControlNet timestep gate (lambda_T), and a
LoRA applied only to the style (or content) layers."""
from __future__ import annotations

import logging
import os

import torch

from ..patches.conditional_balance.style import NODE as STYLE_NAME
from ..patches.conditional_balance.style import KINDS, StyleSettings, apply_balanced_style
from ..patches.conditional_balance.controlnet_gate import GateSettings, count_controls, gate_conditionings
from ..patches.engine.errors import ConduitError
from ..patches.conditional_balance.reference import InvertedReference, NoisedReference
from ..patches.engine.safe_files import MAX_LORA_BYTES
from ..patches.conditional_balance.selective_lora import NODE as LORA_NAME
from ..patches.conditional_balance.selective_lora import (MODES, apply_selective_lora, check_lora_name, load_lora_file,
                                                          static_style_layers)
from ..patches.tables.table import (
    SOCKET, SensitivityTable, check_lambda, resolve_table, shipped_table_for, validate_against,
)
from ._declare import conduit_node

log = logging.getLogger(__name__)

STYLE_NODE = STYLE_NAME
GATE_NODE = "Conduit ControlNet Timestep Gate"
LORA_NODE = LORA_NAME
PAPER = "Conditional Balance (Cohen et al., CVPR 2025)"
TABLE_TIP = ("Optional sensitivity table from the Conduit Sensitivity Analysis node. Default: the table shipped "
             "for the model's family (SDXL: the official Conditional Balance style table; SD3.5 Large: the official "
             "SD3.5 port's table of its 38 joint blocks). Flux and SD3/SD3.5 Medium have no published table: "
             "connect one made by the Conduit Sensitivity Analysis node on that model.")


def style_table(model, table: SensitivityTable | None, node: str) -> SensitivityTable:
    chosen = resolve_table(table, node) if table is not None else shipped_table_for(model, node, KINDS)
    validate_against(chosen, model, node, KINDS)
    return chosen


def strength_input(default: float, what: str) -> tuple:
    return ("FLOAT", {"default": default, "min": 0.0, "max": 1.0, "step": 0.01,
                      "tooltip": f"lambda_S: the fraction of self-attention layers {what}. The top int(lambda_S x "
                                 f"layers) by style sensitivity are used. Default {default}. From {PAPER}."})


@conduit_node(STYLE_NODE)
class ConduitBalancedStyle:
    DESCRIPTION = ("Style from a reference image, injected only into the self-attention layers most sensitive to "
                   "style at each step (Conditional Balance, lambda_S). The reference runs through the UNet next to "
                   "your images, noised to the current step; in the chosen layers the images take its query/key "
                   "statistics (AdaIN) and attend to its keys and values (StyleAligned). lambda_S = 0 leaves the "
                   "model untouched; 1 is StyleAligned on every layer. On SD3/SD3.5 and Flux (DiTs) it follows the "
                   "official SD3.5-Large port: AdaIN on the image tokens' q, k and v of each block's joint "
                   "attention, and the reference's image tokens shared only in blocks in both the q and k sets.")
    CATEGORY = "conduit/conditional balance"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with balanced style injection; sample it with any KSampler.",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "An SDXL or SD3.5 Large model (shipped tables), or SD1.x/2.x, "
                                             "SD3/SD3.5 Medium or Flux with a table made for it by the Conduit "
                                             "Sensitivity Analysis node."}),
                "style_strength": strength_input(0.43, "that receive the reference's style"),
                "adain_queries": ("BOOLEAN", {"default": True, "tooltip": "AdaIN on the projected queries of the "
                                              "q-selected layers (DiTs: the image tokens' queries after the q "
                                              "norm or RoPE). Default on (StyleAligned/CB default)."}),
                "adain_keys": ("BOOLEAN", {"default": True, "tooltip": "AdaIN on the projected keys of the "
                                           "k-selected layers. Default on (StyleAligned/CB default). On DiTs the "
                                           "values of the v-selected blocks get AdaIN too when the table has v "
                                           "scores, as in the official SD3.5 port."}),
                "share_attention": ("BOOLEAN", {"default": True, "tooltip": "Let the images attend to the "
                                                "reference's keys and values in the selected layers (UNets: the union "
                                                "of the q and k sets, official CB; DiTs: the reference's image "
                                                "tokens, in blocks in both sets, official SD3.5 port). Default on "
                                                "(StyleAligned)."}),
                "reference_attention_scale": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 2.0, "step": 0.01,
                    "tooltip": "Multiplies the reference keys the images attend to (StyleAligned "
                               "shared_score_scale). Below 1 softens the reference. Default 1.0."}),
                "reference_attention_shift": ("FLOAT", {
                    "default": 0.0, "min": -5.0, "max": 5.0, "step": 0.01,
                    "tooltip": "Added to the attention logits of the reference tokens (StyleAligned "
                               "shared_score_shift); log 2 = 0.69 doubles the reference's attention mass, as the "
                               "official real-image transfer does. Default 0. UNets only: DiTs "
                               "refuse a shift (their attention runs through other packs' overrides, which "
                               "take no bias)."}),
                "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                            "tooltip": "Sampling progress where injection starts. Default 0."}),
                "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                          "tooltip": "Sampling progress where injection ends. Default 1."}),
                "noise_seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                       "tooltip": "Seed of the one fixed noise that noises the reference to every "
                                                  "step's sigma. Default 0."}),
                "inversion_steps": ("INT", {"default": 0, "min": 0, "max": 200,
                                            "tooltip": "0: reference = clean latent + sigma x fixed noise. Above 0: "
                                                       "follow a deterministic ODE (DDIM-style) inversion path "
                                                       "computed with this many model calls per run and prompt "
                                                       "(StyleAligned's real-image transfer); Cancel (/interrupt) "
                                                       "stops it between model calls. Default 0."}),
            },
            "optional": {
                "reference_latent": ("LATENT", {"tooltip": "The style reference as a latent (one image). Use this "
                                                           "or reference_image + vae."}),
                "reference_image": ("IMAGE", {"tooltip": "The style reference image (one image); needs vae."}),
                "vae": ("VAE", {"tooltip": "VAE to encode reference_image."}),
                "sensitivity_table": (SOCKET, {"tooltip": TABLE_TIP}),
            },
        }

    def patch(self, model, style_strength: float, adain_queries: bool, adain_keys: bool, share_attention: bool,
              reference_attention_scale: float, reference_attention_shift: float, start_percent: float,
              end_percent: float, noise_seed: int, inversion_steps: int, reference_latent=None,
              reference_image=None, vae=None, sensitivity_table=None):
        style_strength = check_lambda(style_strength, STYLE_NODE, "style_strength", maximum=1.0)
        if start_percent > end_percent:
            raise ConduitError(STYLE_NODE, f"start_percent {start_percent} is after end_percent {end_percent}.",
                               "set start_percent <= end_percent.")
        latent = reference_to_latent(reference_latent, reference_image, vae)
        settings = StyleSettings(style_strength, adain_queries, adain_keys, share_attention,
                                 reference_attention_scale, reference_attention_shift, start_percent, end_percent)
        table = style_table(model, sensitivity_table, STYLE_NODE)
        if inversion_steps > 0:
            reference = InvertedReference(latent, inversion_steps)
        else:
            reference = NoisedReference(latent, noise_seed)
        return (apply_balanced_style(model, table, reference, settings),)


def reference_to_latent(reference_latent, reference_image, vae) -> torch.Tensor:
    if reference_latent is not None and reference_image is not None:
        raise ConduitError(STYLE_NODE, "both reference_latent and reference_image are connected.",
                           "connect only one of them.")
    if reference_latent is not None:
        samples = reference_latent["samples"]
    elif reference_image is not None:
        if vae is None:
            raise ConduitError(STYLE_NODE, "reference_image is connected but vae is not.",
                               "connect the VAE of your checkpoint to vae.")
        samples = vae.encode(reference_image[:, :, :, :3])
    else:
        raise ConduitError(STYLE_NODE, "no style reference is connected.",
                           "connect reference_image + vae, or reference_latent.")
    if samples.ndim != 4 or samples.shape[0] != 1:
        raise ConduitError(STYLE_NODE, f"the reference must be one image; got a batch of {samples.shape[0]}.",
                           "pick one image, e.g. with a Latent From Batch or Image From Batch node.")
    return samples.detach().clone().float().cpu()


@conduit_node(GATE_NODE)
class ConduitControlNetTimestepGate:
    DESCRIPTION = ("Gates the ControlNets applied to this conditioning by timestep (Conditional Balance, lambda_T): "
                   "at timesteps t < lambda_T x 1000 the ControlNet's down-block residuals are switched off and its "
                   "mid residual is kept, so structure is fixed early and style is free later. Put it after the "
                   "Apply ControlNet node(s); every ControlNet applied before it is gated. Works for SD1.x, SD2.x "
                   "and SDXL UNets and for SD3/SD3.5 and Flux DiTs: a DiT ControlNet has no mid residual, so on "
                   "DiTs its whole output is switched off at gated steps (t is SD3's timestep, 1000 x sigma; on "
                   "Flux the same noise level sigma < lambda_T).")
    CATEGORY = "conduit/conditional balance"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    OUTPUT_TOOLTIPS = ("Positive conditioning with gated ControlNets.", "Negative conditioning with gated ControlNets.")
    FUNCTION = "gate"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "positive": ("CONDITIONING", {"tooltip": "Positive conditioning from Apply ControlNet."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative conditioning from Apply ControlNet."}),
            "control_balance": ("FLOAT", {
                "default": 0.85, "min": 0.0, "max": 1.0, "step": 0.01,
                "tooltip": "lambda_T: the down residuals act only at timesteps t >= lambda_T x 1000 (the "
                           "noisiest steps). 0 = plain ControlNet. Default 0.85 (official default; the README "
                           f"examples use 0.8). From {PAPER}."}),
            "gate_mid": ("BOOLEAN", {"default": False, "tooltip": "Also switch off the mid residual at gated "
                                     "steps; the ControlNet is then not computed at all there (faster). The "
                                     "official code keeps mid. Default off. DiTs have no mid residual: there "
                                     "the whole ControlNet is off at gated steps either way."}),
            "invert": ("BOOLEAN", {"default": False, "tooltip": "Gate the noisy steps t >= lambda_T x 1000 instead "
                                   "of the late ones. Default off."}),
        }}

    def gate(self, positive, negative, control_balance: float, gate_mid: bool, invert: bool):
        control_balance = check_lambda(control_balance, GATE_NODE, "control_balance", maximum=1.0, example=0.85)
        if count_controls(positive) + count_controls(negative) == 0:
            log.warning("%s: no ControlNet is applied to this conditioning; nothing to gate.", GATE_NODE)
        pos, neg = gate_conditionings([positive, negative], GateSettings(control_balance, gate_mid, invert))
        return pos, neg


@conduit_node(LORA_NODE)
class ConduitSelectiveLoRA:
    DESCRIPTION = ("Applies a LoRA only to the self-attention layers a sensitivity table ranks as style layers "
                   "(top lambda_S, by mean score over timesteps), or only to the rest (content layers), as B-LoRA "
                   "separates style and content. Uses ComfyUI's own LoRA loader; the text encoder is not touched.")
    CATEGORY = "conduit/conditional balance"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the LoRA applied to the selected layers only.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model to apply the LoRA to: SDXL or SD3.5 Large (shipped "
                                             "tables), or another UNet or DiT (SD3/SD3.5, Flux) with a table made "
                                             "for it. On DiTs whole blocks are selected."}),
                "lora_name": (folder_paths.get_filename_list("loras"), {
                    "tooltip": "A LoRA from models/loras, as a .safetensors (or .sft) file of at most "
                               f"{MAX_LORA_BYTES // 1024 ** 3} GiB. Pickle formats (.pt, .ckpt, .pth, .bin) are "
                               "refused, never loaded: unpickling can run code. Convert them to .safetensors."}),
                "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                                       "tooltip": "LoRA strength on the selected layers. Default 1.0."}),
                "style_strength": strength_input(0.57, "counted as style layers (B-LoRA results of the paper use "
                                                       "0.57)"),
                "layers": (list(MODES), {"default": MODES[0], "tooltip": "style layers: apply the LoRA to the "
                                         "top-lambda_S style layers. content layers: to every other "
                                         "self-attention layer. Default style layers."}),
            },
            "optional": {"sensitivity_table": (SOCKET, {"tooltip": TABLE_TIP})},
        }

    def apply(self, model, lora_name: str, strength: float, style_strength: float, layers: str,
              sensitivity_table=None):
        import folder_paths

        if layers not in MODES:
            raise ConduitError(LORA_NODE, f"unknown layer choice {layers!r}.", f"use one of {', '.join(MODES)}.")
        style_strength = check_lambda(style_strength, LORA_NODE, "style_strength", maximum=1.0, example=0.57)
        if not isinstance(strength, (int, float)) or strength != strength or abs(strength) == float("inf"):
            raise ConduitError(LORA_NODE, f"strength must be a finite number, got {strength!r}.",
                               "set strength to e.g. 1.0.")
        check_lora_name(lora_name, LORA_NODE)  # before any file access: pickles are refused, never loaded
        path = folder_paths.get_full_path("loras", lora_name)
        if path is None:
            raise ConduitError(LORA_NODE, f"LoRA {os.path.basename(lora_name)!r} was not found.",
                               "put the .safetensors file in models/loras and pick it from the list.")
        lora_sd = load_lora_file(path, LORA_NODE)
        return (selective_lora(model, lora_sd, strength, style_strength, layers, sensitivity_table),)


def selective_lora(model, lora_sd: dict, strength: float, style_strength: float, layers: str, table=None):
    chosen = style_table(model, table, LORA_NODE)
    style = static_style_layers(chosen, style_strength)
    keys = style if layers == MODES[0] else [k for k in chosen.layer_keys if k not in set(style)]
    if not keys:
        log.warning("%s: no layers selected (lambda_S = %s, %s); the model is returned unchanged.", LORA_NODE,
                    style_strength, layers)
        return model
    return apply_selective_lora(model, lora_sd, strength, keys, LORA_NODE)[0]
