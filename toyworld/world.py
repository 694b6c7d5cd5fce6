"""The toy world (v2): procedural 64x64 images of one textured shape on a background, with captions.

Everything is deterministic from a seed (numpy Generator + PIL drawing), so the training set, the
held-out captions and every evaluation reference can be regenerated bit for bit.

v2 leaves room for each technique's effect (docs/toy_world.md):
  * backgrounds are either one of four plain colours, which the caption names, or a procedural scene
    (gradient, bands, blobs, stripes at a random angle, in random muted colours) that the caption never
    names: no prompt can redraw a given scene, so only a technique that keeps it can (Abs-Grad-SAM, COW);
  * training captions drop the colour and/or texture word (`caption_variant`), so "a star on a gray
    background" samples varied styles and a style reference is the only thing that can set them
    (Balanced Style);
  * "speckled" is a random pattern of SPECKLE px blocks, different for every seed: an identity inside the
    shape that no caption can name (COW's condition).
v2.1 coarsens the textures (16 px checks, 12 px speckles, 10 px dots) and enlarges the shapes, so that every
texture survives the toy VAE's round trip (docs/toy_world.md, "v2.1").
v2.2 (this file) anchors every texture on its shape: the pattern's origin is the shape's centre (a dot or a
check corner sits there), so a texture is one fixed pattern relative to the shape, which the UNet paints as it
draws the shape, instead of an arbitrary shift it must pick and keep across the shape; speckles are 8 px
(docs/toy_world.md, "v2.2").
Invariant the measures rely on: subjects are saturated palette colours, every background is desaturated
(`MAX_BG_SATURATION`), so the subject is found by saturation on any background.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

VERSION = "v2.2"  # recorded in the toy model's metadata (scripts/train_toy.py)
SIZE = 64
SUPERSAMPLE = 4

SHAPES = ("circle", "square", "triangle", "star", "ring")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 40),
    "purple": (140, 50, 180),
    "orange": (240, 130, 30),
}
TEXTURES = ("solid", "striped", "dotted", "checkered", "speckled")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "white": (235, 235, 235),
    "black": (25, 25, 25),
    "beige": (200, 185, 150),
}
# Procedural scenes: never named by a caption (a caption without "on a ... background" means a scene).
SCENES = ("gradient", "bands", "blobs", "stripes")
ALL_BACKGROUNDS = tuple(BACKGROUNDS) + SCENES
SCENE_P = 0.5  # share of training images on a scene
# Scene colours stay muted (saturation (max-min)/max at most this), palette colours are above 0.7.
MAX_BG_SATURATION = 0.3
# Training caption variants: keep both style words, drop both, drop the colour only, drop the texture only.
CAPTION_DROP = {"keep": 0.4, "both": 0.3, "color": 0.15, "texture": 0.15}
# The texture's second tone: the shape's colour darkened, so every texture keeps the asked-for hue.
DARK = 0.4
# Stripes and dots repeat every 16 px (two latent cells), checks are 16 px cells and speckles 8 px blocks, each
# pattern anchored on the shape's centre. With a pattern anchored on the image (v2.1: any shift; two v2.2 trials:
# any whole latent cell, and one fixed shift) the model drew "dotted" and "checkered" right in at most 0.53 of
# held-out images although the VAE kept them: it drew cells of the right tones in no regular order
# (docs/toy_world.md, "v2.2").
PERIOD = 16
CHECK = 16
SPECKLE = 8
DOT_RADIUS = 5.0
RADIUS = (17.0, 23.0)  # circumradius range in pixels


def held_out(color: str, texture: str, shape: str) -> bool:
    """(colour, texture, shape) triples never shown in training: 11 of 150, each word still seen elsewhere."""
    ci, ti, si = list(COLORS).index(color), TEXTURES.index(texture), SHAPES.index(shape)
    return (ci + 2 * ti + 3 * si) % 13 == 0


def all_triples(split: str = "all") -> list[tuple[str, str, str]]:
    out = []
    for c in COLORS:
        for t in TEXTURES:
            for s in SHAPES:
                h = held_out(c, t, s)
                if split == "all" or (split == "heldout") == h:
                    out.append((c, t, s))
    return out


@dataclass(frozen=True)
class Spec:
    shape: str
    color: str
    texture: str
    background: str
    cx: float  # centre in pixels
    cy: float
    radius: float  # circumscribed radius in pixels
    seed: int = 0

    @property
    def caption(self) -> str:
        return caption(self.color, self.texture, self.shape, self.background)


def caption(color: str | None, texture: str | None, shape: str, background: str | None) -> str:
    """'a red striped star on a gray background'; None leaves a word out, and a scene (or None) background
    leaves the background phrase out: 'a star' is a star of any style on some scene."""
    words = " ".join(w for w in (color, texture, shape) if w)
    where = f" on a {background} background" if background in BACKGROUNDS else ""
    return f"a {words}{where}"


def caption_variants() -> list[str]:
    """Every caption the training can draw (colour and texture optional, plain background or none), then ""."""
    out = [caption(c, t, s, b) for c in (None, *COLORS) for t in (None, *TEXTURES) for s in SHAPES
           for b in (None, *BACKGROUNDS)]
    return out + [""]


def caption_variant(spec: "Spec", drop: str) -> str:
    """The training caption of a spec with the style words dropped as CAPTION_DROP's key says."""
    color = None if drop in ("both", "color") else spec.color
    texture = None if drop in ("both", "texture") else spec.texture
    return caption(color, texture, spec.shape, spec.background)


@dataclass
class Sample:
    spec: Spec
    image: np.ndarray  # uint8 [H, W, 3]
    mask: np.ndarray  # float32 [H, W] in [0, 1], anti-aliased shape coverage
    extra: dict = field(default_factory=dict)


def random_spec(rng: np.random.Generator, split: str = "train", seed: int = 0, **fixed) -> Spec:
    """Draw a spec; split "train" avoids held-out triples, "heldout" uses only them, "all" anything."""
    triples = all_triples(split)
    c, t, s = triples[int(rng.integers(len(triples)))]
    if rng.random() < SCENE_P:
        bg = SCENES[int(rng.integers(len(SCENES)))]
    else:
        bg = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    radius = float(rng.uniform(*RADIUS))
    margin = radius + 2.0
    cx = float(rng.uniform(margin, SIZE - margin))
    cy = float(rng.uniform(margin, SIZE - margin))
    values = dict(shape=s, color=c, texture=t, background=bg, cx=cx, cy=cy, radius=radius, seed=seed)
    values.update(fixed)
    return Spec(**values)


def _polygon(spec: Spec, k: float) -> list[tuple[float, float]] | None:
    cx, cy, r = spec.cx * k, spec.cy * k, spec.radius * k
    if spec.shape == "square":
        h = r / math.sqrt(2.0)
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if spec.shape == "triangle":
        # shifted down so the triangle's area centre sits on (cx, cy)
        return [(cx + r * math.cos(a), cy + r * 0.25 + r * math.sin(a))
                for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if spec.shape == "star":
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else r * 0.45
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts
    return None


def shape_mask(spec: Spec, size: int = SIZE) -> np.ndarray:
    """Anti-aliased coverage of the shape, float32 [size, size]."""
    k = SUPERSAMPLE * size / SIZE
    big = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(big)
    cx, cy, r = spec.cx * k, spec.cy * k, spec.radius * k
    if spec.shape in ("circle", "ring"):
        rr = r * 0.85  # a disc looks as big as the polygons of the same circumradius
        draw.ellipse([cx - rr, cy - rr, cx + rr, cy + rr], fill=255)
        if spec.shape == "ring":
            ri = rr * 0.55
            draw.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    else:
        draw.polygon(_polygon(spec, k), fill=255)
    small = big.resize((size, size), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def texture_pattern(texture: str, origin: tuple[float, float] = (SIZE / 2, SIZE / 2), size: int = SIZE,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """Where the darker tone goes: float32 [size, size] in [0, 1], the pattern anchored at `origin` (x, y in
    pixels of this size: the shape's centre), so it moves with the shape."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u, v = xx + 0.5 - origin[0], yy + 0.5 - origin[1]  # pixel centres relative to the origin
    if texture == "solid":
        return np.zeros((size, size), np.float32)
    if texture == "striped":  # diagonal stripes, half dark, a stripe edge through the origin
        return (((u + v) % PERIOD) < PERIOD / 2).astype(np.float32)
    if texture == "dotted":  # a dot on the origin and every PERIOD px from it
        du = (u + PERIOD / 2) % PERIOD - PERIOD / 2
        dv = (v + PERIOD / 2) % PERIOD - PERIOD / 2
        return np.clip(DOT_RADIUS - np.sqrt(du * du + dv * dv), 0.0, 1.0)
    if texture == "checkered":  # four checks meet at the origin
        return ((np.floor(u / CHECK) + np.floor(v / CHECK)) % 2).astype(np.float32)
    if texture == "speckled":  # random SPECKLE-px blocks, about 40 % dark, on a grid through the origin
        rng = rng or np.random.default_rng(0)
        n = 2 * (size // SPECKLE + 2)
        cells = (rng.random((n, n)) < 0.4).astype(np.float32)
        iu = np.clip(np.floor(u / SPECKLE).astype(int) + n // 2, 0, n - 1)
        iv = np.clip(np.floor(v / SPECKLE).astype(int) + n // 2, 0, n - 1)
        return cells[iv, iu]
    raise ValueError(f"unknown texture {texture!r}")


def muted_color(rng: np.random.Generator) -> np.ndarray:
    """A random desaturated colour: brightness 50-215, saturation at most MAX_BG_SATURATION."""
    value = rng.uniform(50.0, 215.0)
    tint = rng.uniform(-1.0, 1.0, 3)
    tint -= tint.min()
    tint /= max(float(tint.max()), 1e-6)  # in [0, 1], max 1
    sat = rng.uniform(0.05, MAX_BG_SATURATION * 0.95)
    return (value * (1.0 - sat * (1.0 - tint))).astype(np.float32)


def scene(kind: str, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A procedural background float32 [size, size, 3] in 0..255, from its own random stream."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) * (SIZE / size)
    angle = rng.uniform(0.0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)  # coordinate along a random direction
    if kind == "gradient":
        a, b = muted_color(rng), muted_color(rng)
        w = ((u - u.min()) / max(float(u.max() - u.min()), 1e-6))[..., None]
        return a * (1 - w) + b * w
    if kind == "bands":
        count = int(rng.integers(2, 5))
        cols = np.stack([muted_color(rng) for _ in range(count)])
        cuts = np.sort(rng.uniform(u.min(), u.max(), count - 1))
        return cols[np.searchsorted(cuts, u)]
    if kind == "blobs":
        img = np.broadcast_to(muted_color(rng), (size, size, 3)).copy()
        for _ in range(int(rng.integers(3, 6))):
            cx, cy, sd = rng.uniform(0, SIZE), rng.uniform(0, SIZE), rng.uniform(7.0, 14.0)
            w = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sd * sd))[..., None]
            img = img * (1 - w) + muted_color(rng) * w
        return img
    if kind == "stripes":
        a, b = muted_color(rng), muted_color(rng)
        period = rng.uniform(12.0, 20.0)
        w = (((u + rng.uniform(0, period)) % period) < period / 2).astype(np.float32)[..., None]
        return a * (1 - w) + b * w
    raise ValueError(f"unknown scene {kind!r}")


def background_image(spec: Spec, size: int = SIZE) -> np.ndarray:
    """The spec's background alone, float32 [size, size, 3] in 0..255."""
    if spec.background in BACKGROUNDS:
        return np.broadcast_to(np.array(BACKGROUNDS[spec.background], np.float32), (size, size, 3)).copy()
    return scene(spec.background, np.random.default_rng([spec.seed, 7]), size)


def render(spec: Spec, size: int = SIZE) -> Sample:
    rng = np.random.default_rng(spec.seed)
    mask = shape_mask(spec, size)
    base = np.array(COLORS[spec.color], np.float32)
    k = size / SIZE
    pattern = texture_pattern(spec.texture, (spec.cx * k, spec.cy * k), size, rng)[..., None]
    fg = base * (1.0 - pattern) + base * DARK * pattern
    bg = background_image(spec, size)
    img = bg * (1.0 - mask[..., None]) + fg * mask[..., None]
    return Sample(spec, np.clip(np.rint(img), 0, 255).astype(np.uint8), mask)


def spec_at(index: int, seed: int = 0, split: str = "train", **fixed) -> Spec:
    """The spec of sample(index, seed, split), without rendering the image."""
    rng = np.random.default_rng([seed, index])
    return random_spec(rng, split, seed=int(rng.integers(2**31)), **fixed)


def sample(index: int, seed: int = 0, split: str = "train", **fixed) -> Sample:
    """The index-th sample of the stream with this seed (independent of every other index)."""
    return render(spec_at(index, seed, split, **fixed))


def silhouette(spec: Spec, size: int = SIZE) -> np.ndarray:
    """The toy ControlNet's hint: the shape's coverage as white on black, float32 [size, size, 3] in [0, 1]."""
    return np.repeat(shape_mask(spec, size)[..., None], 3, axis=-1)


def batch(start: int, count: int, seed: int = 0, split: str = "train") -> list[Sample]:
    return [sample(start + i, seed, split) for i in range(count)]


def to_tensor_images(samples: list[Sample]):
    """[B, H, W, 3] float in [0, 1]: ComfyUI's IMAGE layout."""
    import torch

    return torch.from_numpy(np.stack([s.image for s in samples]).astype(np.float32) / 255.0)
