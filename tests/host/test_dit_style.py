"""Balanced Style, sensitivity analysis and Selective LoRA on DiTs (SD3/SD3.5 joint blocks, Flux) on a real ComfyUI:
the shipped SD3.5-Large table on its 38-block topology, per-step block selection by the official SD3.5 rule,
any batch and split cond/uncond, lambda_S 0 bit-identical, chaining with core SkipLayerGuidanceDiT, Flux with an
analysis table (and the error without one), the analysis's table format and key names, LoRA on table blocks."""
import pytest
import torch

from conduit import testing
import conduit  # noqa: F401  (registers conduit_pack for the imports below)
from toyworld.dit_build import build_dit, dit_available, dit_conditioning

import conduit_pack.nodes.conditional_balance as cbn
import conduit_pack.patches.conditional_balance.dit_style as dit_style
import conduit_pack.patches.conditional_balance.reference as rb
import conduit_pack.patches.conditional_balance.selective_lora as sl
import conduit_pack.patches.conditional_balance.style as bs
import conduit_pack.patches.engine.errors as errors
import conduit_pack.patches.engine.host as compat
import conduit_pack.patches.tables.analysis as an
import conduit_pack.patches.tables.table as tables

OK, WHY = dit_available()
pytestmark = pytest.mark.skipif(not OK, reason=f"DiT tests need SD3/Flux classes: {WHY}")

HW = (16, 16)  # latent: an 8 x 8 token grid at patch size 2
TABLE_T = [950, 600, 250]  # sigma * 1000
# hand rankings of the tiny SD3's 4 joint blocks, most style-sensitive first, per table row
RANKS = {"q": [[1, 0, 2, 3], [3, 2, 1, 0], [0, 3, 2, 1]],
         "k": [[1, 2, 3, 0], [0, 1, 3, 2], [3, 0, 1, 2]],
         "v": [[2, 1, 0, 3], [1, 3, 0, 2], [0, 2, 3, 1]]}
KEYS4 = [("double_block", i, 0) for i in range(4)]


def hand_table(family="sd3", keys=KEYS4, ranks=RANKS):
    def scores(order_rows):
        out = torch.zeros(len(order_rows), len(keys), dtype=torch.float64)
        for r, order in enumerate(order_rows):
            for pos, col in enumerate(order):
                out[r, col] = 0.1 + 0.05 * pos
        return out

    return tables.SensitivityTable(family, "style", list(keys), list(TABLE_T), {f: scores(r) for f, r in ranks.items()})


@pytest.fixture(scope="module")
def sd3():
    return build_dit("sd3", 0)


@pytest.fixture(scope="module")
def flux():
    return build_dit("flux", 0)


def conds(name="sd3", batch=1):
    return dit_conditioning(name, batch, 1), dit_conditioning(name, batch, 2, guidance=None)


def ref_latent(seed=5):
    return torch.randn(1, 16, *HW, generator=torch.Generator().manual_seed(seed))


def run(model, name="sd3", batch=1, cfg=4.0, steps=3, seed=0):
    pos, neg = conds(name)
    return testing.sample(model, pos, neg, latent=torch.zeros(batch, 16, *HW), steps=steps, cfg=cfg, seed=seed)


def styled(model, strength=0.5, table=None, seed=3, **kw):
    return bs.apply_balanced_style(model, table or hand_table(), rb.NoisedReference(ref_latent(), seed),
                                   bs.StyleSettings(strength, **kw))


def node_patch(model, strength=0.5, table=None, shift=0.0):
    return cbn.ConduitBalancedStyle().patch(model, strength, True, True, True, 1.0, shift, 0.0, 1.0, 0, 0,
                                            reference_latent={"samples": ref_latent()}, sensitivity_table=table)[0]


# ---- invariants --------------------------------------------------------------------------------------------

def test_lambda_zero_is_bit_identical_and_input_untouched(sd3):
    vanilla = run(sd3)
    before = {k: dict(v) if isinstance(v, dict) else v for k, v in sd3.model_options.items()}
    zero = node_patch(sd3, 0.0, hand_table())
    assert torch.equal(run(zero), vanilla)
    active = node_patch(sd3, 0.5, hand_table())
    out = run(active)
    assert not torch.allclose(out, vanilla, atol=1e-4)
    assert torch.equal(run(active), out)  # same seed, same output
    assert torch.equal(run(sd3), vanilla) and sd3.model_options.keys() == before.keys()
    assert not sd3.model_options.get("transformer_options", {}).get("patches_replace")


# ---- per-step selection: the official SD3.5 rule, independently ---------------------------------------------

def expected_flags(sigma, strength, ranks=RANKS, keys=KEYS4):
    row = min(range(len(TABLE_T)), key=lambda i: abs(TABLE_T[i] - sigma * 1000))
    n = int(strength * len(keys))
    top = {f: {keys[i] for i in ranks[f][row][:n]} for f in ranks}
    out = {}
    for key in keys:
        flags = (key in top["q"], key in top["k"], key in top["v"], key in top["q"] and key in top["k"])
        if any(flags):
            out[key] = flags
    return out


class Spy:
    """Records (block, sigma, flags, cond_or_uncond) of every styled attention call."""

    def __init__(self, monkeypatch):
        self.calls = []
        self.where = None
        real_op, real_math, real_split = dit_style.dit_style_op, dit_style.styled_qkv, dit_style.split_shared

        def op_factory(key, marker):
            op = real_op(key, marker)

            def wrapped(call):
                self.where = (key, float(call.options["sigmas"].flatten()[0]), tuple(call.options["cond_or_uncond"]))
                return op(call)
            return wrapped

        def math(q, k, v, image, cou, aq, ak, av, share, scale=1.0):
            key, sigma, chunks = self.where
            self.calls.append((key, sigma, (aq, ak, av, share), chunks))
            return real_math(q, k, v, image, cou, aq, ak, av, share, scale)

        def split(q, k, v, image, cou, aq, ak, av, scale=1.0):
            key, sigma, chunks = self.where
            self.calls.append((key, sigma, (aq, ak, av, True), chunks))
            return real_split(q, k, v, image, cou, aq, ak, av, scale)

        monkeypatch.setattr(dit_style, "dit_style_op", op_factory)
        monkeypatch.setattr(dit_style, "styled_qkv", math)
        monkeypatch.setattr(dit_style, "split_shared", split)


@pytest.mark.parametrize("strength", [0.25, 0.5, 1.0])
def test_blocks_follow_the_table_by_the_sd35_rule(sd3, monkeypatch, strength):
    spy = Spy(monkeypatch)
    run(styled(sd3, strength))
    sigmas = sorted({s for _, s, _, _ in spy.calls}, reverse=True)
    schedule = compat.ksampler_sigmas(sd3, 3, "euler", "normal", 1.0, torch.device("cpu"))[:-1]
    assert sigmas and set(sigmas) <= {float(s) for s in schedule}
    for s in schedule:
        got = {key: flags for key, sig, flags, _ in spy.calls if sig == float(s)}
        assert got == expected_flags(float(s), strength), float(s)


# ---- batches and split cond/uncond --------------------------------------------------------------------------

def test_any_batch_each_image_styled_as_if_alone(sd3):
    """Row 0 of a batch-2 run has the batch-1 run's noise; with the reference at the head of every chunk, the
    other image must not change it (the port's hard-coded layout would take image 2 as a reference)."""
    m = styled(sd3, 0.75)
    one = run(m, batch=1)
    two = run(m, batch=2)
    torch.testing.assert_close(two[:1], one, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(two[1:], one, atol=1e-3)


def test_split_cond_uncond_equals_batched(sd3, monkeypatch):
    spy = Spy(monkeypatch)
    m = styled(sd3, 0.75)
    batched = run(m)
    assert {c for *_, c in spy.calls} <= {(0, 1), (1, 0)}
    spy.calls.clear()
    # ComfyUI batches cond and uncond only when it thinks they fit: make them "not fit"
    monkeypatch.setattr(sd3.model, "memory_required", lambda *a, **k: 1e30)
    split = run(m)
    assert {c for *_, c in spy.calls} == {(0,), (1,)}
    torch.testing.assert_close(split, batched, rtol=1e-4, atol=1e-4)


# ---- shipped SD3.5-Large table, Flux, errors ----------------------------------------------------------------

def test_shipped_sd35_large_table_on_its_38_blocks(monkeypatch):
    big = build_dit("sd35l_keys", 0)
    spy = Spy(monkeypatch)
    out = run(node_patch(big, 28 / 38), steps=2)
    shipped = tables.builtin_table("sd35l_style_qkv")
    s0 = float(compat.ksampler_sigmas(big, 2, "euler", "normal", 1.0, torch.device("cpu"))[0])
    row = min(range(len(shipped.timesteps)), key=lambda i: abs(shipped.timesteps[i] - s0 * 1000))
    top = {f: set(torch.argsort(shipped.scores[f][row], stable=True)[:28].tolist()) for f in "qkv"}
    got = {key[1]: flags for key, sig, flags, _ in spy.calls if sig == s0}
    want = {i: (i in top["q"], i in top["k"], i in top["v"], i in top["q"] and i in top["k"])
            for i in range(38) if i in top["q"] | top["k"] | top["v"]}
    assert got == want
    assert not torch.allclose(out, run(big, steps=2), atol=1e-4)


def test_tables_that_do_not_fit_are_refused(sd3, flux):
    with pytest.raises(errors.ConduitError) as e:
        node_patch(sd3)  # 4 joint blocks: the shipped 38-block SD3.5-Large table does not fit
    assert "Conduit Sensitivity Analysis" in str(e.value) and "4 attention blocks" in str(e.value)
    with pytest.raises(errors.ConduitError) as e:
        node_patch(flux)
    assert "Flux" in str(e.value) and "Conduit Sensitivity Analysis" in str(e.value)
    with pytest.raises(errors.ConduitError) as e:
        node_patch(sd3, table=tables.builtin_table("sd35l_style_qkv"))
    assert "does not match" in str(e.value)
    with pytest.raises(errors.ConduitError) as e:
        node_patch(flux, table=hand_table("sd3"))
    assert "for model family 'sd3'" in str(e.value)
    with pytest.raises(errors.ConduitError) as e:
        node_patch(sd3, table=hand_table(), shift=0.5)
    assert "reference_attention_shift" in str(e.value)


def flux_analysis_table(flux):
    items = [an.AnalysisItem(g, dit_conditioning("flux", 1, 10 + g), dit_conditioning("flux", 1, 20), [1, 2],
                             label=f"style {g}") for g in range(2)]
    settings = an.AnalysisSettings(steps=3, cfg=1.0, latent_hw=HW)
    return an.analyse(flux, items, settings, "Conduit Sensitivity Analysis")


def test_flux_runs_with_an_analysis_table_at_cfg_one(flux, monkeypatch):
    table = flux_analysis_table(flux)
    assert table.family == "flux" and table.layer_keys == [("double_block", 0, 0), ("double_block", 1, 0),
                                                          ("single_block", 0, 0), ("single_block", 1, 0)]
    assert table.source_names == ["transformer_blocks.0.attn.processor", "transformer_blocks.1.attn.processor",
                                  "single_transformer_blocks.0.attn.processor",
                                  "single_transformer_blocks.1.attn.processor"]
    sigmas = compat.ksampler_sigmas(flux, 3, "euler", "normal", 1.0, torch.device("cpu"))[:-1]
    assert table.timesteps == [int(round(float(s) * 1000)) for s in sigmas]
    vanilla = run(flux, "flux", cfg=1.0)
    assert torch.equal(run(node_patch(flux, 0.0, table), "flux", cfg=1.0), vanilla)
    spy = Spy(monkeypatch)
    out = run(node_patch(flux, 1.0, table), "flux", cfg=1.0)
    assert {key[0] for key, *_ in spy.calls} == {"double_block", "single_block"}
    assert {c for *_, c in spy.calls} == {(0,)}  # cfg 1: the cond chunk only, with its reference
    assert not torch.allclose(out, vanilla, atol=1e-4)


# ---- chaining with core SkipLayerGuidanceDiT ------------------------------------------------------------------

def slg(model, scale=3.0, layers="1"):
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT

    fn = getattr(SkipLayerGuidanceDiT, "execute", None) or SkipLayerGuidanceDiT().skip_guidance
    out = fn(model=model, scale=scale, start_percent=0.0, end_percent=1.0, double_layers=layers, single_layers="")
    return out[0] if isinstance(out, tuple) else out.result[0]


def test_chains_with_skip_layer_guidance(sd3, monkeypatch):
    table = hand_table()
    style_only = run(node_patch(sd3, 1.0, table))
    slg_only = run(slg(sd3))
    assert torch.equal(run(slg(node_patch(sd3, 1.0, table), scale=0.0)), style_only)
    spy = Spy(monkeypatch)
    both = run(slg(node_patch(sd3, 1.0, table)))
    assert not torch.allclose(both, style_only, atol=1e-4) and not torch.allclose(both, slg_only, atol=1e-4)
    # SLG's extra cond-only pass runs with the reference too; its skipped block 1 is skipped, not styled
    extra = {key for key, _, _, c in spy.calls if c == (0,)}
    main = {key for key, _, _, c in spy.calls if len(c) == 2}
    assert ("double_block", 1, 0) in main and ("double_block", 1, 0) not in extra and extra
    reverse = run(node_patch(slg(sd3), 1.0, table))  # the other order composes to the same model
    torch.testing.assert_close(reverse, both, rtol=1e-5, atol=1e-5)


# ---- analysis: the shipped SD3.5 table's format and key names --------------------------------------------------

def test_analysis_on_sd35l_topology_reproduces_the_shipped_format(tmp_path):
    import json

    big = build_dit("sd35l_keys", 0)
    items = [an.AnalysisItem(g, dit_conditioning("sd35l_keys", 1, 10 + g), dit_conditioning("sd35l_keys", 1, 20),
                             [1, 2], label=f"style {g}") for g in range(2)]
    settings = an.AnalysisSettings(steps=2, cfg=3.5, latent_hw=(8, 8))
    table = an.analyse(big, items, settings, "Conduit Sensitivity Analysis")
    shipped = tables.builtin_table("sd35l_style_qkv")
    assert table.layer_keys == shipped.layer_keys and table.source_names == shipped.source_names
    assert table.features == shipped.features == ["q", "k", "v"]
    assert all(0 < t <= 1000 for t in table.timesteps) and table.timesteps == sorted(table.timesteps, reverse=True)
    path = tmp_path / "t.json"
    tables.save_table(table, str(path))
    with open(f"{tables.TABLE_DIR}/sd35l_style_qkv.json") as f:
        written, ref = json.loads(path.read_text()), json.load(f)
    assert set(written) == set(ref) and written["schema"] == ref["schema"] and written["version"] == ref["version"]
    assert written["layer_keys"] == ref["layer_keys"] and set(written["scores"]) == set(ref["scores"])
    tables.validate_against(tables.load_table(str(path)), big, "T", ("unet", "dit"))  # usable on the model
    from conduit_pack.patches.tables.heatmap import render

    img = render(table, 0.5)
    assert img.size[0] > 38 and img.size[1] > 2


# ---- Selective LoRA on DiT blocks ----------------------------------------------------------------------------

def lora_for(model, keys=("joint_blocks.0.x_block.attn.qkv", "joint_blocks.2.context_block.mlp.fc1",
                          "joint_blocks.3.x_block.attn.proj"), rank=2):
    sd = model.model.diffusion_model.state_dict()
    g = torch.Generator().manual_seed(9)
    lora = {}
    for name in keys:
        w = sd[name + ".weight"]
        lora[f"diffusion_model.{name}.lora_up.weight"] = torch.randn(w.shape[0], rank, generator=g)
        lora[f"diffusion_model.{name}.lora_down.weight"] = torch.randn(rank, w.shape[1], generator=g)
    # the diffusers SD3 format: ComfyUI maps to_q onto a slice of the fused qkv weight
    w = sd["joint_blocks.1.x_block.attn.qkv.weight"]
    lora["transformer.transformer_blocks.1.attn.to_q.lora_A.weight"] = torch.randn(rank, w.shape[1], generator=g)
    lora["transformer.transformer_blocks.1.attn.to_q.lora_B.weight"] = torch.randn(w.shape[1], rank, generator=g)
    return lora


def patched_weights(m):
    return {k[0] if isinstance(k, tuple) else k for k in m.patches}


def test_selective_lora_patches_only_the_table_blocks(sd3):
    table = hand_table()
    lora = lora_for(sd3)
    style = set(sl.static_style_layers(table, 0.5))  # union of the top-2 blocks by mean q and k score
    mean_rank = {f: torch.argsort(table.scores[f].mean(dim=0), stable=True)[:2].tolist() for f in "qk"}
    assert style == {KEYS4[i] for i in mean_rank["q"] + mean_rank["k"]}
    m = cbn.selective_lora(sd3, lora, 1.0, 0.5, "style layers", table)
    c = cbn.selective_lora(sd3, lora, 1.0, 0.5, "content layers", table)
    blocks = {k: f"diffusion_model.joint_blocks.{k[1]}." for k in KEYS4}
    want_style = {w for w in patched_weights(cbn.selective_lora(sd3, lora, 1.0, 1.0, "style layers", table))
                  if any(w.startswith(blocks[k]) for k in style)}
    assert patched_weights(m) == want_style and want_style
    assert patched_weights(c) and not patched_weights(c) & patched_weights(m)
    assert any(w.startswith("diffusion_model.joint_blocks.1.") for w in patched_weights(m) | patched_weights(c))
    assert not sd3.patches
    assert not torch.allclose(run(m, steps=2), run(sd3, steps=2), atol=1e-4)


def test_flux_user_path_analysis_node_then_balanced_style_node(tmp_path, monkeypatch):
    """The nodes as a Flux user chains them: Conduit Sensitivity Analysis (CLIPTextEncode'd prompts, cfg 1, plus
    image groups through the 16-channel VAE) writes a table; Balanced Style takes it from the node's output."""
    import folder_paths

    import conduit_pack.nodes as pack_nodes
    from toyworld.dit_build import build_dit_bundle

    nodes = pack_nodes.NODE_CLASS_MAPPINGS
    bundle = build_dit_bundle("flux", 0)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "conduit_tables", ([str(tmp_path / "t")], {".json"}))
    old = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path / "output"))
    try:
        out = nodes["ConduitSensitivityAnalysis"]().analyse(
            bundle.model, bundle.clip, "oil painting\nwatercolor", "a rabbit", "", 2, 2, 1.0, "euler", "simple",
            128, 96, 10, "style", "sens/flux", images=torch.rand(2, 64, 64, 3), vae=bundle.vae, images_per_group=2)
    finally:
        folder_paths.set_output_directory(old)
    table, text = out["result"]
    assert table.family == "flux" and len(table.timesteps) == 2 and out["ui"]["tables"][0]["filename"] in text
    assert table.provenance["groups"] == [["oil painting"], ["watercolor"], ["image 1", "image 2"]]
    (img,) = nodes["ConduitSensitivityHeatmap"]().draw(table, 0.5, "all")
    assert img.shape[-1] == 3 and img.shape[1] > 50
    styled = node_patch(bundle.model, 0.5, table)
    vanilla = run(bundle.model, "flux", cfg=1.0)
    assert not torch.allclose(run(styled, "flux", cfg=1.0), vanilla, atol=1e-4)


def test_flop_count_is_the_reference_rows_plus_the_targets_shared_keys():
    """bench.dit_style_flops on the full SD3.5-Large topology (meta device, a 16x16 latent): exactly twice the
    vanilla rows' work, plus, in each shared block, the two target rows' attention to the reference's image tokens
    (scaled_dot_product_attention counts 4 * rows * queries * keys * width)."""
    from bench.dit_flops import TEXT_TOKENS, meta_dit_attention
    from bench.dit_style_flops import counts

    side, img = 16, 64
    with meta_dit_attention():
        vanilla, (styled,), shared = counts(side, 1, 0.43, 1)
        off, (plain,), none = counts(side, 1, 0.0, 1)
    assert none == 0 and plain == 2 * off == 2 * vanilla
    queries = TEXT_TOKENS["sd35l_full"] + img
    assert shared > 0 and styled == 2 * vanilla + int(shared) * 4 * 2 * queries * img * 2432


def test_a_dit_attention_mask_is_refused_clearly(flux):
    """A conditioning attention mask (Redux attn_bias) is sized for the call's own keys: refused, not crashed."""
    from conduit_pack.patches.engine.families import family_of

    table = flux_analysis_table(flux)
    settings = bs.StyleSettings(1.0)
    planner = bs.Planner(flux.model, compat.model_sampling(flux), rb.NoisedReference(ref_latent(), 0),
                         bs.LayerSelector(table, 1.0, ("q", "k", "v")), settings, family_of(flux, "t", bs.KINDS))
    x, t, opts = torch.zeros(1, 16, *HW), torch.tensor([0.9]), {"cond_or_uncond": [0]}
    with pytest.raises(errors.ConduitError, match="Conduit Balanced Style.*attention mask"):
        planner(None, x, t, {"attention_mask": torch.zeros(1, 4, 4), "transformer_options": opts})
    ref_x, plan = planner(None, x, t, {"transformer_options": opts})
    assert ref_x.shape == (1, 16, *HW) and plan.joint
