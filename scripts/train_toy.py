"""Train the Conduit toy model (demo only) on the procedural toy world, on CPU.

    python scripts/train_toy.py                      # every stage, resumable
    python scripts/train_toy.py --stage unet         # one stage (vae | encode | unet | export)
    python scripts/train_toy.py --stage controlnet   # the toy ControlNet for the shipped toy UNet (not in "all")

Stages, each checkpointed under --work so a killed run resumes where it stopped:
  1. vae     the tiny KL autoencoder of toyworld/build.py (ComfyUI's AutoencoderKL, 8x down, 4 channels)
             on 64x64 toy images: MSE + L1 reconstruction + an edge loss (L1 of the image gradients, weight
             --vae-edge), KL weight 1e-6; --vae-init fine-tunes an earlier toy model's VAE.
  2. encode  rescale the VAE so that ComfyUI's SD1.5 latent scale (0.18215) gives unit-variance, zero-mean
             latents, then encode --data training images (posterior mean and std kept).
  3. unet    the tiny SD1.5-shaped UNet (toyworld/build.py "sd15": 32 channels, cross-attention at the
             8x8, 4x4 and 2x2 latent grids) with the model's own epsilon objective on ComfyUI's discrete
             1000-step schedule (model_sampling of the ComfyUI model), frozen random CLIP-shaped text
             encoder through ComfyUI's tokenizer and encode path, 10 % empty captions for CFG, EMA weights;
             --unet-init fine-tunes an earlier toy model's UNet.
  4. export  one safetensors file (unet.*, vae.*, clip.*) with the recipe in its metadata; also written
             at every UNet checkpoint so partial progress is usable.
  controlnet (only when asked for) a ComfyUI ControlNet (comfy.cldm.cldm.ControlNet) for the toy UNet of
             --toy-weights: initialised from that UNet's encoder and middle block, zero convolutions, the UNet
             frozen; hint = the training image's silhouette (white shape on black); the same latents, captions
             and epsilon objective as the UNet stage, with the control residuals fed into the frozen UNet.
             Writes --cn-out (fp32) at every checkpoint and at the end. Re-run it whenever the UNet changes.
Held-out (colour, texture, shape) triples of toyworld/world.py are never trained on.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import conduit  # noqa: E402,F401  (registers the pack as conduit_pack)

log = logging.getLogger("train_toy")

DEFAULT_OUT = ROOT / "toyworld" / "weights" / "toy_sd15.safetensors"
DEFAULT_WORK = ROOT / ".cache" / "toy_train"
DEFAULT_CN_OUT = ROOT / "toyworld" / "weights" / "toy_controlnet.safetensors"
VAE_STEPS = 500
VAE_LR = 3e-4
VAE_EDGE = 0.5


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", default="all", choices=["all", "vae", "encode", "unet", "export", "controlnet"])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--work", type=Path, default=DEFAULT_WORK)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vae-init", type=Path, default=None,
                   help="start the VAE from this toy model file's vae.* (a fine-tune) instead of seeded weights")
    p.add_argument("--vae-steps", type=int, default=VAE_STEPS)
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--vae-lr", type=float, default=VAE_LR)
    p.add_argument("--vae-decoder-only", action="store_true",
                   help="train only the decoder (the latents, and so a trained UNet, stay valid)")
    p.add_argument("--vae-edge", type=float, default=VAE_EDGE, help="weight of the edge (image-gradient) loss")
    p.add_argument("--data", type=int, default=12000, help="training images encoded for the UNet")
    p.add_argument("--unet-steps", type=int, default=8000)
    p.add_argument("--unet-init", type=Path, default=None,
                   help="start from the UNet of an earlier toy model file (a fine-tune) instead of seeded weights")
    p.add_argument("--unet-batch", type=int, default=32)
    p.add_argument("--unet-lr", type=float, default=3e-4)
    p.add_argument("--unet-lr-end", type=float, default=0.1, help="cosine decay to this share of --unet-lr")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--uncond-p", type=float, default=0.1)
    p.add_argument("--vae-max-minutes", type=float, default=0.0, help="stop the VAE stage early after this long")
    p.add_argument("--unet-max-minutes", type=float, default=0.0, help="stop the UNet stage early after this long")
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--toy-weights", type=Path, default=DEFAULT_OUT,
                   help="controlnet: the toy model whose UNet it serves")
    p.add_argument("--cn-out", type=Path, default=DEFAULT_CN_OUT)
    p.add_argument("--cn-steps", type=int, default=CN_STEPS)
    p.add_argument("--cn-batch", type=int, default=32)
    p.add_argument("--cn-lr", type=float, default=3e-4)
    p.add_argument("--cn-uncond-p", type=float, default=0.5,
                   help="controlnet: share of empty captions (the ControlNet paper's 50 %%, so the hint is learnt)")
    p.add_argument("--cn-max-minutes", type=float, default=0.0, help="stop the ControlNet stage early after this long")
    return p.parse_args(argv)


def setup_host():
    from conduit.host import find_host, import_host

    host = find_host()
    import_host(host)
    return host


def zero_last_layers(module: torch.nn.Module, names: tuple[str, ...]) -> None:
    """Zero the last layer of every residual branch, as SD's own init does, so training starts stable."""
    with torch.no_grad():
        for name, sub in module.named_modules():
            if name.endswith(names) and hasattr(sub, "weight"):
                sub.weight.zero_()
                if getattr(sub, "bias", None) is not None:
                    sub.bias.zero_()


def images_tensor(start: int, count: int, seed: int) -> torch.Tensor:
    from conduit_pack.toyworld import world

    imgs = np.stack([s.image for s in world.batch(start, count, seed, "train")])
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def progress(total: int, initial: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, mininterval=10.0, file=sys.stderr)


class Stopper:
    def __init__(self, minutes: float):
        self.deadline = time.time() + minutes * 60 if minutes > 0 else None

    def __call__(self) -> bool:
        return self.deadline is not None and time.time() > self.deadline


# ---------------------------------------------------------------- VAE
def new_vae(seed: int):
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from conduit_pack.toyworld import build

    ae = AutoencoderKL(ddconfig=dict(build.TINY_VAE_DDCONFIG), embed_dim=4)
    build.seeded_init_(ae, seed)
    zero_last_layers(ae, ("conv2",))
    return ae


def initial_vae(args):
    """Seeded weights, or (--vae-init) the VAE of an earlier toy model file: every shipped VAE since v2 is a
    fine-tune of the one before on its own world (docs/toy_world.md, Training recipe)."""
    ae = new_vae(args.seed + 2)
    if args.vae_init is not None:
        from safetensors.torch import load_file

        from conduit_pack.toyworld import demo_model as toy

        ae.load_state_dict(toy.split_state(load_file(str(args.vae_init)))["vae"], strict=True)
    return ae


def file_record(path: Path | None) -> dict | None:
    """An init file's name and hash for the recipe (the metadata says what a fine-tune started from)."""
    if path is None:
        return None
    import hashlib

    return {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16]}


def edge_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 between the images' finite differences (both directions): pixel losses alone let a small VAE trade a
    texture's edges for a blur of the right mean colour, and the textures are the edges."""
    dx = (rec[..., :, 1:] - rec[..., :, :-1]) - (x[..., :, 1:] - x[..., :, :-1])
    dy = (rec[..., 1:, :] - rec[..., :-1, :]) - (x[..., 1:, :] - x[..., :-1, :])
    return dx.abs().mean() + dy.abs().mean()


def vae_trained_parameters(ae, decoder_only: bool) -> list[torch.nn.Parameter]:
    """Everything, or (decoder_only) the decoder and post_quant_conv: the encoder, and so every latent the
    UNet was trained on, stays as it is."""
    if not decoder_only:
        return list(ae.parameters())
    for p in ae.parameters():
        p.requires_grad_(False)
    params = [*ae.decoder.parameters(), *ae.post_quant_conv.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def train_vae(args) -> None:
    path = args.work / "vae.pt"
    ae = initial_vae(args)
    opt = torch.optim.Adam(vae_trained_parameters(ae, args.vae_decoder_only), lr=args.vae_lr, betas=(0.9, 0.99))
    step = 0
    if path.exists():
        ck = torch.load(path, weights_only=True)
        ae.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step = ck["step"]
    if step >= args.vae_steps:
        return
    torch.manual_seed(args.seed * 7919 + step)
    stop = Stopper(args.vae_max_minutes)
    ae.train()
    bar = progress(args.vae_steps, step, "vae")
    recent = []
    while step < args.vae_steps:
        x = images_tensor(step * args.vae_batch, args.vae_batch, args.seed + 100)
        with torch.set_grad_enabled(not args.vae_decoder_only):
            z, reg = ae.encode(x, return_reg_log=True)
        rec = ae.decode(z)
        mse = (rec - x).pow(2).mean()
        loss = mse + 0.1 * (rec - x).abs().mean() + args.vae_edge * edge_loss(rec, x)
        if not args.vae_decoder_only:
            loss = loss + 1e-6 * reg["kl_loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        recent.append(mse.item())
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(mse=f"{np.mean(recent[-20:]):.4f}")
        if step % args.ckpt_every == 0 or step == args.vae_steps or stop():
            torch.save({"model": ae.state_dict(), "opt": opt.state_dict(), "step": step,
                        "mse": float(np.mean(recent[-50:])), "init": json.dumps(file_record(args.vae_init))}, path)
            log.info("vae step %d mse %.5f", step, np.mean(recent[-50:]))
        if stop():
            log.warning("vae stopped early at step %d (--vae-max-minutes)", step)
            break
    bar.close()


def rescaled_vae_state(ae, scale_factor: float, seed: int) -> tuple[dict, dict]:
    """Fold a per-channel affine into quant_conv/post_quant_conv so that latent*scale_factor ~ N(0, 1)."""
    x = images_tensor(0, 512, seed + 200)
    with torch.no_grad():
        moments = torch.cat([ae.quant_conv(ae.encoder(x[i:i + 64])) for i in range(0, len(x), 64)])
        mean = moments[:, :4]
        mu = mean.mean(dim=(0, 2, 3))
        sd = mean.std(dim=(0, 2, 3))
        s = 1.0 / (scale_factor * sd)  # new raw latent = s * (old - mu)
        state = {k: v.clone() for k, v in ae.state_dict().items()}
        qw, qb = state["quant_conv.weight"], state["quant_conv.bias"]
        qw[:4] *= s.view(4, 1, 1, 1)
        qb[:4] = (qb[:4] - mu) * s
        qb[4:] += 2.0 * torch.log(s)
        pw, pb = state["post_quant_conv.weight"], state["post_quant_conv.bias"]
        pb += (pw[:, :, 0, 0] * mu.view(1, 4)).sum(1)
        pw /= s.view(1, 4, 1, 1)
    return state, {"latent_mean_before": mu.tolist(), "latent_std_before": sd.tolist()}


def load_trained_vae(args):
    ae = new_vae(args.seed + 2)
    ck = torch.load(args.work / "vae.pt", weights_only=True)
    ae.load_state_dict(ck["model"])
    ae.eval()
    return ae, ck


# ---------------------------------------------------------------- text
def frozen_clip(seed: int):
    """The frozen random text encoder, rounded to fp16 so the shipped fp16 weights give the same outputs."""
    from conduit_pack.toyworld import build

    clip = build.build_clip("sd15", seed)
    sd = {k: v.half().float() for k, v in clip.cond_stage_model.state_dict().items()}
    clip.cond_stage_model.load_state_dict(sd)
    return clip


def encode_captions(clip, captions: list[str]) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for text in captions:
            cond, _ = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
            out.append(cond[0].float())
    return torch.stack(out)


# ---------------------------------------------------------------- encode
def encode_dataset(args) -> None:
    from conduit_pack.toyworld import world

    path = args.work / "latents.pt"
    if path.exists():
        return

    ae, _ = load_trained_vae(args)
    scale = 0.18215  # ComfyUI's SD15 latent_format.scale_factor
    state, stats = rescaled_vae_state(ae, scale, args.seed)
    ae.load_state_dict(state)
    captions = world.caption_variants()  # every training caption variant, "" last
    index = {c: i for i, c in enumerate(captions)}
    drops = list(world.CAPTION_DROP)
    means, stds, labels = [], [], []
    bar = progress(args.data, 0, "encode")
    chunk = 64
    with torch.no_grad():
        for start in range(0, args.data, chunk):
            n = min(chunk, args.data - start)
            samples = world.batch(start, n, args.seed + 300, "train")
            x = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            moments = ae.quant_conv(ae.encoder(x))
            means.append(moments[:, :4].half())
            stds.append(torch.exp(0.5 * moments[:, 4:].clamp(-30, 20)).half())
            labels.extend([index[world.caption_variant(s.spec, d)] for d in drops] for s in samples)
            bar.update(n)
    bar.close()
    clip = frozen_clip(args.seed + 1)
    ctx = encode_captions(clip, captions)
    all_lat = torch.cat(means).float()
    stats.update(latent_mean_after=all_lat.mean(dim=(0, 2, 3)).tolist(),
                 latent_std_after=(all_lat * scale).std(dim=(0, 2, 3)).tolist())
    log.info("latent stats %s", stats)
    # labels[i, k]: the caption of image i with the style words dropped as CAPTION_DROP's k-th key says
    torch.save({"mean": torch.cat(means), "std": torch.cat(stds), "labels": torch.tensor(labels),
                "drop_p": [world.CAPTION_DROP[d] for d in drops],
                "captions": captions, "ctx": ctx, "vae_state": state, "stats": stats,
                "clip_state": {k: v.half() for k, v in clip.cond_stage_model.state_dict().items()}}, path)


# ---------------------------------------------------------------- UNet
def _drop_p() -> list[float]:
    from conduit_pack.toyworld import world

    return list(world.CAPTION_DROP.values())


DROP_P: list[float] = []  # set by main() from world.CAPTION_DROP (the world module needs the pack imported)


def clone_layernorm_inputs(unet: torch.nn.Module) -> None:
    """ComfyUI's transformer blocks add in place (x += n) after LayerNorm saved x; train on a copy."""
    for m in unet.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.register_forward_pre_hook(lambda mod, a: (a[0].clone(),) + tuple(a[1:]))


def training_inputs(model, data: dict):
    """(ComfyUI's sigmas, the latent scale, the encoded set as draw_batch takes it) for the toy UNet."""
    return (model.model_sampling.sigmas.float(), float(model.latent_format.scale_factor),
            (data["mean"].float(), data["std"].float(), data["labels"], data["ctx"]))


def draw_batch(gen, encoded, count: int, batch: int, uncond_p: float, sigmas, scale: float):
    """One training draw from the first `count` encoded images: (idx, x0, context, sigma, noise); each
    caption a variant drawn with world.CAPTION_DROP's shares (style words kept or dropped), then a share
    uncond_p replaced by the empty one (the last row of ctx)."""
    mean, std, labels, ctx = encoded
    idx = torch.randint(0, count, (batch,), generator=gen)
    z = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)
    x0 = z * scale  # latent_format.process_in
    drop_p = torch.tensor(DROP_P)
    variant = torch.multinomial(drop_p, batch, replacement=True, generator=gen)
    cap = labels[idx, variant].clone()
    cap[torch.rand(batch, generator=gen) < uncond_p] = len(ctx) - 1  # the "" caption
    t = torch.randint(0, len(sigmas), (batch,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    return idx, x0, ctx[cap], sigmas[t], noise


def eps_loss(model, x0, sigma, noise, c, control=None) -> torch.Tensor:
    """The model's own epsilon objective on ComfyUI's schedule; control: residuals for the UNet, or None."""
    xn = x0 + noise * sigma.view(-1, 1, 1, 1)
    denoised = model.apply_model(xn, sigma, c_crossattn=c, control=control(xn) if control is not None else None)
    eps = (xn - denoised) / sigma.view(-1, 1, 1, 1)
    return (eps - noise).pow(2).mean()


def optimizer_step(opt, params, loss: torch.Tensor, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def unet_lr(args, step: int) -> float:
    """200-step linear warm-up, then a cosine decay to --unet-lr-end x --unet-lr at --unet-steps."""
    import math

    warm = min(1.0, (step + 1) / 200)
    progress_ = min(1.0, step / max(args.unet_steps, 1))
    end = args.unet_lr_end
    return args.unet_lr * warm * (end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress_)))


def train_unet(args) -> None:
    from conduit_pack.toyworld import build

    data = torch.load(args.work / "latents.pt", weights_only=True)
    from conduit_pack.toyworld import demo_model as toy

    mp = build.build_unet(toy.FAMILY, args.seed)
    model = mp.model
    unet = model.diffusion_model
    zero_last_layers(unet, ("out.2", "out_layers.3", "proj_out"))
    if args.unet_init is not None:  # a fine-tune of an earlier toy model's UNet (its EMA weights)
        from safetensors.torch import load_file

        unet.load_state_dict(toy.split_state(load_file(str(args.unet_init)))["unet"], strict=True)
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    opt = torch.optim.AdamW(unet.parameters(), lr=args.unet_lr, betas=(0.9, 0.99), weight_decay=0.0)
    path = args.work / "unet.pt"
    step = 0
    if path.exists():
        ck = torch.load(path, weights_only=True)
        unet.load_state_dict(ck["model"])
        ema = ck["ema"]
        opt.load_state_dict(ck["opt"])
        step = ck["step"]
    if step >= args.unet_steps:
        return
    clone_layernorm_inputs(unet)
    sigmas, scale, encoded = training_inputs(model, data)
    n = len(data["labels"])
    gen = torch.Generator().manual_seed(args.seed * 104729 + step)
    stop = Stopper(args.unet_max_minutes)
    unet.train()
    bar = progress(args.unet_steps, step, "unet")
    recent = []
    last_ckpt = time.time()
    while step < args.unet_steps:
        _, x0, c, sigma, noise = draw_batch(gen, encoded, n, args.unet_batch, args.uncond_p, sigmas, scale)
        loss = eps_loss(model, x0, sigma, noise, c)
        optimizer_step(opt, unet.parameters(), loss, unet_lr(args, step))
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in unet.state_dict().items():
                if v.dtype.is_floating_point:
                    ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
                else:
                    ema[k].copy_(v)
        recent.append(loss.item())
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(recent[-100:]):.4f}")
        if step % args.ckpt_every == 0 or step == args.unet_steps or stop() or time.time() - last_ckpt > 300:
            torch.save({"model": unet.state_dict(), "ema": ema, "opt": opt.state_dict(), "step": step,
                        "loss": float(np.mean(recent[-200:]))}, path)
            export(args, data=data, ema=ema, unet_step=step, unet_loss=float(np.mean(recent[-200:])))
            last_ckpt = time.time()
            log.info("unet step %d loss %.5f", step, np.mean(recent[-200:]))
        if stop():
            log.warning("unet stopped early at step %d (--unet-max-minutes)", step)
            break
    bar.close()


# ---------------------------------------------------------------- ControlNet
CN_STEPS = 500
CN_VAL = 128  # fixed validation draws (samples, t, noise) for the loss with and without the ControlNet
CN_SEED_OFFSET = 5


def silhouettes(data: dict, seed: int) -> torch.Tensor:
    """Hints [N, 1, 64, 64] of the encoded training images (encode_dataset's stream: index i = latent i)."""
    from conduit_pack.toyworld import world

    specs = [world.spec_at(i, seed, "train") for i in range(len(data["labels"]))]
    if any(data["captions"][int(data["labels"][i, 0])] != specs[i].caption for i in range(0, len(specs), 97)):
        raise SystemExit("latents.pt does not hold the --seed training stream: re-run --stage encode")
    return torch.from_numpy(np.stack([world.shape_mask(spec) for spec in specs]))[:, None]


def new_controlnet(unet: torch.nn.Module, seed: int) -> torch.nn.Module:
    """ComfyUI's ControlNet for the toy topology: encoder and middle block copied from the UNet, zero
    convolutions, hint encoder seeded with its last conv at zero (the ControlNet paper's init)."""
    from conduit_pack.toyworld import build
    from conduit_pack.toyworld import demo_model as toy

    control = build.build_controlnet(toy.FAMILY, seed).control_model
    own = control.state_dict()
    copied = {k: v for k, v in unet.state_dict().items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in copied and not k.startswith(("zero_convs.", "middle_block_out.",
                                                                        "input_hint_block."))]
    if missing:
        raise RuntimeError(f"ControlNet keys not found in the UNet: {missing[:5]}")
    control.load_state_dict(copied, strict=False)
    last_hint = f"input_hint_block.{max(int(k.split('.')[1]) for k in own if k.startswith('input_hint_block.'))}"
    with torch.no_grad():
        for name, sub in control.named_modules():
            if (name.startswith(("zero_convs.", "middle_block_out.")) or name == last_hint) and hasattr(sub, "weight"):
                sub.weight.zero_()
                sub.bias.zero_()
    return control


def control_residuals(control, ms, xn, sigma, hint, c) -> dict:
    """What comfy.controlnet.ControlNet.get_control hands the UNet (strength 1): input scaled and timestep
    from the model's sampling, down residuals in 'output', the middle one in 'middle'."""
    outs = control(x=ms.calculate_input(sigma, xn), hint=hint, timesteps=ms.timestep(sigma).float(), context=c)
    return {"input": [], "middle": [outs[-1]], "output": list(outs[:-1])}


def cn_loss(model, control, x0, sigma, noise, hint, c) -> torch.Tensor:
    residuals = None if control is None else (
        lambda xn: control_residuals(control, model.model_sampling, xn, sigma, hint, c))
    return eps_loss(model, x0, sigma, noise, c, residuals)


def train_controlnet(args) -> None:
    from safetensors.torch import load_file
    from conduit_pack.toyworld import build
    from conduit_pack.toyworld import demo_model as toy

    data = torch.load(args.work / "latents.pt", weights_only=True)
    parts = toy.split_state(load_file(str(args.toy_weights)))
    if any(not torch.equal(parts["vae"][k], v.float()) for k, v in data["vae_state"].items()):
        raise SystemExit(f"{args.work / 'latents.pt'} was encoded with another VAE than {args.toy_weights}; "
                         "re-run --stage encode with that model's VAE checkpoint")
    fingerprint = toy.unet_fingerprint(parts["unet"])
    mp = build.build_unet(toy.FAMILY, state_dict=parts["unet"])
    model = mp.model
    unet = model.diffusion_model
    unet.requires_grad_(False)
    seed = args.seed + CN_SEED_OFFSET
    control = new_controlnet(unet, seed)
    opt = torch.optim.AdamW(control.parameters(), lr=args.cn_lr, betas=(0.9, 0.99), weight_decay=0.0)
    path = args.work / "controlnet.pt"
    step, history = 0, {}
    if path.exists():
        ck = torch.load(path, weights_only=True)
        if ck.get("unet_fingerprint") == fingerprint:
            control.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            step, history = ck["step"], json.loads(ck.get("history", "{}"))
        else:
            log.warning("%s belongs to another toy UNet: training the ControlNet from scratch", path)
    # ComfyUI's transformer blocks add in place after LayerNorm; gradients flow through both networks
    clone_layernorm_inputs(unet)
    clone_layernorm_inputs(control)
    sigmas, scale, encoded = training_inputs(model, data)
    n = len(data["labels"])
    mean, std, labels, ctx = encoded
    t0 = time.time()
    hints = silhouettes(data, args.seed + 300)
    log.info("controlnet: %d silhouettes in %.1f s", n, time.time() - t0)

    # fixed validation draws from the end of the set: captioned, loss with vs without the ControlNet
    vgen = torch.Generator().manual_seed(seed * 7 + 1)
    vidx = torch.arange(n - CN_VAL, n)
    val = dict(x0=(mean[vidx] + std[vidx] * torch.randn(mean[vidx].shape, generator=vgen)) * scale,
               sigma=sigmas[torch.randint(0, len(sigmas), (CN_VAL,), generator=vgen)],
               noise=torch.randn(mean[vidx].shape, generator=vgen), hint=hints[vidx].expand(-1, 3, -1, -1),
               c=ctx[labels[vidx, 0]])

    def val_loss(with_control: bool) -> float:
        with torch.no_grad():
            return float(np.mean([cn_loss(model, control if with_control else None,
                                          *(val[k][i:i + 32] for k in ("x0", "sigma", "noise", "hint", "c"))).item()
                                  for i in range(0, CN_VAL, 32)]))

    if "val_without" not in history:
        history["val_without"] = val_loss(False)
    if step >= args.cn_steps:
        export_controlnet(args, control, step, history, fingerprint)
        return
    gen = torch.Generator().manual_seed(seed * 104729 + step)
    stop = Stopper(args.cn_max_minutes)
    control.train()
    bar = progress(args.cn_steps, step, "controlnet")
    recent = []
    last_ckpt = time.time()
    while step < args.cn_steps:
        idx, x0, c, sigma, noise = draw_batch(gen, encoded, n - CN_VAL, args.cn_batch, args.cn_uncond_p, sigmas, scale)
        loss = cn_loss(model, control, x0, sigma, noise, hints[idx].expand(-1, 3, -1, -1), c)
        optimizer_step(opt, control.parameters(), loss, args.cn_lr * min(1.0, (step + 1) / 50))
        step += 1
        recent.append(loss.item())
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(recent[-100:]):.4f}")
        if step % args.ckpt_every == 0 or step == args.cn_steps or stop() or time.time() - last_ckpt > 300:
            history["loss"] = float(np.mean(recent[-200:]))
            control.eval()
            history["val_with"] = val_loss(True)
            control.train()
            torch.save({"model": control.state_dict(), "opt": opt.state_dict(), "step": step,
                        "unet_fingerprint": fingerprint, "history": json.dumps(history)}, path)
            export_controlnet(args, control, step, history, fingerprint)
            last_ckpt = time.time()
            log.info("controlnet step %d loss %.5f val %.5f (without ControlNet %.5f)", step, history["loss"],
                     history["val_with"], history["val_without"])
        if stop():
            log.warning("controlnet stopped early at step %d (--cn-max-minutes)", step)
            break
    bar.close()


def export_controlnet(args, control, step: int, history: dict, fingerprint: str) -> None:
    from safetensors.torch import save_file

    from conduit_pack.toyworld import demo_model as toy
    from conduit_pack.toyworld import world

    recipe = {
        "model": "Conduit toy ControlNet (demo only): ComfyUI ControlNet for the toy UNet, hint = shape silhouette",
        "hint": "64x64 RGB, the shape's coverage white on black (toy.world.silhouette)", "world": world.VERSION,
        "seed": args.seed + CN_SEED_OFFSET, "toy_recipe_unet": toy.read_recipe(str(args.toy_weights)).get("unet"),
        "unet_fingerprint": fingerprint,
        "controlnet": {"steps": step, "batch": args.cn_batch, "lr": args.cn_lr, "uncond_p": args.cn_uncond_p,
                       "init": "UNet encoder + middle block, zero convs"},
        "loss": history.get("loss"), "val_loss_with": history.get("val_with"),
        "val_loss_without": history.get("val_without"),
    }
    tensors = {k: v.detach().float().contiguous() for k, v in control.state_dict().items()}
    args.cn_out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.cn_out.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"conduit_toy_recipe": json.dumps(recipe)})
    os.replace(tmp, args.cn_out)
    log.info("wrote %s (%.1f MB)", args.cn_out, args.cn_out.stat().st_size / 2**20)


# ---------------------------------------------------------------- export
def export(args, data=None, ema=None, unet_step=None, unet_loss=None) -> None:
    from safetensors.torch import save_file

    from conduit_pack.toyworld import build, world
    from conduit_pack.toyworld import demo_model as toy

    data = data if data is not None else torch.load(args.work / "latents.pt", weights_only=True)
    if ema is None:
        ck = torch.load(args.work / "unet.pt", weights_only=True)
        ema, unet_step, unet_loss = ck["ema"], ck["step"], ck["loss"]
    vae_ck = torch.load(args.work / "vae.pt", weights_only=True)
    tensors = {}
    tensors.update({f"unet.{k}": v.float().contiguous() for k, v in ema.items()})
    tensors.update({f"vae.{k}": v.float().contiguous() for k, v in data["vae_state"].items()})
    tensors.update({f"clip.{k}": v.half().contiguous() for k, v in data["clip_state"].items()})
    recipe = {
        "model": "Conduit toy model (demo only): SD1.5-shaped tiny UNet, tiny KL VAE, frozen random tiny CLIP",
        "image_size": 64, "seed": args.seed, "world": world.VERSION,
        "world_settings": {"scene_p": world.SCENE_P, "caption_drop": world.CAPTION_DROP,
                           "scenes": list(world.SCENES), "checker_cell": world.CHECK,
                           "speckle_block": world.SPECKLE, "dot_radius": world.DOT_RADIUS,
                           "texture_anchor": "shape centre", "radius": list(world.RADIUS)},
        "vae": {"steps": vae_ck["step"], "batch": args.vae_batch, "lr": args.vae_lr, "edge": args.vae_edge,
                "mse": vae_ck.get("mse"),
                "init": json.loads(vae_ck.get("init", "null"))},
        "data": args.data,
        "unet_topology": {k: v for k, v in build.FAMILIES[toy.FAMILY].items() if isinstance(v, (int, list))},
        "unet": {"steps": unet_step, "target_steps": args.unet_steps, "batch": args.unet_batch,
                 "lr": args.unet_lr, "lr_end": args.unet_lr_end, "schedule": "warm-up 200, cosine",
                 "ema": args.ema, "uncond_p": args.uncond_p, "loss": unet_loss,
                 "init": file_record(args.unet_init)},
        "latent_stats": data["stats"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"conduit_toy_recipe": json.dumps(recipe)})
    os.replace(tmp, args.out)
    log.info("wrote %s (%.1f MB)", args.out, args.out.stat().st_size / 2**20)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    setup_host()
    DROP_P[:] = _drop_p()
    stages = ["vae", "encode", "unet", "export"] if args.stage == "all" else [args.stage]
    for stage in stages:
        t0 = time.time()
        {"vae": train_vae, "encode": encode_dataset, "unet": train_unet, "export": export,
         "controlnet": train_controlnet}[stage](args)
        log.info("stage %s done in %.1f min", stage, (time.time() - t0) / 60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
