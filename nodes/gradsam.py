"""Abs-Grad-SAM nodes: subject masks from gradient x cross-attention, background kept from a reference latent.

Paper: Pathania, "Enhancing Conditional Image Generation with Explainable Latent Space Manipulation"
(arXiv 2408.16232). Defaults follow the reference code: manipulation at t = 780 / 520 / 320, the last
up-block cross-attention at the highest resolution, threshold mean + 0.5 std. See docs/gradsam.md.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..patches.gradsam import gradsam_math as gm
from ..patches.engine.errors import ConduitError
from ..patches.engine.host import ksampler_sigmas
from ..patches.gradsam.gradient_pass import DIT_MISSING, LAYER_MODES, THRESHOLD_MODES, MaskSettings
from ..patches.gradsam.sampler import GradSamRun, probe_mask
from ..patches.gradsam.tokens import prompt_tokens, subject_tokens
from ..patches.engine.layers import model_family
from ._declare import conduit_node

log = logging.getLogger(__name__)

SAMPLER_NODE = "Conduit Grad-SAM Sampler"
MASKS_NODE = "Conduit Grad-SAM Masks"
KSAMPLER_NODE = "Conduit Grad-SAM KSampler"
MASK_NODE = "Conduit Grad-SAM Mask"
DEFAULT_PERCENTS = ", ".join(f"{p:.3f}" for p in gm.DEFAULT_PERCENTS)


def _sampler_names() -> list[str]:
    import comfy.samplers

    return list(comfy.samplers.SAMPLER_NAMES)


def model_inputs(negative_tip: str) -> dict:
    """The model and conditioning sockets of the all-in-one sampler and the mask inspector."""
    return {"model": ("MODEL", {"tooltip": "An SD1.x, SD2.x or SDXL model."}),
            "positive": ("CONDITIONING", {"tooltip": "Positive conditioning, encoded from 'prompt'."}),
            "negative": ("CONDITIONING", {"tooltip": negative_tip})}


def text_inputs() -> dict:
    return {
        "clip": ("CLIP", {"tooltip": "The text encoder of the model. Only its tokenizer is used, to find which "
                                     "token columns hold the subject words."}),
        "prompt": ("STRING", {"multiline": True, "default": "",
                              "tooltip": "The positive prompt, exactly as given to the positive text encoder "
                                         "(link the same text to both)."}),
        "subject": ("STRING", {"default": "",
                               "tooltip": "Subject words, comma-separated (a phrase such as 'red car' is one "
                                          "subject). Every occurrence in the prompt counts. Empty: every noun "
                                          "of the prompt by Conduit's word rule (the paper used spaCy nouns)."}),
    }


def mask_inputs() -> dict:
    return {
        "layers": (list(LAYER_MODES), {"default": "last",
                                       "tooltip": "Cross-attention layers to score. 'last' (default): the last "
                                                  "up-block layer at the highest resolution, the reference's "
                                                  "choice. 'all': every cross-attention layer, maps averaged "
                                                  "(slower, more memory). 'custom': the list in custom_layers."}),
        "score": (list(gm.SCORE_MODES), {"default": "abs",
                                         "tooltip": "'abs': attention x |gradient| (the paper's Abs-Grad-SAM). "
                                                    "'gradsam': attention x ReLU(gradient) (what the reference "
                                                    "code computes)."}),
        "kappa": ("FLOAT", {"default": 0.5, "min": -3.0, "max": 5.0, "step": 0.05,
                            "tooltip": "Threshold mean + kappa x std of the importance map. Higher keeps less "
                                       "as subject. Default 0.5 (reference)."}),
        "threshold_over": (list(THRESHOLD_MODES), {"default": "each subject",
                                                   "tooltip": "'each subject': every subject's map gets its "
                                                              "own threshold, masks are joined (reference). "
                                                              "'all subjects': one threshold over all maps."}),
        "blur_sigma": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 16.0, "step": 0.1,
                                 "tooltip": "Gaussian blur of the importance map before the threshold, in latent "
                                            "pixels. Default 1.0, the smoothing the reference's 3x3 kernel "
                                            "really applies (its sigma 6 is cut by the kernel size). 0: off."}),
        "dilation": ("INT", {"default": 3, "min": 0, "max": 64,
                             "tooltip": "Binary dilation of the subject mask with a 3x3 square, repeated this "
                                        "many times (each adds one latent pixel = 8 image pixels). Default 3 "
                                        "(the reference's intended iterations)."}),
        "custom_layers": ("STRING", {"default": "",
                                     "tooltip": "Only with layers = custom: comma-separated layer names such as "
                                                "'o5.1, o4' (o = output block, number, optional .depth; ranges "
                                                "like o3-5 work). Conduit Model Layers lists them."}),
    }


def run_inputs() -> dict:
    return {
        "step_percents": ("STRING", {"default": DEFAULT_PERCENTS,
                                     "tooltip": "Sampling progress (0 = start, 1 = end) of the manipulation "
                                                "steps, comma-separated. Default " + DEFAULT_PERCENTS + " = the "
                                                "reference's t = 780, 520, 320. Empty: no manipulation."}),
        "reference_seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                   "tooltip": "Seed of the one noise used to bring the reference to each "
                                              "manipulation step's noise level."}),
    }


def build_settings(clip, prompt: str, subject: str, node: str, layers: str, score: str, kappa: float,
                   threshold_over: str, blur_sigma: float, dilation: int, custom_layers: str) -> MaskSettings:
    if not prompt.strip():
        raise ConduitError(node, "the prompt is empty.", "give the positive prompt text (the same as encoded).")
    tokens = prompt_tokens(clip, prompt, node)
    subjects = subject_tokens(tokens, subject, node)
    return MaskSettings(tuple(s.columns for s in subjects), tuple(s.name for s in subjects), tokens.length,
                        layers, custom_layers, score, float(kappa), threshold_over, float(blur_sigma),
                        int(dilation))


def parse_percents(text: str, node: str) -> tuple[float, ...]:
    try:
        return tuple(gm.parse_percents(text))
    except ValueError as e:
        raise ConduitError(node, f"step_percents '{text}' is not a list of numbers in (0, 1): {e}.",
                           "write e.g. '0.219, 0.479, 0.680'.") from e


def masks_to_image(masks: list[torch.Tensor], latent_hw: tuple[int, int], batch: int) -> torch.Tensor:
    """Latent-size bool masks [B, 1, h, w] per step -> ComfyUI MASK [steps * B, 8h, 8w]; none -> all ones."""
    size = (latent_hw[0] * 8, latent_hw[1] * 8)
    if not masks:
        return torch.ones(batch, *size)
    stacked = torch.cat([m.float() for m in masks], dim=0)
    return F.interpolate(stacked, size=size, mode="nearest")[:, 0]


def run_masks(run: GradSamRun, samples: torch.Tensor) -> torch.Tensor:
    """The run's recorded step masks as a ComfyUI MASK for the sampled latent `samples`."""
    return masks_to_image([m.mask for m in run.masks], tuple(samples.shape[-2:]), samples.shape[0])


def make_sampler(clip, prompt, subject, reference, sampler_name, step_percents, reference_seed, node, **mask):
    import comfy.samplers

    settings = build_settings(clip, prompt, subject, node, **mask)
    run = GradSamRun(settings, parse_percents(step_percents, node), reference["samples"], int(reference_seed),
                     sampler_name, node)
    sampler = comfy.samplers.KSAMPLER(run)
    sampler.conduit_gradsam = run
    return sampler


@conduit_node(SAMPLER_NODE)
class ConduitGradSAMSampler:
    DESCRIPTION = ("Abs-Grad-SAM background preservation as a SAMPLER for SamplerCustom / SamplerCustomAdvanced. "
                   "At the chosen steps it scores where the subject words matter (cross-attention x gradient, "
                   "one backward pass) and replaces everything else by the reference latent noised to that "
                   "step. Feed the masks to 'Conduit Grad-SAM Masks' for a preview. SD1.x, SD2.x and SDXL only: "
                   "SD3/SD3.5 and Flux have no cross-attention and are refused with an error.")
    CATEGORY = "conduit/gradsam"
    RETURN_TYPES = ("SAMPLER",)
    RETURN_NAMES = ("sampler",)
    OUTPUT_TOOLTIPS = ("A sampler that runs the chosen k-diffusion sampler with the subject-mask replacements.",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            **text_inputs(),
            "reference": ("LATENT", {"tooltip": "The background: a VAE-encoded image (resized with a warning if "
                                                "its size differs from the sampled latent)."}),
            "sampler_name": (_sampler_names(), {"default": "euler",
                                                "tooltip": "The k-diffusion sampler that does the steps. "
                                                           "Default euler (the reference used DDPM, 'ddpm')."}),
            **run_inputs(),
            **mask_inputs(),
        }}

    def build(self, clip, prompt, subject, reference, sampler_name, step_percents, reference_seed, **mask):
        return (make_sampler(clip, prompt, subject, reference, sampler_name, step_percents, reference_seed,
                             SAMPLER_NODE, **mask),)


@conduit_node(MASKS_NODE)
class ConduitGradSAMMasks:
    DESCRIPTION = ("The subject masks of the last run of a Conduit Grad-SAM Sampler, one per manipulated step "
                   "(white = subject kept, black = background replaced). Link the sampled LATENT so this runs "
                   "after sampling; the latent passes through.")
    CATEGORY = "conduit/gradsam"
    RETURN_TYPES = ("LATENT", "MASK")
    RETURN_NAMES = ("latent", "masks")
    OUTPUT_TOOLTIPS = ("The linked latent, unchanged.",
                       "One mask per manipulated step and batch image, at image size (all white if none ran).")
    FUNCTION = "read"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "sampler": ("SAMPLER", {"tooltip": "The SAMPLER output of Conduit Grad-SAM Sampler."}),
            "latent": ("LATENT", {"tooltip": "The output of the SamplerCustom that used this sampler."}),
        }}

    def read(self, sampler, latent):
        run = getattr(sampler, "conduit_gradsam", None)
        if run is None:
            raise ConduitError(MASKS_NODE, "the linked sampler is not a Conduit Grad-SAM Sampler.",
                               "link the SAMPLER output of Conduit Grad-SAM Sampler.")
        return (latent, run_masks(run, latent["samples"]))


@conduit_node(KSAMPLER_NODE)
class ConduitGradSAMKSampler:
    DESCRIPTION = ("All-in-one Abs-Grad-SAM sampling (works without SamplerCustom): samples like KSampler, and at "
                   "the chosen steps keeps only what the subject words attend to, replacing the rest by the "
                   "noised reference latent. Outputs the latent and the subject mask of every manipulated step. "
                   "SD1.x, SD2.x and SDXL only (SD3/SD3.5 and Flux have no cross-attention).")
    CATEGORY = "conduit/gradsam"
    RETURN_TYPES = ("LATENT", "MASK")
    RETURN_NAMES = ("latent", "masks")
    OUTPUT_TOOLTIPS = ("The sampled latent.",
                       "One mask per manipulated step and batch image, at image size (white = subject kept).")
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        import comfy.samplers

        return {"required": {
            **model_inputs("Negative conditioning (the reference used an empty prompt)."),
            "latent_image": ("LATENT", {"tooltip": "The starting latent (e.g. Empty Latent Image)."}),
            "reference": ("LATENT", {"tooltip": "The background: a VAE-encoded image (resized with a warning if "
                                                "its size differs)."}),
            **text_inputs(),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                             "tooltip": "Seed of the starting noise."}),
            "steps": ("INT", {"default": 30, "min": 1, "max": 10000,
                              "tooltip": "Sampling steps. Default 30 (the reference ran 45 of 50 DDPM steps)."}),
            "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                              "tooltip": "Classifier-free guidance scale. Default 8 (reference experiments)."}),
            "sampler_name": (_sampler_names(), {"default": "euler", "tooltip": "The k-diffusion sampler."}),
            "scheduler": (list(comfy.samplers.SCHEDULER_NAMES), {"default": "normal",
                                                                 "tooltip": "Noise schedule."}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                  "tooltip": "Fraction of the schedule to run, as in KSampler."}),
            **run_inputs(),
            **mask_inputs(),
        }}

    def sample(self, model, positive, negative, latent_image, reference, clip, prompt, subject, seed, steps, cfg,
               sampler_name, scheduler, denoise, step_percents, reference_seed, **mask):
        from comfy_extras.nodes_custom_sampler import SamplerCustom

        model_family(model, KSAMPLER_NODE, missing=DIT_MISSING)
        if denoise == 0:  # KSampler's schedule divides by denoise: answer as a zero-step run would
            log.warning("%s: denoise is 0, so no step runs and the latent is returned unchanged; set denoise "
                        "above 0.", KSAMPLER_NODE)
            samples = latent_image["samples"]
            return (latent_image, masks_to_image([], tuple(samples.shape[-2:]), samples.shape[0]))
        sampler = make_sampler(clip, prompt, subject, reference, sampler_name, step_percents, reference_seed,
                               KSAMPLER_NODE, **mask)
        # KSampler's own schedule (incl. its denoise and penultimate-sigma rules)
        sigmas = ksampler_sigmas(model, steps, sampler_name, scheduler, denoise)
        out = SamplerCustom().sample(model, True, seed, cfg, positive, negative, sampler, sigmas, latent_image)[0]
        return (out, run_masks(sampler.conduit_gradsam, out["samples"]))


@conduit_node(MASK_NODE)
class ConduitGradSAMMask:
    DESCRIPTION = ("Inspect Abs-Grad-SAM at one step: noises the latent to the step's level, runs one gradient "
                   "pass and returns the subject mask and the importance map (nothing is sampled). SD1.x, SD2.x "
                   "and SDXL only (SD3/SD3.5 and Flux have no cross-attention).")
    CATEGORY = "conduit/gradsam"
    RETURN_TYPES = ("MASK", "MASK")
    RETURN_NAMES = ("mask", "importance")
    OUTPUT_TOOLTIPS = ("Subject mask at image size (white = subject, black = would be replaced by the reference).",
                       "Importance map (all subjects summed), scaled to 0-1 per image, at image size.")
    FUNCTION = "inspect"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            **model_inputs("Negative conditioning."),
            "latent": ("LATENT", {"tooltip": "The latent to inspect (e.g. a sampled or VAE-encoded image); it is "
                                             "noised to the step's level with 'seed'."}),
            **text_inputs(),
            "step_percent": ("FLOAT", {"default": gm.DEFAULT_PERCENTS[0], "min": 0.001, "max": 0.999,
                                       "step": 0.001,
                                       "tooltip": "Sampling progress of the step to inspect (0 = start). Default "
                                                  f"{gm.DEFAULT_PERCENTS[0]} = the reference's t = 780."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                             "tooltip": "Seed of the noise added to the latent."}),
            **mask_inputs(),
        }}

    def inspect(self, model, positive, negative, latent, clip, prompt, subject, step_percent, seed, **mask):
        import comfy.samplers
        from comfy_extras.nodes_custom_sampler import SamplerCustom

        from ..patches.engine.host import model_sampling

        model_family(model, MASK_NODE, missing=DIT_MISSING)
        settings = build_settings(clip, prompt, subject, MASK_NODE, **mask)
        found: list = []
        sigma = float(model_sampling(model).percent_to_sigma(float(step_percent)))
        sigmas = torch.tensor([sigma, 0.0])
        sampler = comfy.samplers.KSAMPLER(probe_mask(settings, MASK_NODE, found))
        SamplerCustom().sample(model, True, seed, 1.0, positive, negative, sampler, sigmas, latent)
        result = found[0]
        hw = tuple(result.mask.shape[-2:])
        size = (hw[0] * 8, hw[1] * 8)
        mask = F.interpolate(result.mask.float().cpu(), size=size, mode="nearest")[:, 0]
        imp = F.interpolate(result.importance.float().sum(dim=1, keepdim=True).cpu(), size=size, mode="bilinear",
                            align_corners=False)
        return (mask, gm.normalize_map(imp)[:, 0])
