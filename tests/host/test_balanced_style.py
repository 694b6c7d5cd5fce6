"""Conduit Balanced Style on a real ComfyUI: StyleAligned oracle, per-step layer selection, reference branch,
invariants (lambda_S = 0, untouched original, determinism), batching of cond/uncond, node errors."""
import math

import pytest
import torch

from conduit import testing
import conduit  # noqa: F401  (registers conduit_pack for the imports below)
from tests.host.cb_helpers import K_RANKS, Q_RANKS, TABLE_T, hand_table, ref_latent, tiny_keys

import conduit_pack.patches.conditional_balance.style as bs
import conduit_pack.patches.conditional_balance.reference as rb
import conduit_pack.patches.tables.table as tables
import conduit_pack.patches.engine.host as compat
import conduit_pack.patches.engine.errors as errors
import conduit_pack.nodes.conditional_balance as cbn
import conduit_pack.patches.engine.attention  # noqa: E402


def expected_sets(model, sigma, n, timesteps=TABLE_T, q_ranks=Q_RANKS, k_ranks=K_RANKS):
    """Independent selection: nearest table timestep to the model timestep, then the hand ranking's first n."""
    keys = tiny_keys(model)
    t = float(compat.model_sampling(model).timestep(torch.tensor([sigma])).flatten()[0])
    row = min(range(len(timesteps)), key=lambda i: abs(timesteps[i] - t))
    return {keys[i] for i in q_ranks[row][:n]}, {keys[i] for i in k_ranks[row][:n]}


def patched(model, strength=1.0, seed=3, table=None, **kw):
    settings = bs.StyleSettings(strength, **kw)
    return bs.apply_balanced_style(model, table or hand_table(model), rb.NoisedReference(ref_latent(), seed),
                                   settings)


# ---- independent StyleAligned (official expand_first semantics, one chunk, reference = row 0) ------------------

def stylealigned(adain_q=True, adain_k=True, share=True):
    """One layer's StyleAligned attention with the chosen parts."""

    def attn(q, k, v, extra):
        heads = extra["n_heads"]

        def stats(x):
            return x.mean(1, keepdim=True), (x.var(1, keepdim=True) + 1e-5).sqrt()

        def adain(x):
            m, s = stats(x)
            rm, rs = stats(x[:1])
            return (x - m) / s * rs + rm

        if adain_q:
            q = adain(q)
        if adain_k:
            k = adain(k)
        if share:
            k = torch.cat([k, k[:1].expand_as(k)], 1)
            v = torch.cat([v, v[:1].expand_as(v)], 1)
        b, n, c = q.shape
        d = c // heads
        qh = q.view(b, n, heads, d).permute(0, 2, 1, 3)
        kh = k.view(b, -1, heads, d).permute(0, 2, 1, 3)
        vh = v.view(b, -1, heads, d).permute(0, 2, 1, 3)
        w = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)
        return (w @ vh).permute(0, 2, 1, 3).reshape(b, n, c)
    return attn


stylealigned_attn = stylealigned()


@torch.no_grad()
def independent_denoise(tm, x, sigma, cond, ref_seed, noise_seed, replaces=None):
    """The reference row and the image in one batch; replaces maps layer key -> attn1 function (default:
    full StyleAligned on every layer); layers not in it run ComfyUI's own attention."""
    base = tm.model.model
    ctx, extra = cond[0]
    y = base.encode_adm(**extra, device=x.device)
    ref_in = base.process_latent_in(ref_latent(ref_seed, tuple(x.shape[-2:])))
    noise = torch.randn(ref_in.shape, generator=torch.Generator().manual_seed(noise_seed))
    xb = torch.cat([ref_in + sigma * noise, x])
    if replaces is None:
        replaces = {k: stylealigned_attn for k in tiny_keys(tm.model)}
    to = {"patches_replace": {"attn1": dict(replaces)}, "cond_or_uncond": [0], "sigmas": torch.tensor([sigma])}
    kw = {} if y is None else {"y": torch.cat([y, y])}
    out = base.apply_model(xb, torch.tensor([sigma, sigma]), c_crossattn=torch.cat([ctx, ctx]),
                           transformer_options=to, **kw)
    return out[1:]


def one_step_to_zero(model, pos, neg, sigma, hw, cfg, seed=11):
    """Euler from sigma to 0 returns the guided denoised prediction itself."""
    import comfy.samplers

    latent = torch.zeros(1, 4, *hw)
    return testing.sample_custom(model, pos, neg, comfy.samplers.sampler_object("euler"),
                                 torch.tensor([sigma, 0.0]), latent, cfg=cfg, seed=seed)


@pytest.mark.parametrize("cfg,hw", [(1.0, (32, 32)), (4.0, (32, 32)), (4.0, (24, 40))])
def test_full_strength_equals_independent_stylealigned(tiny_sdxl, cfg, hw):
    """lambda_S = 1 on every layer is StyleAligned: AdaIN q/k to the reference + shared reference K/V."""
    sigma = 3.0
    pos = tiny_sdxl.cond(width=hw[1] * 8, height=hw[0] * 8)
    neg = tiny_sdxl.cond(seed=1, width=hw[1] * 8, height=hw[0] * 8)
    m = bs.apply_balanced_style(tiny_sdxl.model, hand_table(tiny_sdxl.model),
                                rb.NoisedReference(ref_latent(5, hw), 3), bs.StyleSettings(1.0))
    got = one_step_to_zero(m, pos, neg, sigma, hw, cfg)
    x = sigma * testing.noise_for((1, 4, *hw), 11)
    dc = independent_denoise(tiny_sdxl, x, sigma, pos, 5, 3)
    du = independent_denoise(tiny_sdxl, x, sigma, neg, 5, 3)
    want = tiny_sdxl.model.model.process_latent_out(du + cfg * (dc - du) if cfg != 1.0 else dc)
    vanilla = one_step_to_zero(tiny_sdxl.model, pos, neg, sigma, hw, cfg)
    assert (want - vanilla).abs().max() > 1e-2  # the oracle itself is not vanilla
    assert torch.allclose(got, want, atol=1e-3, rtol=1e-4), (got - want).abs().max()


def recording_model(tiny, calls):
    """A clone with another pack's attn1 replace on every layer (ours must chain to it); it records calls."""
    m = tiny.model.clone()
    for key in tiny_keys(m):
        def rec(q, k, v, extra, key=key):
            calls.append((float(extra["sigmas"].flatten()[0]), key, q.shape[0], q.shape[1], k.shape[1]))
            return conduit_pack.patches.engine.attention.default_attention(q, k, v, extra)
        m.set_model_attn1_replace(rec, *key)
    return m


@pytest.mark.parametrize("mode", ["q", "k", "share"])
def test_layer_selection_per_step_matches_hand_ranked_table(tiny_sdxl, mode):
    calls = []
    base = recording_model(tiny_sdxl, calls)
    flags = {"adain_q": mode == "q", "adain_k": mode == "k", "share": mode == "share"}
    m = patched(base, 0.5, **flags)
    c, n = tiny_sdxl.cond(batch=2), tiny_sdxl.cond(batch=2, seed=1)
    testing.sample(m, c, n, batch=2, steps=6, cfg=4.0)
    sigmas = sorted({s for s, *_ in calls}, reverse=True)
    assert len(sigmas) == 6
    for sigma in sigmas:
        q_set, k_set = expected_sets(base, sigma, 4)
        want = {"q": q_set, "k": k_set, "share": q_set | k_set}[mode]
        mine = [cl for cl in calls if cl[0] == sigma]
        assert {cl[2] for cl in mine} <= {6, 4, 2}  # 2 chunks x (reference + 2 images), or split up
        if mode == "share":
            styled = {cl[1] for cl in mine if cl[4] > cl[3]}
        else:
            styled = {cl[1] for cl in mine if cl[2] == 4}  # targets apart from the references
        assert styled == want, (sigma, styled, want)
        for cl in mine:
            if cl[1] not in want:
                assert cl[2] == 6 and cl[3] == cl[4]


def unet_inputs(model):
    """Record every UNet forward: (rows, timestep, x before input scaling) through a forward pre-hook."""
    seen = []

    def hook(module, args, kwargs):
        xc, t = args[0], args[1] if len(args) > 1 else kwargs["timesteps"]
        sigma = float(kwargs["transformer_options"]["sigmas"].flatten()[0])
        seen.append((xc.shape[0], float(t[0]), xc.detach().clone(), sigma))

    return seen, model.model.diffusion_model.register_forward_pre_hook(hook, with_kwargs=True)


def test_reference_noised_with_one_fixed_noise_and_never_in_output(tiny_sdxl):
    m = patched(tiny_sdxl.model, 1.0, seed=9)
    seen, handle = unet_inputs(tiny_sdxl.model)
    try:
        c, n = tiny_sdxl.cond(batch=3), tiny_sdxl.cond(batch=3, seed=1)
        out = testing.sample(m, c, n, batch=3, steps=3, cfg=4.0)
    finally:
        handle.remove()
    assert out.shape[0] == 3
    base = tiny_sdxl.model.model
    clean = base.process_latent_in(ref_latent())
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(9))
    assert [s[0] for s in seen] == [8, 8, 8]  # 2 chunks x (1 reference + 3 images)
    for _rows, _, xc, sigma in seen:
        ref_x = xc[[0, 4]] * math.sqrt(sigma ** 2 + 1.0)  # undo calculate_input
        want = clean + sigma * noise
        assert torch.allclose(ref_x, want.expand_as(ref_x), atol=1e-4)


def test_strength_zero_is_bit_identical_and_original_untouched(tiny_sdxl):
    c, n = tiny_sdxl.cond(), tiny_sdxl.cond(seed=1)
    before = dict(tiny_sdxl.model.model_options)
    vanilla = testing.sample(tiny_sdxl.model, c, n, steps=3)
    zero = patched(tiny_sdxl.model, 0.0)
    assert torch.equal(testing.sample(zero, c, n, steps=3), vanilla)
    m = patched(tiny_sdxl.model, 0.43)
    a = testing.sample(m, c, n, steps=3)
    b = testing.sample(m, c, n, steps=3)
    assert torch.equal(a, b)  # deterministic
    assert (a - vanilla).abs().max() > 1e-3
    assert tiny_sdxl.model.model_options == before
    assert torch.equal(testing.sample(tiny_sdxl.model, c, n, steps=3), vanilla)


def test_outside_the_window_nothing_changes(tiny_sdxl):
    c, n = tiny_sdxl.cond(), tiny_sdxl.cond(seed=1)
    seen, handle = unet_inputs(tiny_sdxl.model)
    try:
        m = patched(tiny_sdxl.model, 1.0, start_percent=0.4, end_percent=1.0)
        testing.sample(m, c, n, steps=4, cfg=4.0)
    finally:
        handle.remove()
    ms = compat.model_sampling(tiny_sdxl.model)
    import conduit_pack.patches.engine.steps as steps
    for rows, _, _, sigma in seen:
        inside = steps.sigma_to_percent(ms, sigma) >= 0.4
        assert rows == (4 if inside else 2)
    assert {r for r, *_ in seen} == {2, 4}
    off = patched(tiny_sdxl.model, 1.0, adain_q=False, adain_k=False, share=False)
    assert torch.equal(testing.sample(off, c, n, steps=2), testing.sample(tiny_sdxl.model, c, n, steps=2))


def test_cond_and_uncond_run_separately_give_the_same_result(tiny_sdxl, monkeypatch):
    """ComfyUI splits cond/uncond when memory is short (the anchor port's 1024 px failure); ours follows."""
    c, n = tiny_sdxl.cond(batch=2), tiny_sdxl.cond(batch=2, seed=1)
    m = patched(tiny_sdxl.model, 0.5)
    together = testing.sample(m, c, n, batch=2, steps=3, cfg=4.0)
    seen, handle = unet_inputs(tiny_sdxl.model)
    monkeypatch.setattr(tiny_sdxl.model.model, "memory_required", lambda input_shape=None, **kw: 1e30)
    try:
        apart = testing.sample(m, c, n, batch=2, steps=3, cfg=4.0)
    finally:
        handle.remove()
    assert {r for r, *_ in seen} == {3}  # one chunk per call: reference + 2 images
    assert torch.allclose(together, apart, atol=1e-3, rtol=1e-4)
    assert (together - testing.sample(tiny_sdxl.model, c, n, batch=2, steps=3, cfg=4.0)).abs().max() > 1e-3


def test_second_application_is_refused(tiny_sdxl):
    m = patched(tiny_sdxl.model, 0.5)
    with pytest.raises(errors.ConduitError, match="one Conduit Balanced Style node per model"):
        patched(m, 0.5)
    assert not tiny_sdxl.model.model_options.get(bs.MARKER)


def test_chains_inside_an_existing_unet_wrapper(tiny_sdxl):
    """Another pack's model_function_wrapper still sees the batch without references."""
    sizes = []
    base = tiny_sdxl.model.clone()

    def other(apply_model, args):
        sizes.append(args["input"].shape[0])
        return apply_model(args["input"], args["timestep"], **args["c"])

    base.set_model_unet_function_wrapper(other)
    c, n = tiny_sdxl.cond(), tiny_sdxl.cond(seed=1)
    m = patched(base, 1.0)
    out = testing.sample(m, c, n, steps=2, cfg=4.0)
    assert sizes == [2, 2]
    plain = testing.sample(patched(tiny_sdxl.model, 1.0), c, n, steps=2, cfg=4.0)
    assert torch.allclose(out, plain, atol=1e-5)


def center_crop_bilinear(lat, h, w):
    """Independent resize: cut the source's centre to the target's aspect, then bilinear with half-pixel
    centres (align_corners=False, no antialias)."""
    sh, sw = lat.shape[-2:]
    if sw * h < w * sh:  # target is wider: keep the middle rows
        keep = round(sw * h / w)
        top = (sh - keep) // 2
        lat = lat[..., top:top + keep, :]
    elif sw * h > w * sh:  # target is taller: keep the middle columns
        keep = round(sh * w / h)
        left = (sw - keep) // 2
        lat = lat[..., left:left + keep]
    return torch.nn.functional.interpolate(lat, size=(h, w), mode="bilinear", align_corners=False)


def test_non_square_latent_with_resized_reference_and_cfg1(tiny_sdxl):
    """The 32x32 reference reaches the UNet at a 25x40 latent as its centre 20x32 rows, bilinearly resized,
    plus sigma times the seed's noise at that size; with cfg 1 (cond chunk only) and cfg 4."""
    hw = (25, 40)
    c, n = tiny_sdxl.cond(width=320, height=200), tiny_sdxl.cond(seed=1, width=320, height=200)
    m = patched(tiny_sdxl.model, 0.5, seed=3)
    base = tiny_sdxl.model.model
    clean = base.process_latent_in(center_crop_bilinear(ref_latent(), *hw))
    stretched = base.process_latent_in(torch.nn.functional.interpolate(ref_latent(), size=hw, mode="bilinear"))
    assert (clean - stretched).abs().max() > 0.05  # the crop matters at this aspect
    noise = torch.randn(1, 4, *hw, generator=torch.Generator().manual_seed(3))
    for cfg in (1.0, 4.0):
        seen, handle = unet_inputs(tiny_sdxl.model)
        try:
            out = testing.sample(m, c, n, latent_hw=hw, steps=3, cfg=cfg)
        finally:
            handle.remove()
        assert len(seen) == 3
        for rows, _, xc, sigma in seen:
            assert xc.shape[-2:] == hw and rows in (2, 4)  # chunks of (reference, image)
            ref_x = xc[0::2] * math.sqrt(sigma ** 2 + 1.0)  # undo calculate_input
            want = (clean + sigma * noise).expand_as(ref_x)
            assert torch.allclose(ref_x, want, atol=1e-4), (cfg, sigma, (ref_x - want).abs().max())
        vanilla = testing.sample(tiny_sdxl.model, c, n, latent_hw=hw, steps=3, cfg=cfg)
        assert out.shape == (1, 4, *hw) and torch.isfinite(out).all()
        assert (out - vanilla).abs().max() > 1e-3


def test_inversion_path_is_deterministic_and_starts_from_the_latent(tiny_sdxl):
    c, n = tiny_sdxl.cond(), tiny_sdxl.cond(seed=1)
    ref = rb.InvertedReference(ref_latent(), 3)
    m = bs.apply_balanced_style(tiny_sdxl.model, hand_table(tiny_sdxl.model), ref, bs.StyleSettings(0.5))
    seen, handle = unet_inputs(tiny_sdxl.model)
    try:
        a = testing.sample(m, c, n, steps=3, cfg=4.0)
        b = testing.sample(m, c, n, steps=3, cfg=4.0)
    finally:
        handle.remove()
    assert torch.equal(a, b)
    # each run: 3 single-row inversion calls per chunk kind, then 3 steps of 2 chunks x (ref + image)
    rows = [r for r, *_ in seen]
    assert rows == ([1, 1, 1, 1, 1, 1] + [4, 4, 4]) * 2
    # independent Euler inversion for the cond chunk with the documented grid: 0, then geometric to sigma_max
    base = tiny_sdxl.model.model
    ms = compat.model_sampling(tiny_sdxl.model)
    top = seen[6][3]
    grid = [0.0] + torch.logspace(math.log10(float(ms.sigma_min)), math.log10(top), 3).tolist()
    grid[-1] = top
    ctx, extra = c[0]
    y = base.encode_adm(**extra, device="cpu")
    x = base.process_latent_in(ref_latent())
    for s0, s1 in zip(grid[:-1], grid[1:]):
        se = max(s0, float(ms.sigma_min))
        d = base.apply_model(x, torch.tensor([se]), c_crossattn=ctx, y=y,
                             transformer_options={"cond_or_uncond": [0], "sigmas": torch.tensor([se])})
        x = x + (s1 - s0) * (x - d) / se
    first = seen[6]
    assert first[0] == 4
    cond_ref_row = 2  # chunks run [uncond, cond]: the cond chunk's reference is row 2
    assert torch.allclose(first[2][cond_ref_row:cond_ref_row + 1] * math.sqrt(top ** 2 + 1), x, atol=1e-3, rtol=1e-4)


def test_node_errors_and_image_reference(tiny_sdxl, tiny_sd15):
    node = cbn.ConduitBalancedStyle()
    args = dict(style_strength=0.43, adain_queries=True, adain_keys=True, share_attention=True,
                reference_attention_scale=1.0, reference_attention_shift=0.0, start_percent=0.0,
                end_percent=1.0, noise_seed=0, inversion_steps=0)
    lat = {"samples": ref_latent()}
    with pytest.raises(errors.ConduitError, match="Sensitivity Analysis"):
        node.patch(tiny_sdxl.model, reference_latent=lat, **args)  # shipped SDXL table has 70 layers, tiny 8
    with pytest.raises(errors.ConduitError, match="no shipped style_qk sensitivity table.*sd15"):
        node.patch(tiny_sd15.model, reference_latent=lat, **args)
    with pytest.raises(errors.ConduitError, match="no style reference"):
        node.patch(tiny_sdxl.model, **args)
    with pytest.raises(errors.ConduitError, match="one image"):
        node.patch(tiny_sdxl.model, reference_latent={"samples": torch.zeros(2, 4, 8, 8)}, **args)
    with pytest.raises(errors.ConduitError, match="vae"):
        node.patch(tiny_sdxl.model, reference_image=torch.zeros(1, 64, 64, 3), **args)
    from conduit_pack.toyworld import build

    table = hand_table(tiny_sdxl.model)
    img = torch.rand(1, 64, 48, 3, generator=torch.Generator().manual_seed(0))
    (m,) = node.patch(tiny_sdxl.model, reference_image=img, vae=build.build_vae(), sensitivity_table=table, **args)
    c, n = tiny_sdxl.cond(), tiny_sdxl.cond(seed=1)
    out = testing.sample(m, c, n, steps=2)
    assert torch.isfinite(out).all() and (out - testing.sample(tiny_sdxl.model, c, n, steps=2)).abs().max() > 1e-3


CB_BLOCKS = [("input", 4, 2), ("input", 5, 2), ("input", 7, 10), ("input", 8, 10), ("output", 0, 10),
             ("output", 1, 10), ("output", 2, 10), ("output", 3, 2), ("output", 4, 2), ("output", 5, 2),
             ("middle", 0, 10)]  # the official table's layer order (diffusers: down, up, mid last)


def cb_index_to_key(i):
    for block, block_id, depth in CB_BLOCKS:
        if i < depth:
            return (block, block_id, i)
        i -= depth
    raise IndexError


def test_shipped_sdxl_table_selection_matches_official_ranking():
    """Appendix A of the CB spec: t=981 q and t=1 k rankings, first 30 (lambda_S = 0.43) of 70 layers."""
    table = tables.table_for_family("sdxl", "style_qk", "t")
    q981 = [42, 41, 20, 21, 40, 43, 22, 39, 38, 19, 18, 23, 45, 47, 46, 37, 17, 48, 49, 51, 50, 52, 44, 53, 3, 16,
            36, 55, 56, 60]
    k1 = [41, 42, 43, 39, 40, 55, 38, 13, 3, 37, 57, 11, 58, 12, 59, 45, 5, 10, 48, 4, 36, 56, 54, 44, 46, 47, 8,
          9, 49, 21]
    sel = bs.LayerSelector(table, 0.43)
    q, _ = sel.at(999)  # ComfyUI's first timestep maps to the nearest stored one, 981
    _, k = sel.at(0)
    assert q == {cb_index_to_key(i) for i in q981}
    assert k == {cb_index_to_key(i) for i in k1}


SD15_T = [800, 200]
SD15_Q = [[6, 2, 4, 0, 1, 3, 5], [0, 5, 1, 6, 2, 3, 4]]  # most style-sensitive first, per table row
SD15_K = [[3, 6, 1, 2, 0, 4, 5], [2, 4, 0, 1, 3, 5, 6]]


def sd15_table(keys):
    def scores(ranks):
        rows = []
        for order in ranks:
            row = [0.0] * len(keys)
            for pos, layer in enumerate(order):
                row[layer] = 0.1 + 0.05 * pos  # lower = more sensitive
            rows.append(row)
        return torch.tensor(rows, dtype=torch.float64)
    return tables.SensitivityTable("sd15", "style", keys, list(SD15_T), {"q": scores(SD15_Q), "k": scores(SD15_K)})


def test_sd15_with_its_own_table(tiny_sd15):
    """Any family works with a table made for it (the analysis node's output; SD1.5 has no shipped table): at
    lambda_S = 0.3 (2 of 7 layers per feature) each step styles exactly the layers its table row names, and the
    guided prediction equals an independent StyleAligned applied on those layers only (AdaIN q on the q
    layers, AdaIN k on the k layers, shared reference K/V on their union)."""
    keys = tiny_keys(tiny_sd15.model)
    assert len(keys) == 7
    table = sd15_table(keys)
    sets = lambda model, sigma: expected_sets(model, sigma, 2, SD15_T, SD15_Q, SD15_K)  # noqa: E731

    # 1. which layers act, per step of a real run (another pack's replace records what reaches it)
    calls = []
    base = recording_model(tiny_sd15, calls)
    m = bs.apply_balanced_style(base, table, rb.NoisedReference(ref_latent(), 0), bs.StyleSettings(0.3))
    c, n = tiny_sd15.cond(), tiny_sd15.cond(seed=1)
    testing.sample(m, c, n, steps=6, cfg=4.0)
    sigmas = sorted({cl[0] for cl in calls}, reverse=True)
    assert len(sigmas) == 6
    seen_unions = set()
    for sigma in sigmas:
        q_set, k_set = sets(base, sigma)
        mine = [cl for cl in calls if cl[0] == sigma]
        shared = {cl[1] for cl in mine if cl[4] > cl[3]}  # the reference's keys appended
        assert shared == q_set | k_set, (sigma, shared, q_set | k_set)
        for cl in mine:
            if cl[1] not in q_set | k_set:
                assert cl[2] == 4 and cl[3] == cl[4]  # 2 chunks x (reference + image), untouched
        seen_unions.add(frozenset(q_set | k_set))
    assert len(seen_unions) == 2  # both table rows were used

    # 2. the guided prediction at one sigma per table row against the independent computation
    m = bs.apply_balanced_style(tiny_sd15.model, table, rb.NoisedReference(ref_latent(), 0), bs.StyleSettings(0.3))
    hw, cfg = (32, 32), 4.0
    for sigma in (3.0, 0.5):
        q_set, k_set = sets(tiny_sd15.model, sigma)
        replaces = {key: stylealigned(key in q_set, key in k_set, True) for key in q_set | k_set}
        x = sigma * testing.noise_for((1, 4, *hw), 11)
        dc = independent_denoise(tiny_sd15, x, sigma, c, 5, 0, replaces)
        du = independent_denoise(tiny_sd15, x, sigma, n, 5, 0, replaces)
        want = tiny_sd15.model.model.process_latent_out(du + cfg * (dc - du))
        got = one_step_to_zero(m, c, n, sigma, hw, cfg)
        vanilla = one_step_to_zero(tiny_sd15.model, c, n, sigma, hw, cfg)
        everywhere = {key: stylealigned_attn for key in keys}
        dc_all = independent_denoise(tiny_sd15, x, sigma, c, 5, 0, everywhere)
        du_all = independent_denoise(tiny_sd15, x, sigma, n, 5, 0, everywhere)
        all_layers = tiny_sd15.model.model.process_latent_out(du_all + cfg * (dc_all - du_all))
        assert (want - vanilla).abs().max() > 1e-2 and (want - all_layers).abs().max() > 1e-2, sigma
        assert torch.allclose(got, want, atol=1e-3, rtol=1e-4), (sigma, (got - want).abs().max())
