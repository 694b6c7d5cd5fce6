"""The toy model and a reduced toy-world evaluation: only effects that are clear at a few seeds."""
import numpy as np
import torch

import conduit  # noqa: F401  (registers conduit_pack for the imports below)

from eval import classifier, measures, quality
from eval.gen import Toy, load_toy
from conduit_pack.toyworld import world

import conduit_pack.patches.engine.layers as layers
import conduit_pack.nodes.demo_model as demo
import conduit_pack.nodes  # noqa: E402

STEPS = 12


def test_demo_loader_node_under_inference_mode():
    node = demo.ConduitDemoToyModelLoader()
    assert node.CATEGORY == "conduit/demo" and "demo only" in conduit_pack.nodes.NODE_DISPLAY_NAME_MAPPINGS[
        "ConduitDemoToyModelLoader"]
    with torch.inference_mode():
        model, clip, vae = node.load()
    assert layers.model_family(model, "t") == "sd15"  # the toy_sd15 topology on ComfyUI's SD1.5 classes
    blocks = model.model.diffusion_model
    assert len(blocks.input_blocks) == 4 and len(blocks.output_blocks) == 4  # one down-sampling level
    p = next(model.model.diffusion_model.parameters())
    assert not p.is_inference()  # gradients through the UNet (Abs-Grad-SAM) stay possible
    t = Toy(model, clip, vae)
    with torch.inference_mode():
        img = t.generate("a red solid circle on a gray background", seed=0, steps=4)
    assert img.shape == (1, 64, 64, 3) and np.isfinite(img).all()


def test_toynet_reads_procedural_images(net):
    acc = classifier.accuracy_on_procedural(net, count=128, seed=5)
    # the background head also names the scene kind (gradient / bands / blobs / stripes), which it confuses
    # among themselves more often; plain colour vs scene is what the suites use
    assert min(acc["shape"], acc["color"]) > 0.9 and acc["texture"] > 0.85 and acc["background"] > 0.8, acc
    samples = world.batch(0, 128, 5, "all")
    labels, _ = classifier.predict(net, np.stack([s.image for s in samples]) / 255.0)
    plain_or_scene = [(s.spec.background in world.SCENES) == (b in world.SCENES)
                      and (b in world.SCENES or b == s.spec.background) for s, b in zip(samples, labels["background"])]
    assert np.mean(plain_or_scene) > 0.95


def test_toynet_reads_textures_through_the_toy_vae(toy, net):
    """The reader sees what the model can give it: procedural images after the toy VAE's round trip. The v2
    reader, which had never seen a VAE's output, read their textures at 0.52 (solid at 0.43); the full run's
    ceiling is 0.96 on held-out captions (docs/toy_world.md, Quality)."""
    samples = world.batch(0, 128, 8, "all")
    labels, _ = classifier.predict(net, toy.round_trip(np.stack([s.image for s in samples]) / 255.0))

    def read(key, where=lambda s: True):
        return np.mean([lab == getattr(s.spec, key) for lab, s in zip(labels[key], samples) if where(s)])

    assert read("texture") > 0.9 and read("shape") > 0.9 and read("color") > 0.95, labels
    assert read("texture", lambda s: s.spec.texture == "solid") > 0.75  # the v2 reader: 0.43


def test_measures_on_procedural_images():
    a = world.sample(0, 3, "all", color="red", texture="striped", shape="star", background="gray")
    img = a.image.astype(np.float32) / 255
    assert measures.palette_distance(img, "red") < measures.palette_distance(img, "green")
    assert measures.nearest_palette(img) == "red"
    assert measures.iou(measures.foreground(img), a.mask > 0.5) > 0.9
    solid = world.render(world.Spec("star", "red", "solid", "gray", 32, 32, 18)).image.astype(np.float32) / 255
    assert measures.texture_distance(img, img) == 0.0
    assert measures.texture_signature(img).sum() > 10 * measures.texture_signature(solid).sum()
    assert measures.psnr(img, img) > 90 and abs(measures.ssim(img, img) - 1) < 1e-6


def test_toy_model_follows_heldout_captions_better_than_random_weights(toy, net):
    caps = quality.captions_for("heldout", limit=6, seed=1)
    trained, _, _ = quality.evaluate(toy, net, caps, seeds=2, steps=STEPS)
    rand, _, _ = quality.evaluate(load_toy(random_unet_seed=0), net, caps, seeds=2, steps=STEPS)
    # At CI size (12 images) the trained model reads better than random weights on held-out captions. The
    # full run (docs/toy_world.md, Quality: colour 0.99, shape 0.93, texture 0.70 on 220 images) misses the
    # 70 % bar for two textures, and 12 images cannot pin a per-word level, so none is asserted here.
    def read(r):
        return (r["shape"] + r["color"] + r["background"]) / 3

    assert read(trained) > read(rand) + 0.15, (trained, rand)
    assert trained["color"] > rand["color"] and trained["background"] > rand["background"], (trained, rand)
    assert trained["fd"] < rand["fd"], (trained, rand)


def test_seg_scale_zero_is_vanilla_and_scale_three_is_not(toy):
    from eval.eval_seg import seg_model

    text = world.caption("blue", "striped", "star", "gray")
    vanilla = toy.sample(text, seed=3, steps=6)
    assert torch.equal(toy.sample(text, seed=3, steps=6, model=seg_model(toy, 0.0, float("inf"))), vanilla)
    assert not torch.allclose(toy.sample(text, seed=3, steps=6, model=seg_model(toy, 3.0, float("inf"))), vanilla)


def test_balanced_style_changes_the_sample_only_when_on(toy):
    """Mechanics only: on the toy model the style effect itself is not measurable (docs/toy_world.md)."""
    from eval import eval_cb

    table = eval_cb.toy_style_table(toy, steps=4, seeds=2)
    content, style = eval_cb.PAIRS[0]
    ref = eval_cb.reference_image(style, content[1], 0)
    text = eval_cb.content_caption(content)
    vanilla = toy.sample(text, seed=1, steps=6)
    assert torch.equal(toy.sample(text, seed=1, steps=6, model=eval_cb.styled_model(toy, 0.0, ref, table)), vanilla)
    assert not torch.allclose(toy.sample(text, seed=1, steps=6, model=eval_cb.styled_model(toy, 1.0, ref, table)),
                              vanilla)


def test_toy_controlnet_puts_the_subject_on_the_hint(toy):
    """The toy ControlNet (demo loader node + core Apply ControlNet) moves the subject onto a silhouette hint of
    another shape and place than the prompt's; over 6 captions x 2 seeds it raised the hint IoU by 0.14-0.20."""
    from eval import eval_cb

    node = demo.ConduitDemoToyControlNetLoader()
    with torch.inference_mode():
        (controlnet,) = node.load()
    iou = {True: [], False: []}
    for p, (content, _) in enumerate(eval_cb.PAIRS[:6]):
        hint = world.silhouette(eval_cb.hint_spec(p))
        for on in (True, False):
            pos, neg = eval_cb.controlled(toy, eval_cb.content_caption(content), controlnet if on else None, hint,
                                          None)
            for seed in range(2):
                img = eval_cb.generate(toy, toy.model, pos, neg, seed, STEPS)[0]
                iou[on].append(measures.iou(measures.foreground(img), hint[..., 0] > 0.5))
    assert np.mean(iou[True]) > np.mean(iou[False]) + 0.08, iou
