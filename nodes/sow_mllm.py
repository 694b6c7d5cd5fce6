"""SOW MLLM planning node: prompt intensification, condition box and condition-related box over HTTP.

The planner itself (patches/planner) never imports ComfyUI; this node hands it ComfyUI's interrupt check, so
Cancel stops a request at once, and turns the planner's Interrupted into ComfyUI's own interrupt exception.
"""
from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable

import numpy as np
import torch

from ..patches.sow import planner
from ..patches.engine.errors import ConduitError
from ._inputs import canvas_size
from ._declare import conduit_node

NODE = "Conduit MLLM Plan"
MAX_SIDE_PX = 768  # the condition is sent downscaled; planning needs layout, not detail


def png_b64(image: torch.Tensor) -> str:
    from PIL import Image

    arr = (image[..., :3].clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    pil = Image.fromarray(arr)
    if max(pil.size) > MAX_SIDE_PX:
        pil.thumbnail((MAX_SIDE_PX, MAX_SIDE_PX))
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def comfy_interrupt() -> tuple[Callable[[], bool] | None, Callable[[], None]]:
    """(ComfyUI's interrupt check, a function raising ComfyUI's interrupt exception); no check without ComfyUI."""
    try:
        import comfy.model_management as mm
    except ImportError:
        def stop() -> None:
            raise planner.Interrupted("interrupted")
        return None, stop

    def stop() -> None:
        mm.throw_exception_if_processing_interrupted()  # raises and clears the flag, as samplers do
        raise mm.InterruptProcessingException()  # the flag was cleared meanwhile: still stop the run

    return mm.processing_interrupted, stop


@conduit_node(NODE)
class ConduitMLLMPlan:
    DESCRIPTION = ("SOW's three MLLM stages over HTTP (OpenAI-compatible chat completions or Ollama): 1) "
                   "intensify the prompt with a description of the visual condition, 2) place the condition on "
                   "the canvas, 3) find the condition-related region. Strict JSON, validated and normalized "
                   "(xyxy/yxyx/xywh, 0-1/0-1000/pixels), one retry on a bad reply, cached by input. Limits: "
                   "timeout is the total per stage (Cancel stops at once); replies over 1 MiB (after "
                   "decompression) or nested deeper than 32 levels are refused; the model's prompt is cut to "
                   "4000 characters and its prompt weights (word:w) clamped to 0..2. The API key is read from the "
                   "named environment variable only and blanked from the log, errors and report. Manual values "
                   "are the offline fallback.")
    CATEGORY = "conduit/cow"
    RETURN_TYPES = ("STRING", "CONDUIT_BOX", "CONDUIT_BOX", "STRING")
    RETURN_NAMES = ("prompt", "condition_box", "related_box", "report")
    OUTPUT_TOOLTIPS = ("Intensified prompt (or the manual / user prompt); a model's prompt is cut to 4000 "
                       "characters and its weights clamped to 0..2.",
                       "Where to paste the condition, for COW Seed Canvas.",
                       "Condition-related region, for SOW Attention.",
                       "JSON report: per stage the value, its source (model, retried, cache, manual), notes, and "
                       "a warning naming the failure when the manual value stood in.")
    FUNCTION = "plan"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The visual condition. One image."}),
            "prompt": ("STRING", {"multiline": True, "default": "",
                                  "tooltip": "Your text prompt; stage 1 fuses it with a description of the image."}),
            "api": (["ollama", "openai-compatible", "manual"], {"default": "ollama",
                                                               "tooltip": "ollama: POST {url}/api/chat. "
                                                                          "openai-compatible: POST "
                                                                          "{url}/chat/completions. manual: no "
                                                                          "request, use the manual inputs."}),
            "url": ("STRING", {"default": "http://127.0.0.1:11434",
                               "tooltip": "Server base URL (e.g. http://127.0.0.1:11434 for Ollama, "
                                          "https://api.openai.com/v1 for OpenAI). http or https only, no "
                                          "user:password@ and no #fragment. The path is cleaned up (.., //, "
                                          "%-codes) and must end at /api/chat or /chat/completions, which is "
                                          "added if missing. Up to 5 redirects are followed, each checked the "
                                          "same way; the key is not sent on when a redirect leaves the host."}),
            "model": ("STRING", {"default": "qwen2.5vl",
                                 "tooltip": "Model name on that server; it must accept images. The paper used "
                                            "Gemini-1.5-pro."}),
            "timeout": ("FLOAT", {"default": 60.0, "min": 1.0, "max": 3600.0, "step": 1.0,
                                  "tooltip": "Total seconds for one stage: connecting, every read, redirects "
                                             "and the one retry together (the node waits at most 3x this). "
                                             "ComfyUI's Cancel stops a request at once. Replies are capped at "
                                             "1 MiB after decompression. Default 60."}),
            "api_key_env": ("STRING", {"default": "",
                                       "tooltip": "NAME of the environment variable holding the API key, e.g. "
                                                  "OPENAI_API_KEY: capitals, digits and _, ending in _API_KEY, "
                                                  "_KEY or _TOKEN. Other variables (PATH, HOME...), other "
                                                  "services' credentials (AWS_, GITHUB_, HF_...) and pasted keys "
                                                  "are refused without being shown; CONDUIT_MLLM_KEY_VARS in "
                                                  "ComfyUI's environment can list the allowed names. The key is "
                                                  "never stored in the workflow or image and is blanked from the "
                                                  "log, errors and report. Empty: no key (local servers)."}),
            **canvas_size("Canvas width the boxes refer to; match COW Seed Canvas. Default 512.",
                          "Canvas height. Default 512."),
            "box_order": (list(planner.ORDERS), {"default": "auto",
                                            "tooltip": "How the model writes boxes: auto (reply fields, then "
                                                       "box_2d = Gemini yxyx, else xyxy as asked), xyxy, yxyx, "
                                                       "xywh."}),
            "box_scale": (list(planner.SCALES), {"default": "auto",
                                            "tooltip": "auto (values <= 1: 0-1; else 0-1000 as asked, pixels above "
                                                       "1000), 0-1, 0-1000 (Gemini), pixels of the canvas "
                                                       "(Qwen-style)."}),
            "min_side": ("FLOAT", {"default": 0.35, "min": 0.0, "max": 1.0, "step": 0.01,
                                   "tooltip": "Smallest condition box side, fraction of the canvas' shorter side. "
                                              "Paper: 180 of 512 px = 0.35."}),
            "max_side": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
                                   "tooltip": "Largest condition box side. Paper: 256 of 512 px = 0.5."}),
            "keep_aspect": ("BOOLEAN", {"default": True,
                                        "tooltip": "Reshape the condition box to the image's aspect ratio (same "
                                                   "centre and area), so the seed canvas does not distort it."}),
            "on_failure": (["use manual if given", "error"], {"default": "use manual if given",
                                                              "tooltip": "When a stage fails (unreachable, HTTP "
                                                                         "error, timeout, reply too large or too "
                                                                         "deep, not JSON, bad JSON twice): use "
                                                                         "the manual value with a warning in the "
                                                                         "log and report, or stop with the error. "
                                                                         "A bad url or api_key_env is always an "
                                                                         "error; Cancel always stops."}),
        }, "optional": {
            "manual_prompt": ("STRING", {"multiline": True, "default": "",
                                         "tooltip": "Prompt used in manual mode or as the stage-1 fallback. Empty "
                                                    "in manual mode: your prompt."}),
            "manual_condition_box": ("CONDUIT_BOX", {"tooltip": "Condition box for manual mode / fallback "
                                                                "(Conduit Box)."}),
            "manual_related_box": ("CONDUIT_BOX", {"tooltip": "Related box for manual mode / fallback."}),
        }}

    def plan(self, image, prompt, api, url, model, timeout, api_key_env, canvas_width, canvas_height, box_order,
             box_scale, min_side, max_side, keep_aspect, on_failure, manual_prompt="", manual_condition_box=None,
             manual_related_box=None):
        if image.shape[0] != 1:
            raise ConduitError(NODE, f"image has a batch of {image.shape[0]}.", "pass a single image.")
        if min_side > max_side > 0:
            raise ConduitError(NODE, f"min_side {min_side:g} is above max_side {max_side:g}.",
                               "set min_side <= max_side.")
        endpoint = None
        if api != "manual":
            if not url.strip() or not model.strip():
                raise ConduitError(NODE, "url and model are required unless api is 'manual'.",
                                   "fill in url and model, or switch api to manual.")
            endpoint = planner.Endpoint(api, url.strip(), model.strip(), float(timeout), api_key_env.strip())
        h, w = image.shape[1], image.shape[2]
        req = planner.PlanRequest(prompt, png_b64(image[0]), w / h, canvas_width, canvas_height, box_order, box_scale,
                             min_side, max_side, keep_aspect, manual_prompt=manual_prompt or "",
                             manual_condition=manual_condition_box, manual_related=manual_related_box,
                             fallback=on_failure != "error")
        interrupted, stop = comfy_interrupt()
        try:
            result = planner.plan(endpoint, req, NODE, interrupted=interrupted)
        except planner.Interrupted:
            stop()
            raise
        report = json.dumps({k: {"value": e.value, "source": e.source, "notes": e.notes,
                                 **({"warning": e.warning} if e.warning else {})} for k, e in result.items()},
                            indent=1)
        return {"ui": {"text": [report]},
                "result": (result["prompt"].value, result["condition_box"].value, result["related_box"].value,
                           report)}
