"""A stand-in for other packs' attention patches (test-only, never shipped).

It does what sd-perturbed-attention and core PerturbedAttentionGuidance do, written independently of Conduit:
- `short_key_pag`: a post-CFG function that runs one extra cond pass with an identity attention (each token
  attends only to itself, so the output is v) set under the short key `(block, id)` on a copy of the model
  options, and adds `scale * (cond - perturbed)`;
- `full_key_pag`: the same term with the identity attention set under the full key `(block, id, index)` for
  the pass: the oracle, since nothing can shadow a full-key replace set last;
- `short_key_permanent`: a permanent short-key replace (attention at a changed temperature), as a pack that
  calls `set_model_attn1_replace(fn, block, id)` installs it.
"""
from __future__ import annotations


PAG_LAYERS = (("middle", 0),)


def identity_attention(q, k, v, extra_options, mask=None):
    return v


def _with_replace(model_options: dict, fn, name: str, key: tuple) -> dict:
    """A copy of model_options with patches_replace[name][key] = fn (the 2024 host has no helper for it)."""
    mo = dict(model_options)
    to = dict(mo.get("transformer_options", {}))
    pr = dict(to.get("patches_replace", {}))
    slot = dict(pr.get(name, {}))
    slot[key] = fn
    pr[name] = slot
    to["patches_replace"] = pr
    mo["transformer_options"] = to
    return mo


def _cond_prediction(model, cond, x, sigma, model_options):
    import comfy.samplers

    if hasattr(comfy.samplers, "calc_cond_batch"):
        return comfy.samplers.calc_cond_batch(model, [cond], x, sigma, model_options)[0]
    return comfy.samplers.calc_cond_uncond_batch(model, cond, None, x, sigma, model_options)[0]


def _pag(model_patcher, scale: float, layers, index: int | None):
    m = model_patcher.clone()

    def post_cfg(args):
        mo = args["model_options"]
        for block, block_id in layers:
            key = (block, block_id) if index is None else (block, block_id, index)
            mo = _with_replace(mo, identity_attention, "attn1", key)
        perturbed = _cond_prediction(args["model"], args["cond"], args["input"], args["sigma"], mo)
        return args["denoised"] + (args["cond_denoised"] - perturbed) * scale

    m.set_model_sampler_post_cfg_function(post_cfg, disable_cfg1_optimization=True)
    return m


def short_key_pag(model_patcher, scale: float = 3.0, layers=PAG_LAYERS):
    return _pag(model_patcher, scale, layers, None)


def full_key_pag(model_patcher, scale: float = 3.0, layers=PAG_LAYERS, index: int = 0):
    return _pag(model_patcher, scale, layers, index)


def short_key_permanent(model_patcher, temperature: float = 2.0, layers=PAG_LAYERS):
    from comfy.ldm.modules.attention import optimized_attention

    def hot_attention(q, k, v, extra_options):
        return optimized_attention(q * temperature, k, v, extra_options["n_heads"])

    m = model_patcher.clone()
    for block, block_id in layers:
        m.set_model_attn1_replace(hot_attention, block, block_id)
    return m


class ConduitTestShortKeyPAG:
    """Server-tier stand-in for a pack that perturbs attention under the short key in its own extra pass."""
    CATEGORY = "conduit/testing"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "scale": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 100.0}),
                             "key": (["short", "full"],)}}

    def patch(self, model, scale: float, key: str):
        return ((short_key_pag if key == "short" else full_key_pag)(model, scale),)
