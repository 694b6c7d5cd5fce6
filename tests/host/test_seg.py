"""Smoothed Energy Guidance on ComfyUI's real sampler: hand-computed guidance, invariants, composition."""
import math

import pytest
import torch
import torch.nn.functional as F

from conduit import testing
import conduit  # noqa: F401  (registers conduit_pack for the imports below)

import conduit_pack.patches.seg.guidance as seg
import conduit_pack.patches.engine.host as compat
import conduit_pack.patches.engine.layers as layers_mod
import conduit_pack.patches.engine.errors as errors
import conduit_pack.nodes.seg as node_mod
import conduit_pack.patches.engine.layer_select  # noqa: E402
NODE = node_mod.ConduitSmoothedEnergyGuidance


# -- independent oracle: the official blur recipe as a dense conv, then ComfyUI's own attention -------------
def oracle_blur_grid(grid: torch.Tensor, sigma: float) -> torch.Tensor:
    b, c, h, w = grid.shape
    if sigma < 0:
        return grid.mean(dim=(2, 3), keepdim=True).expand_as(grid)
    if sigma == 0:
        return grid
    k0 = math.ceil(6 * sigma)
    k0 += 1 - k0 % 2
    ks = [min(k0, s if s % 2 else s + 1) for s in (h, w)]
    taps = []
    for k in ks:
        x = torch.linspace(-(k - 1) / 2, (k - 1) / 2, k, dtype=torch.float64)
        g = torch.exp(-0.5 * (x / sigma) ** 2)
        taps.append(g / g.sum())
    kernel = torch.outer(*taps).to(grid.dtype).expand(c, 1, *ks)
    padded = F.pad(grid, (ks[1] // 2, ks[1] // 2, ks[0] // 2, ks[0] // 2), mode="reflect")
    return F.conv2d(padded, kernel, groups=c)


def plain_attention(q, k, v, extra):
    from comfy.ldm.modules.attention import optimized_attention

    return optimized_attention(q, k, v, extra["n_heads"])


def oracle_replace(layer, sigma, inner):
    def fn(q, k, v, extra):
        h0, w0 = extra["original_shape"][-2:]
        h, w = layer.grid((h0, w0))
        grid = q.transpose(1, 2).reshape(q.shape[0], q.shape[2], h, w)
        qb = oracle_blur_grid(grid, sigma).reshape(q.shape[0], q.shape[2], h * w).transpose(1, 2)
        return inner(qb.contiguous(), k, v, extra)
    return fn


def oracle_blurred_pass(args, chosen, sigma):
    """The positive prompt through ComfyUI with blurred queries, in front of whatever ComfyUI would call."""
    opts = args["model_options"]
    for layer in chosen:
        to = dict(opts.get("transformer_options", {}))
        pr = dict(to.get("patches_replace", {}))
        slot = dict(pr.get("attn1", {}))
        inner = slot.get(layer.key, slot.get(layer.key[:2], plain_attention))
        slot[layer.key] = oracle_replace(layer, sigma, inner)
        pr["attn1"] = slot
        to["patches_replace"] = pr
        opts = dict(opts, transformer_options=to)
    return compat.calc_cond_batch(args["model"], [args["cond"]], args["input"], args["sigma"], opts)[0]


class Recorder:
    """Post-CFG functions around SEG's: its input, its output, and the oracle's blurred prediction."""

    def __init__(self, chosen, sigma):
        self.chosen, self.sigma = chosen, sigma
        self.steps = []

    def __deepcopy__(self, memo):
        return self  # ModelPatcher.clone deep-copies model_options; keep one recorder

    def before(self, args):
        self.steps.append({k: args[k] for k in ("denoised", "cond_denoised", "input", "sigma")})
        return args["denoised"]

    def after(self, args):
        step = self.steps[-1]
        step["seg"] = args["denoised"]
        step["blurred"] = oracle_blurred_pass(args, self.chosen, self.sigma)
        return args["denoised"]


def seg_between_recorders(base, settings, sigma_oracle=None):
    chosen = [l for l in layers_mod.attention_layers(base) if l.block == "middle"] \
        if settings.layers in ("middle", "auto") else None  # auto is the mid block on UNets
    if chosen is None:
        chosen = conduit_pack.patches.engine.layer_select.select_layers(
            layers_mod.attention_layers(base), settings.layers, settings.custom_layers, "t")
    sig = settings.sigma if sigma_oracle is None else sigma_oracle
    rec = Recorder(chosen, -1.0 if (sig < 0 or math.isinf(sig)) else sig)
    m = base.clone()
    m.set_model_sampler_post_cfg_function(rec.before)
    m = seg.apply_seg(m, settings)
    m.set_model_sampler_post_cfg_function(rec.after)
    return m, rec


def assert_hand_computation(rec, scale, rel=2e-5):
    assert rec.steps, "SEG never ran"
    for st in rec.steps:
        want = st["denoised"] + scale * (st["cond_denoised"] - st["blurred"])
        err = float((st["seg"] - want).abs().max())
        term = float((st["seg"] - st["denoised"]).abs().max())
        print(f"hand computation: error {err:.3g}, SEG term {term:.3g}, |x0| {float(want.abs().max()):.3g}")
        assert err <= rel * float(want.abs().max()) + 1e-6
        assert term > 20 * err and term > 1e-4  # the SEG term is not negligible


class ForwardCounter:
    """Counts UNet forwards and input-block-0 runs (the shared prefix runs once per step when forked)."""

    def __init__(self, unet):
        self.forwards = self.prefix = 0
        self.middle_rows = []
        self.handles = [unet.register_forward_pre_hook(self._fwd),
                        unet.input_blocks[0][0].register_forward_pre_hook(self._pre),
                        unet.middle_block[-1].register_forward_hook(self._mid)]

    def _fwd(self, m, a):
        self.forwards += 1

    def _pre(self, m, a):
        self.prefix += 1

    def _mid(self, m, a, out):
        self.middle_rows.append(out.shape[0])

    def close(self):
        for h in self.handles:
            h.remove()


@pytest.fixture(scope="module")
def tinies(tiny_sdxl, tiny_sd15):
    return {"sdxl": tiny_sdxl, "sd15": tiny_sd15}


# -- guidance = hand computation on the real sampler ------------------------------------------------------
@pytest.mark.parametrize("family,cfg,batch,sampler,sigma", [
    ("sdxl", 5.0, 1, "euler", -1.0),
    ("sdxl", 1.0, 1, "euler", 2.0),
    ("sdxl", 4.0, 3, "dpmpp_2m", 1.0),
    ("sdxl", 1.0, 3, "dpmpp_2m", -1.0),
    ("sd15", 5.0, 1, "dpmpp_2m", 0.7),
    ("sd15", 1.0, 3, "euler", -1.0),
    ("sd15", 3.0, 3, "euler", 100.0),
])
def test_guidance_equals_hand_computation(tinies, family, cfg, batch, sampler, sigma):
    t = tinies[family]
    m, rec = seg_between_recorders(t.model, seg.SegSettings(scale=3.0, sigma=sigma))
    pos, neg = t.cond(batch=batch), t.cond(batch=batch, seed=1)
    testing.sample(m, pos, neg, batch=batch, steps=3, cfg=cfg, sampler=sampler)
    assert_hand_computation(rec, 3.0)
    if cfg == 1.0:  # cfg 1: ComfyUI's own shortcut leaves the uncond out, denoised is cond itself
        for st in rec.steps:
            assert torch.equal(st["denoised"], st["cond_denoised"])


@pytest.mark.parametrize("latent_hw", [(20, 36), (27, 45), (44, 16)])
def test_non_square_and_odd_latents(tiny_sdxl, latent_hw):
    m, rec = seg_between_recorders(tiny_sdxl.model, seg.SegSettings(scale=2.0, sigma=3.0, layers="all"))
    c = tiny_sdxl.cond(width=latent_hw[1] * 8, height=latent_hw[0] * 8)
    testing.sample(m, c, tiny_sdxl.cond(seed=1), latent_hw=latent_hw, steps=2, cfg=4.0)
    assert_hand_computation(rec, 2.0)


def test_output_preset_and_custom_list_fork_in_the_output_half(tiny_sdxl):
    for settings in (seg.SegSettings(sigma=5.0, layers="output"),
                     seg.SegSettings(sigma=-1.0, layers="custom", custom_layers="o2,o4-5")):
        m, rec = seg_between_recorders(tiny_sdxl.model, settings)
        counter = ForwardCounter(tiny_sdxl.model.model.diffusion_model)
        try:
            testing.sample(m, tiny_sdxl.cond(), tiny_sdxl.cond(seed=1), steps=2, cfg=5.0)
        finally:
            counter.close()
        assert_hand_computation(rec, settings.scale)
        assert counter.prefix == 2 * 2  # main pass + the recorder's oracle pass, per step; none for SEG


# -- prefix sharing ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [5.0, 1.0])
def test_prefix_is_shared_with_the_main_pass(tiny_sdxl, cfg):
    unet = tiny_sdxl.model.model.diffusion_model
    runs = {}
    for share in (True, False):
        m = seg.apply_seg(tiny_sdxl.model, seg.SegSettings(sigma=2.0, share_prefix=share))
        counter = ForwardCounter(unet)
        try:
            runs[share] = testing.sample(m, tiny_sdxl.cond(batch=2), tiny_sdxl.cond(batch=2, seed=1), batch=2,
                                         steps=3, cfg=cfg)
        finally:
            counter.close()
        runs[(share, "count")] = (counter.forwards, counter.prefix, counter.middle_rows)
    main_rows = 4 if cfg != 1.0 else 2
    assert runs[(True, "count")] == (3, 3, [main_rows + 2] * 3)
    assert runs[(False, "count")] == (6, 6, [main_rows, 2] * 3)
    scale = float(runs[False].abs().max())
    assert (runs[True] - runs[False]).abs().max() <= 1e-4 * scale


def test_fork_twins_match_separate_pass_at_the_same_input(tiny_sd15):
    """At the first step (same x), the blurred prediction the fork serves equals the ordinary extra pass."""
    seen = {}
    for share in (True, False):
        m, rec = seg_between_recorders(tiny_sd15.model, seg.SegSettings(sigma=-1.0, share_prefix=share))
        testing.sample(m, tiny_sd15.cond(batch=3), tiny_sd15.cond(batch=3, seed=1), batch=3, steps=2, cfg=3.0)
        seen[share] = rec.steps[0]
    a, b = seen[True], seen[False]
    assert torch.equal(a["input"], b["input"])
    # The forked pass runs the later blocks on a bigger batch, so BLAS may block the sums differently:
    # equal up to rounding, not bit for bit, on every CPU.
    scale = float(b["cond_denoised"].abs().max())
    assert (a["cond_denoised"] - b["cond_denoised"]).abs().max() <= 2e-5 * scale
    blur_a = a["cond_denoised"] - (a["seg"] - a["denoised"]) / 3.0
    blur_b = b["cond_denoised"] - (b["seg"] - b["denoised"]) / 3.0
    assert (blur_a - blur_b).abs().max() <= 2e-5 * float(blur_b.abs().max())
    assert not torch.equal(blur_a, a["cond_denoised"])


# -- invariants -------------------------------------------------------------------------------------------
def test_scale_zero_is_bit_identical_to_vanilla(tiny_sdxl):
    pos, neg = tiny_sdxl.cond(), tiny_sdxl.cond(seed=1)
    for cfg in (5.0, 1.0):
        vanilla = testing.sample(tiny_sdxl.model, pos, neg, steps=3, cfg=cfg)
        m = NODE().patch(tiny_sdxl.model, 0.0, -1.0, 0.0, 1.0, "middle", "", 0.0)[0]
        assert torch.equal(testing.sample(m, pos, neg, steps=3, cfg=cfg), vanilla)


@pytest.mark.parametrize("sigma", [0.0, 0.1, 0.15])
def test_sigma_to_zero_equals_vanilla(tiny_sd15, sigma):
    pos, neg = tiny_sd15.cond(), tiny_sd15.cond(seed=1)
    vanilla = testing.sample(tiny_sd15.model, pos, neg, steps=3, cfg=5.0)
    m = seg.apply_seg(tiny_sd15.model, seg.SegSettings(scale=3.0, sigma=sigma, layers="all"))
    out = testing.sample(m, pos, neg, steps=3, cfg=5.0)
    assert (out - vanilla).abs().max() <= 1e-4 * float(vanilla.abs().max())


def test_original_model_untouched_and_no_hooks_left(tiny_sdxl):
    base = tiny_sdxl.model
    unet = base.model.diffusion_model
    pos, neg = tiny_sdxl.cond(), tiny_sdxl.cond(seed=1)
    before = testing.sample(base, pos, neg, steps=2)
    snapshot = repr(base.model_options)
    m = seg.apply_seg(base, seg.SegSettings(sigma=3.0, rescale=0.5))
    patched = testing.sample(m, pos, neg, steps=2)
    assert not torch.equal(patched, before)
    assert repr(base.model_options) == snapshot
    assert all(not mod._forward_pre_hooks and not mod._forward_hooks for mod in unet.modules())
    assert torch.equal(testing.sample(base, pos, neg, steps=2), before)


def test_deterministic(tiny_sdxl):
    m = seg.apply_seg(tiny_sdxl.model, seg.SegSettings(sigma=4.0))
    pos, neg = tiny_sdxl.cond(batch=3), tiny_sdxl.cond(batch=3, seed=1)
    a = testing.sample(m, pos, neg, batch=3, steps=3, sampler="dpmpp_2m")
    b = testing.sample(m, pos, neg, batch=3, steps=3, sampler="dpmpp_2m")
    assert torch.equal(a, b)


def test_window_and_rescale(tiny_sd15):
    """Outside start/end the step is vanilla; inside, Lin et al.'s rescale of the guided prediction."""
    m, rec = seg_between_recorders(tiny_sd15.model, seg.SegSettings(sigma=-1.0, start_percent=0.5, rescale=0.7))
    testing.sample(m, tiny_sd15.cond(), tiny_sd15.cond(seed=1), steps=4, cfg=5.0)
    assert len(rec.steps) == 4
    std = lambda e: e.std(dim=(1, 2, 3), keepdim=True)  # noqa: E731
    for i, st in enumerate(rec.steps):
        if i < 2:
            assert torch.equal(st["seg"], st["denoised"])
            continue
        x, c = st["input"], st["cond_denoised"]
        guided = st["denoised"] + 3.0 * (c - st["blurred"])
        e = x - guided
        want = x - e * (0.7 * std(x - c) / std(e) + 0.3)
        assert (st["seg"] - want).abs().max() <= 2e-5 * float(want.abs().max())


# -- errors -----------------------------------------------------------------------------------------------
def test_wrong_family_and_bad_inputs_name_the_node(tiny_sdxl):
    fake = tiny_sdxl.model.clone()
    fake.model = torch.nn.Module()
    with pytest.raises(errors.ConduitError, match=r"\[Conduit Smoothed Energy Guidance\].*not supported"):
        NODE().patch(fake, 3.0, -1.0, 0.0, 1.0, "middle", "", 0.0)
    with pytest.raises(errors.ConduitError, match=r"'o9'"):
        NODE().patch(tiny_sdxl.model, 3.0, -1.0, 0.0, 1.0, "custom", "m0,o9", 0.0)
    with pytest.raises(errors.ConduitError, match=r"'q1'"):
        NODE().patch(tiny_sdxl.model, 3.0, -1.0, 0.0, 1.0, "custom", "q1", 0.0)
    with pytest.raises(errors.ConduitError, match="start_percent"):
        NODE().patch(tiny_sdxl.model, 3.0, -1.0, 0.8, 0.2, "middle", "", 0.0)


def test_node_interface():
    spec = NODE.INPUT_TYPES()["required"]
    assert all("tooltip" in opts[1] for opts in spec.values())
    assert spec["scale"][1]["default"] == 3.0 and spec["blur_sigma"][1]["default"] == -1.0
    # saved workflows hold the old choices, so they must all still be there; auto (the family default) is new
    assert spec["layers"][0] == ["auto", "middle", "output", "input", "all", "double", "single", "custom"]
    assert spec["layers"][1]["default"] == "auto"
    assert NODE.CATEGORY == "conduit/guidance" and NODE.RETURN_TYPES == ("MODEL",)
    assert node_mod.ConduitSmoothedEnergyGuidance.DISPLAY_NAME == "Conduit Smoothed Energy Guidance"


def test_node_accepts_inf_sigma(tiny_sd15):
    pos, neg = tiny_sd15.cond(), tiny_sd15.cond(seed=1)
    a = testing.sample(NODE().patch(tiny_sd15.model, 3.0, math.inf, 0.0, 1.0, "middle", "", 0.0)[0], pos, neg, steps=2)
    b = testing.sample(NODE().patch(tiny_sd15.model, 3.0, -1.0, 0.0, 1.0, "middle", "", 0.0)[0], pos, neg, steps=2)
    assert torch.equal(a, b)


# -- composition ------------------------------------------------------------------------------------------
class ForeignReplace:
    """Another pack's attn1 replace: plain attention scaled by 0.9, counting the rows it sees."""

    def __init__(self):
        self.rows = []

    def __deepcopy__(self, memo):
        return self

    def __call__(self, q, k, v, extra):
        self.rows.append(q.shape[0])
        return plain_attention(q, k, v, extra) * 0.9


@pytest.mark.parametrize("order", ["foreign_first", "seg_first"])
def test_chains_to_another_packs_replace_at_the_same_layer(tiny_sdxl, order):
    foreign = ForeignReplace()
    base = tiny_sdxl.model.clone()
    if order == "foreign_first":
        base.set_model_attn1_replace(foreign, "middle", 0, 0)
        m, rec = seg_between_recorders(base, seg.SegSettings(sigma=1.5))
    else:
        m, rec = seg_between_recorders(base, seg.SegSettings(sigma=1.5))
        m.set_model_attn1_replace(foreign, "middle", 0, 0)
    testing.sample(m, tiny_sdxl.cond(), tiny_sdxl.cond(seed=1), steps=2, cfg=5.0)
    assert_hand_computation(rec, 3.0)
    assert 3 in foreign.rows  # main pass + twin row went through the foreign function together


def test_composes_with_controlnet(tiny_sdxl):
    import nodes
    from conduit_pack.toyworld import build

    cn = build.build_controlnet("sdxl", seed=3)
    hint = torch.rand(1, 256, 256, 3, generator=torch.Generator().manual_seed(0))
    pos = nodes.ControlNetApply().apply_controlnet(tiny_sdxl.cond(), cn, hint, 0.8)[0]
    m, rec = seg_between_recorders(tiny_sdxl.model, seg.SegSettings(sigma=-1.0))
    counter = ForwardCounter(tiny_sdxl.model.model.diffusion_model)
    try:
        out = testing.sample(m, pos, tiny_sdxl.cond(seed=1), steps=2, cfg=5.0)
    finally:
        counter.close()
    assert_hand_computation(rec, 3.0)
    m_plain, rec_plain = seg_between_recorders(tiny_sdxl.model, seg.SegSettings(sigma=-1.0))
    assert not torch.equal(out, testing.sample(m_plain, tiny_sdxl.cond(), tiny_sdxl.cond(seed=1), steps=2))
    assert counter.middle_rows[0] == 3  # forked main pass, ControlNet middle residual widened


def test_multi_entry_cond_with_area(tiny_sd15):
    import nodes

    c = tiny_sd15.cond()
    area = nodes.ConditioningSetArea().append(tiny_sd15.cond(seed=5), 128, 128, 64, 64, 0.7)[0]
    pos = nodes.ConditioningCombine().combine(c, area)[0]
    m, rec = seg_between_recorders(tiny_sd15.model, seg.SegSettings(sigma=2.0))
    testing.sample(m, pos, tiny_sd15.cond(seed=1), steps=2, cfg=5.0)
    assert_hand_computation(rec, 3.0)


def pag(model, scale):
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance as P

    if hasattr(P, "execute"):
        out = P.execute(model, scale)
        return out[0] if isinstance(out, tuple) else out.result[0]
    return P().patch(model, scale)[0]


@pytest.mark.parametrize("order", ["pag_first", "seg_first"])
def test_composes_with_comfyui_pag_node(tiny_sdxl, host, order):
    try:
        import comfy_extras.nodes_pag  # noqa: F401
    except ImportError:
        pytest.skip(f"{host.describe()} has no PerturbedAttentionGuidance node (added to ComfyUI after it)")
    pos, neg = tiny_sdxl.cond(), tiny_sdxl.cond(seed=1)
    base = pag(tiny_sdxl.model, 2.0) if order == "pag_first" else tiny_sdxl.model
    m, rec = seg_between_recorders(base, seg.SegSettings(sigma=-1.0))
    if order == "seg_first":
        m = pag(m, 2.0)
    counter = ForwardCounter(tiny_sdxl.model.model.diffusion_model)
    try:
        both = testing.sample(m, pos, neg, steps=2, cfg=5.0)
    finally:
        counter.close()
    assert_hand_computation(rec, 3.0)
    # per step: forked main pass, PAG's own pass, the recorder's oracle pass; PAG's pass is not forked
    assert counter.forwards == 2 * 3 and counter.middle_rows.count(3) == 2
    seg_only, _ = seg_between_recorders(tiny_sdxl.model, seg.SegSettings(sigma=-1.0))
    assert not torch.equal(both, testing.sample(seg_only, pos, neg, steps=2, cfg=5.0))


# -- infinite blur: one query per image -------------------------------------------------------------------
def test_infinite_blur_attends_one_query_and_equals_full_attention(monkeypatch):
    import comfy.ldm.modules.attention as cattn

    import conduit_pack.patches.seg.blur_attention as sa
    import conduit_pack.patches.engine.attention as attention
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 48, 32, generator=g) for _ in range(3))
    extra = {"n_heads": 2, "original_shape": [3, 4, 12, 16]}
    mean_q = q.mean(dim=1, keepdim=True).expand_as(q).contiguous()
    full = plain_attention(mean_q, k, v, extra)
    seen = []
    real = cattn.optimized_attention
    monkeypatch.setattr(cattn, "optimized_attention", lambda q_, k_, v_, h, *a, **kw: seen.append(q_.shape[1])
                        or real(q_, k_, v_, h, *a, **kw))
    fast = sa.blurred_attention(-1.0)(attention.default_attention)(q, k, v, extra)
    assert seen == [1] and fast.shape == q.shape
    assert torch.allclose(fast, full, atol=1e-5)
    seen.clear()
    forked = sa.blurred_attention(-1.0, first_row=2, rows=3)(attention.default_attention)(q, k, v, extra)
    assert sorted(seen) == [1, 48]
    assert torch.allclose(forked[:2], plain_attention(q[:2], k[:2], v[:2], extra), atol=1e-6)
    assert torch.allclose(forked[2:], full[2:], atol=1e-5)
    foreign = ForeignReplace()
    out = sa.blurred_attention(-1.0)(foreign)(q, k, v, extra)
    assert foreign.rows == [3] and torch.allclose(out, 0.9 * full, atol=1e-5)  # all 48 queries for others
    assert torch.equal(sa.blurred_attention(-1.0, rows=5)(foreign)(q, k, v, extra), foreign(q, k, v, extra))


@pytest.mark.parametrize("order,cfg", [("style_first", 5.0), ("seg_first", 5.0), ("seg_first", 1.0)])
def test_composes_with_conduit_balanced_style(tiny_sdxl, order, cfg):
    """SEG with Conduit's style injection (reference rows in the batch, attn1 replaces on every layer)."""
    import conduit_pack.patches.conditional_balance.style as bs
    import conduit_pack.patches.conditional_balance.reference as rb
    from tests.host.cb_helpers import hand_table, ref_latent

    def style(model):
        return bs.apply_balanced_style(model, hand_table(model), rb.NoisedReference(ref_latent(), 3),
                                       bs.StyleSettings(1.0))

    pos, neg = tiny_sdxl.cond(), tiny_sdxl.cond(seed=1)
    if order == "style_first":
        m, rec = seg_between_recorders(style(tiny_sdxl.model), seg.SegSettings(sigma=2.0))
    else:
        m, rec = seg_between_recorders(tiny_sdxl.model, seg.SegSettings(sigma=2.0))
        m = style(m)
    counter = ForwardCounter(tiny_sdxl.model.model.diffusion_model)
    try:
        both = testing.sample(m, pos, neg, steps=2, cfg=cfg)
    finally:
        counter.close()
    assert_hand_computation(rec, 3.0)
    seg_only, _ = seg_between_recorders(tiny_sdxl.model, seg.SegSettings(sigma=2.0))
    assert not torch.equal(both, testing.sample(seg_only, pos, neg, steps=2, cfg=cfg))
    # style rows: [ref, image] per chunk. SEG applied after the style forks inside it (twin chunk = ref + image);
    # applied before it, SEG's wrapper sees the batch without references and runs the separate pass (at cfg 1
    # that batch of 1 + 1 reference has the twin's row count: the fork must still not take place)
    forked = order == "style_first"
    assert counter.middle_rows[0] == {(True, 5.0): 6, (False, 5.0): 4, (False, 1.0): 2}[(forked, cfg)]
    off = seg.SegSettings(scale=0.0)
    m0, rec0 = seg_between_recorders(style(tiny_sdxl.model), off) if forked else seg_between_recorders(
        tiny_sdxl.model, off)
    testing.sample(m0 if forked else style(m0), pos, neg, steps=1, cfg=cfg)
    first, plain = rec.steps[0]["cond_denoised"], rec0.steps[0]["cond_denoised"]
    assert (first - plain).abs().max() <= 1e-4 * float(plain.abs().max())  # the main pass is the style's own
