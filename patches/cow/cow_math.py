"""Cyclic One-Way Diffusion math (pure torch): seed canvas, boxes, cycle plan, sigma-space steps, renoise.

Conventions: images are [H, W, C] floats in 0..1 (ComfyUI IMAGE without the batch axis), masks [H, W] with
1 = keep (the visual condition). Schedules are ComfyUI sigma lists, descending, ending at 0; a "level" is an
index into that list, so level N (sigma 0) is the clean latent and level 0 the noisiest one. Latents are in
the form ComfyUI samplers use: variance-exploding (x = x0 + sigma * eps) for epsilon and v-prediction alike,
or, with `flow=True`, flow matching (CONST sampling: SD3/SD3.5, Flux): x = (1 - sigma) * x0 + sigma * eps,
with sigma in [0, 1]. Both are x = alpha(sigma) * x0 + sigma * eps, alpha = 1 (VE) or 1 - sigma (flow), and
every step below is written for that general form; the VE code paths are kept literally as they were.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..engine.errors import ConduitError

LATENT_STRIDE = 8
GRAY = 128.0 / 255.0


@dataclass(frozen=True)
class PixelBox:
    """A box in canvas pixels, every edge on the latent grid (multiples of 8)."""
    x: int
    y: int
    w: int
    h: int

    @property
    def latent(self) -> tuple[int, int, int, int]:
        s = LATENT_STRIDE
        return self.x // s, self.y // s, self.w // s, self.h // s


def box_to_pixels(x: float, y: float, w: float, h: float, units: str, canvas_w: int, canvas_h: int
                  ) -> tuple[float, float, float, float]:
    """'pixels' boxes pass through; 'normalized' boxes are fractions of the canvas width and height."""
    if units == "normalized":
        return x * canvas_w, y * canvas_h, w * canvas_w, h * canvas_h
    if units != "pixels":
        raise ValueError(f"unknown box units {units!r}")
    return float(x), float(y), float(w), float(h)


def clamp_box(x: float, y: float, w: float, h: float, canvas_w: int, canvas_h: int, node: str
              ) -> tuple[tuple[float, float, float, float], bool]:
    """The part of the box inside the canvas and whether anything was cut off; empty -> ConduitError."""
    vals = (x, y, w, h)
    if not all(math.isfinite(v) for v in vals):
        raise ConduitError(node, f"box {vals} has a non-finite value.", "give four finite numbers x, y, w, h.")
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(canvas_w), x + w), min(float(canvas_h), y + h)
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        raise ConduitError(
            node, f"box x={x:g} y={y:g} w={w:g} h={h:g} is empty inside the {canvas_w}x{canvas_h} canvas.",
            "move the box onto the canvas and give it a positive width and height.")
    clamped = (x0, y0, x1 - x0, y1 - y0) != (x, y, w, h)
    return (x0, y0, x1 - x0, y1 - y0), clamped


def snap_box(x: float, y: float, w: float, h: float, canvas_w: int, canvas_h: int) -> PixelBox:
    """Round edges to the 8-pixel latent grid, keeping at least one latent cell and staying on the canvas."""
    s = LATENT_STRIDE
    x0 = min(int(round(x / s)) * s, canvas_w - s)
    y0 = min(int(round(y / s)) * s, canvas_h - s)
    x1 = max(int(round((x + w) / s)) * s, x0 + s)
    y1 = max(int(round((y + h) / s)) * s, y0 + s)
    return PixelBox(x0, y0, min(x1, canvas_w) - x0, min(y1, canvas_h) - y0)


def check_canvas_size(width: int, height: int, node: str) -> None:
    if width % LATENT_STRIDE or height % LATENT_STRIDE or width < LATENT_STRIDE or height < LATENT_STRIDE:
        raise ConduitError(node, f"canvas {width}x{height} is not a positive multiple of 8 on both sides.",
                           "choose a width and height that are multiples of 8.")


def resize_image(image: torch.Tensor, h: int, w: int, fit: str) -> torch.Tensor:
    """[H, W, C] -> [h, w, C]; 'stretch' ignores aspect, 'crop' cuts the centre to the box's aspect first."""
    if fit == "crop":
        ih, iw = image.shape[:2]
        scale = max(h / ih, w / iw)
        ch, cw = min(ih, max(1, round(h / scale))), min(iw, max(1, round(w / scale)))
        top, left = (ih - ch) // 2, (iw - cw) // 2
        image = image[top:top + ch, left:left + cw]
    elif fit != "stretch":
        raise ValueError(f"unknown fit {fit!r}")
    x = image.permute(2, 0, 1).unsqueeze(0)
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0].permute(1, 2, 0)


def resize_mask(mask: torch.Tensor, h: int, w: int, fit: str, image_hw: tuple[int, int]) -> torch.Tensor:
    """A keep mask resized the same way as its image (the mask may come at another size than the image)."""
    m = F.interpolate(mask[None, None].float(), size=image_hw, mode="bilinear", align_corners=False)[0, 0]
    return resize_image(m[..., None], h, w, fit)[..., 0].clamp(0, 1)


def latent_mask(keep: torch.Tensor) -> torch.Tensor:
    """Pixel keep mask [h, w] (h, w multiples of 8) -> binary latent mask: a cell is kept when at least half is."""
    cells = F.avg_pool2d(keep[None, None].float(), LATENT_STRIDE)[0, 0]
    return (cells >= 0.5).float()


@dataclass
class SeedCanvas:
    canvas: torch.Tensor  # [Hc, Wc, 3]
    crop: torch.Tensor  # [h, w, 3], gray outside the keep mask
    crop_keep: torch.Tensor  # [h, w] binary pixel mask
    crop_latent_mask: torch.Tensor  # [h/8, w/8]
    canvas_latent_mask: torch.Tensor  # [Hc/8, Wc/8], the crop mask placed at the box
    box: PixelBox


def seed_canvas(image: torch.Tensor, keep: torch.Tensor | None, box: PixelBox, canvas_w: int, canvas_h: int,
                gray: float = GRAY, fit: str = "stretch") -> SeedCanvas:
    """Paste the visual condition (resized to the box) on a flat gray canvas; gray wherever the mask drops it."""
    image = image[..., :3].float()
    crop = resize_image(image, box.h, box.w, fit).clamp(0, 1)
    if keep is None:
        crop_keep = torch.ones(box.h, box.w)
    else:
        crop_keep = (resize_mask(keep, box.h, box.w, fit, tuple(image.shape[:2])) >= 0.5).float()
    crop = torch.where(crop_keep[..., None] > 0, crop, torch.full_like(crop, gray))
    canvas = torch.full((canvas_h, canvas_w, 3), float(gray))
    canvas[box.y:box.y + box.h, box.x:box.x + box.w] = crop
    crop_lat = latent_mask(crop_keep)
    full = torch.zeros(canvas_h // LATENT_STRIDE, canvas_w // LATENT_STRIDE)
    lx, ly, lw, lh = box.latent
    full[ly:ly + lh, lx:lx + lw] = crop_lat
    return SeedCanvas(canvas, crop, crop_keep, crop_lat, full, box)


def paste_latent(crop_latent: torch.Tensor, box: PixelBox, canvas_hw: tuple[int, int]) -> torch.Tensor:
    """[B, C, h, w] crop latent -> [B, C, H, W] canvas-size latent, zero outside the box."""
    lx, ly, lw, lh = box.latent
    out = crop_latent.new_zeros(*crop_latent.shape[:2], *canvas_hw)
    out[..., ly:ly + lh, lx:lx + lw] = crop_latent
    return out


# ----------------------------------------------------------------------------------------------- cycle plan

def fraction_index(fraction: float, steps: int) -> int:
    """The reference's int(fraction * N), immune to float noise such as 0.7 * 10 = 7.000000000000001."""
    return int(math.floor(fraction * steps + 1e-9))


@dataclass(frozen=True)
class Op:
    kind: str  # "renoise" | "inject" | "step"
    level: int  # inject: level pasted; step: the step goes level -> level + 1; renoise: target level
    phase: str = ""  # step: "cycle" | "final"; inject: "cycle" | "preserve" | "start"
    cycle: int = -1  # cycle number for ops inside a cycle


@dataclass(frozen=True)
class CyclePlan:
    steps: int  # N = len(sigmas) - 1
    top: int  # level each cycle renoises to (the reference's back_step, counted from the noisy end)
    bottom: int  # level each cycle ends at and the final pass starts from (replace_step)
    preserve: int | None  # level whose inverted latent is pasted once during the final pass
    cycles: int

    @property
    def levels_needed(self) -> list[int]:
        """Condition latents the sampler pastes, by level."""
        need = set(range(self.top, self.bottom + 1))
        if self.preserve is not None:
            need.add(self.preserve)
        return sorted(need)

    def ops(self) -> list[Op]:
        out: list[Op] = []
        for c in range(self.cycles):
            out += [Op("renoise", self.top, "cycle", c), Op("inject", self.top, "cycle", c)]
            for k in range(self.top, self.bottom):
                out += [Op("step", k, "cycle", c), Op("inject", k + 1, "cycle", c)]
        if self.cycles == 0:
            out.append(Op("inject", self.bottom, "start"))
        for k in range(self.bottom, self.steps):
            out.append(Op("step", k, "final"))
            if self.preserve == k + 1:
                out.append(Op("inject", k + 1, "preserve"))
        return out

    def model_steps(self) -> tuple[int, int]:
        """(steps inside cycles, steps in the final pass): one guided model evaluation each."""
        return self.cycles * (self.bottom - self.top), self.steps - self.bottom


def cycle_plan(steps: int, cycle_start: float, cycle_end: float, preservation: float, cycles: int,
               node: str) -> CyclePlan:
    """Reference semantics: fractions count steps from the clean end (0.7 of 10 -> the reference's step 7).

    The cycle renoises to level N - int(start*N) and denoises to level N - int(end*N); the preservation
    paste happens after the reference's step int(p*N), i.e. at level N - int(p*N). A negative p disables it.
    """
    if steps < 2:
        raise ConduitError(node, f"the schedule has {steps} step(s).", "use at least 2 sampling steps.")
    back, replace = fraction_index(cycle_start, steps), fraction_index(cycle_end, steps)
    if not 1 <= replace < back <= steps:
        raise ConduitError(
            node, f"cycle start {cycle_start:g} and end {cycle_end:g} of {steps} steps give steps {back} and "
                  f"{replace}; the start must be above the end and the end at least one step.",
            "raise cycle_start, lower cycle_end (keep end > 0), or use more steps.")
    preserve = None
    if preservation >= 0:
        keep = fraction_index(preservation, steps)
        if keep >= replace:
            raise ConduitError(
                node, f"preservation step {preservation:g} (step {keep}) is not after the cycle end "
                      f"{cycle_end:g} (step {replace}).",
                "choose a preservation fraction below cycle_end, or a negative value to turn it off.")
        preserve = steps - keep
    if cycles < 0:
        raise ConduitError(node, f"cycles is {cycles}.", "use 0 or more cycles.")
    return CyclePlan(steps, steps - back, steps - replace, preserve, cycles)


# ------------------------------------------------------------------------------------- sigma-space steps

def alpha_bar(sigma: float) -> float:
    """DDPM cumulative alpha of a VE noise level: sigma^2 = (1 - a) / a."""
    return 1.0 / (1.0 + float(sigma) ** 2)


def signal(sigma: float, flow: bool = False) -> float:
    """alpha(sigma), the clean latent's factor in x = alpha * x0 + sigma * eps: 1 (VE) or 1 - sigma (flow)."""
    return 1.0 - float(sigma) if flow else 1.0


def ancestral_sigmas(sigma: float, sigma_next: float, eta: float, flow: bool = False) -> tuple[float, float]:
    """(sigma_down, sigma_up) of a DDIM step with this eta, written in sigma space.

    DDIM's sigma_t(eta) divided by sqrt(alpha_bar_prev) is eta * s * sqrt(sigma^2 - s^2) / sigma, the same
    split as k-diffusion's ancestral step, so DDIM(eta) is Euler-ancestral(eta) step for step.
    For x = alpha x0 + sigma eps in general (flow), DDIM's noise is eta times the posterior std of
    q(x_next | x, x0): up = eta * (s / sigma) * sqrt(sigma^2 - (alpha / alpha_next)^2 s^2), s = sigma_next;
    with alpha = 1 this is the VE formula above.
    """
    if sigma_next <= 0 or eta <= 0:
        return float(sigma_next), 0.0
    if not flow:
        up = min(sigma_next, eta * sigma_next * math.sqrt(max(sigma ** 2 - sigma_next ** 2, 0.0)) / sigma)
        return math.sqrt(max(sigma_next ** 2 - up ** 2, 0.0)), up
    ratio = signal(sigma, True) / signal(sigma_next, True)
    posterior = max(sigma ** 2 - (ratio * sigma_next) ** 2, 0.0)
    up = min(sigma_next, eta * sigma_next * math.sqrt(posterior) / sigma)
    return math.sqrt(max(sigma_next ** 2 - up ** 2, 0.0)), up


def ddim_step(x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float, eta: float,
              noise: torch.Tensor | None, flow: bool = False) -> torch.Tensor:
    """One DDIM(eta) step from sigma to sigma_next given the model's denoised prediction:
    x_next = alpha_next x0 + sigma_down eps + sigma_up noise, eps = (x - alpha x0) / sigma. At eta 0 this is
    ComfyUI's Euler step in both forms (DDIM and Euler coincide for VE and for flow latents)."""
    down, up = ancestral_sigmas(sigma, sigma_next, eta, flow)
    if flow:
        eps = (x - denoised * signal(sigma, True)) / sigma
        out = denoised * signal(sigma_next, True) + eps * down
    else:
        out = denoised + (x - denoised) * (down / sigma)
    if up > 0:
        if noise is None:
            raise ValueError("a stochastic step needs noise")
        out = out + noise * up
    return out


def inversion_input_scale(sigma_from: float, sigma_to: float, flow: bool = False) -> float:
    """Factor for the latent fed to the model at sigma_to during inversion.

    DDIM inversion evaluates the network at the target timestep on the current latent. In DDPM scaling the
    network sees x_from * sqrt(alpha_bar_from); ComfyUI scales its input by sqrt(alpha_bar_to), so the VE
    latent is rescaled to keep the network input identical to the reference's. A flow model's input is the
    latent itself (CONST sampling does not scale it), so the current latent goes in unchanged.
    """
    if flow:
        return 1.0
    return math.sqrt((1.0 + sigma_to ** 2) / (1.0 + sigma_from ** 2))


def inversion_step(x: torch.Tensor, model_input: torch.Tensor, denoised: torch.Tensor, sigma_from: float,
                   sigma_to: float) -> torch.Tensor:
    """x at sigma_from -> sigma_to along the model's direction d = (input - denoised) / sigma_to.

    VE: d is the predicted noise eps (DDIM inversion). Flow: d is the predicted velocity v = eps - x0
    (CONST denoised = input - sigma v), and this is the reversed Euler step of the flow ODE dx/dsigma = v,
    which is what DDIM inversion is for flow latents."""
    eps = (model_input - denoised) / sigma_to
    return x + eps * (sigma_to - sigma_from)


# ---------------------------------------------------------------------------------------------- renoise

def renoise_exact(sigma_from: float, sigma_to: float) -> tuple[float, float]:
    """(signal factor, noise std) taking a VE latent from sigma_from up to sigma_to exactly."""
    return 1.0, math.sqrt(max(sigma_to ** 2 - sigma_from ** 2, 0.0))


def renoise_reference(sigma_from: float, sigma_to: float, ref_from: float, ref_to: float) -> tuple[float, float]:
    """The official code's renoise in VE terms.

    It mixes with DDPM factors sqrt(a_to / a_from) and sqrt(1 - a_to / a_from) taken one schedule level too
    noisy (ref_from, ref_to), then the next step treats the result as a latent at sigma_to.
    """
    ratio = alpha_bar(ref_to) / alpha_bar(ref_from)
    a, b = math.sqrt(ratio), math.sqrt(max(1.0 - ratio, 0.0))
    return (a * math.sqrt(alpha_bar(sigma_from) / alpha_bar(sigma_to)), b / math.sqrt(alpha_bar(sigma_to)))


def renoise_exact_flow(sigma_from: float, sigma_to: float) -> tuple[float, float]:
    """(signal factor, noise std) taking a flow latent (1 - s) x0 + s eps from sigma_from up to sigma_to
    exactly: scale by a = (1 - sigma_to) / (1 - sigma_from), then add noise of std sqrt(sigma_to^2 - a^2 s^2)."""
    a = (1.0 - sigma_to) / (1.0 - sigma_from)
    return a, math.sqrt(max(sigma_to ** 2 - (a * sigma_from) ** 2, 0.0))


def renoise_coefficients(sigmas: list[float], bottom: int, top: int, mode: str, node: str,
                         flow: bool = False) -> tuple[float, float]:
    if mode == "exact":
        return renoise_exact_flow(sigmas[bottom], sigmas[top]) if flow else renoise_exact(sigmas[bottom], sigmas[top])
    if mode != "reference-compatible":
        raise ValueError(f"unknown renoise mode {mode!r}")
    if flow:
        raise ConduitError(node, "reference-compatible renoise reproduces the official code's DDPM (alpha-bar) "
                                 "formula, which has no counterpart on a flow-matching model (SD3/SD3.5, Flux).",
                           "use renoise 'exact', which renoises flow latents exactly.")
    if top < 1:
        raise ConduitError(node, "reference-compatible renoise reads the level one step above the cycle start, "
                                 "and the cycle already starts at the first step.",
                           "lower cycle_start or use renoise 'exact'.")
    return renoise_reference(sigmas[bottom], sigmas[top], sigmas[bottom - 1], sigmas[top - 1])


def inject(x: torch.Tensor, condition: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One-way re-injection: inside the (binary) mask the latent becomes the inverted condition."""
    return torch.where(mask > 0.5, condition.to(x), x)


def masked_uncond(neg: torch.Tensor, sup: torch.Tensor | None, div: torch.Tensor | None,
                  region: torch.Tensor) -> torch.Tensor:
    """The official masked CFG's unconditional side: plain negative in the condition region, and
    negative + suppress - diversity in the background (a missing prompt falls back to the negative)."""
    sup = neg if sup is None else sup
    div = neg if div is None else div
    return neg + (1.0 - region) * (sup - div)


def match_schedule(expected: list[float], got: list[float], rtol: float = 1e-4) -> bool:
    if len(expected) != len(got):
        return False
    return all(abs(a - b) <= rtol * max(abs(a), 1e-6) for a, b in zip(expected, got))
