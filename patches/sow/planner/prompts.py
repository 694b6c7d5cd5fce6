"""The text sent to the model for each SOW stage (our own wording: the paper's Gemini prompts are not public).

Stage names are shared with the stub server in the tests, which tells stages apart by these sentences.
"""
from __future__ import annotations

import json

STAGE_NAMES = {"prompt": "stage 1 (prompt intensification)", "condition_box": "stage 2 (condition box)",
               "related_box": "stage 3 (condition-related box)"}

SYSTEM = ("You plan image compositions for a text-to-image model from a visual condition (an image that will be "
          "pasted unchanged into the result) and a text prompt. Answer with one JSON object only, no prose.")


def prompt_messages(user_prompt: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": (
                "The attached image is the visual condition. User prompt: " + json.dumps(user_prompt) + ". "
                "First describe the salient visual features of the condition in one sentence, then fuse that "
                "description with the user prompt into one prompt that keeps the user's intent and wording. "
                'Reply as {"description": "...", "prompt": "..."}.')}]


def box_messages(stage: str, prompt: str, canvas_w: int, canvas_h: int, aspect: float,
                 condition_box: dict | None, min_side: float, max_side: float) -> list[dict]:
    grid = (f"Coordinates are integers on a 0-1000 scale of the {canvas_w}x{canvas_h} canvas, x to the right and "
            f"y downward, as [x0, y0, x1, y1].")
    if stage == "condition_box":
        text = (f"The final image shows: {json.dumps(prompt)}. Choose where the attached visual condition "
                f"(aspect ratio width/height {aspect:.2f}) should be placed so that the composition is natural. "
                f"Its longer side should be between {min_side:.0%} and {max_side:.0%} of the canvas' shorter side. "
                f'{grid} Reply as {{"box": [x0, y0, x1, y1]}}.')
    else:
        cb = condition_box or {}
        as1000 = [round(cb.get("x", 0) * 1000), round(cb.get("y", 0) * 1000),
                  round((cb.get("x", 0) + cb.get("w", 0)) * 1000), round((cb.get("y", 0) + cb.get("h", 0)) * 1000)]
        text = (f"The final image shows: {json.dumps(prompt)}. The attached visual condition sits at {as1000}. "
                "Give the region that directly interacts with the condition and should take on its information "
                "(for example the body below a face), excluding unrelated background. "
                f'{grid} Reply as {{"box": [x0, y0, x1, y1]}}.')
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


def retry_messages(messages: list[dict], shown: str, problem: str) -> list[dict]:
    """The stage's messages plus the bad answer and what was wrong with it. The answer is quoted only as a
    short, redacted excerpt: echoing a whole reply back would send a hostile server's megabytes again."""
    return list(messages) + [{"role": "assistant", "content": shown or "(no text)"},
                             {"role": "user", "content": f"That reply was not usable: {problem}. Answer again with "
                                                         "the JSON object only."}]
