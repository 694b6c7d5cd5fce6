"""Conduit's attention replaces never shadow another pack's: every guidance term of a chain is present.

ComfyUI runs the full-key `(block, id, index)` replace before the short-key `(block, id)` one, and Conduit's
replaces sit at full keys. The other pack here (tests/comfy_nodes/.../foreign_pack.py) sets an identity
attention under the short key for its own extra pass, like core PerturbedAttentionGuidance and
sd-perturbed-attention. The oracle is the same pack setting it under the full key for that pass, which no
earlier replace can shadow: at the perturbed layer every Conduit replace then gives way to it, and chaining
must give the same result. At that layer every Conduit technique reduces to the identity too (AdaIN and SOW's
modulation touch only q/k, and a reference's keys are not attended by a token that attends only to itself),
so the oracle holds whether or not Conduit acts on the layer.
"""
import pytest
import torch

from conduit import testing
import conduit  # noqa: F401  (registers conduit_pack for the imports below)
from tests.comfy_nodes.conduit_test_nodes import foreign_pack as fp
from tests.host.cb_helpers import hand_table, ref_latent

import conduit_pack.patches.conditional_balance.style as bs
import conduit_pack.patches.conditional_balance.reference as rb
import conduit_pack.patches.seg.guidance as seg
import conduit_pack.patches.tables.analysis as analysis
import conduit_pack.nodes.sow as sow_nodes
import conduit_pack.nodes.cow as cow_nodes
import conduit_pack.patches.cow.cow_math as cm

HW = (16, 16)
MIDDLE_LAST = [[0, 2, 3, 4, 5, 6, 7, 1]] * 3  # the PAG layer (middle) is never among the top half
MIDDLE_FIRST = [[1, 0, 2, 3, 4, 5, 6, 7]] * 3  # ... or always selected


def run(model, tiny, steps=2, cfg=5.0):
    pos, neg = tiny.cond(1, 1), tiny.cond(1, 2)
    return testing.sample(model, pos, neg, latent_hw=HW, steps=steps, cfg=cfg)


def balanced(model, ranks):
    table = hand_table(model, ranks, ranks)
    return bs.apply_balanced_style(model, table, rb.NoisedReference(ref_latent(hw=HW), 3), bs.StyleSettings(0.5))


def assert_term_present(chain, oracle, without):
    """chain equals the oracle up to rounding, and the foreign term is far above rounding."""
    effect = (oracle - without).abs().max().item()
    assert effect > 1e-2, "the foreign pack's term is too small for this test to see shadowing"
    assert (chain - oracle).abs().max().item() <= 1e-5 * max(1.0, effect), (chain - oracle).abs().max().item()


@pytest.mark.parametrize("ranks", [MIDDLE_LAST, MIDDLE_FIRST], ids=["layer-not-styled", "layer-styled"])
def test_balanced_style_keeps_a_short_key_extra_pass_in_both_orders(tiny_sdxl, ranks):
    m = tiny_sdxl.model
    alone = run(balanced(m, ranks), tiny_sdxl)
    oracle = run(fp.full_key_pag(balanced(m, ranks)), tiny_sdxl)
    after = run(fp.short_key_pag(balanced(m, ranks)), tiny_sdxl)
    before = run(balanced(fp.short_key_pag(m), ranks), tiny_sdxl)
    assert_term_present(after, oracle, alone)
    assert_term_present(before, oracle, alone)


def test_balanced_style_keeps_a_permanent_short_key_replace_installed_after_it(tiny_sdxl):
    m = tiny_sdxl.model
    styled = balanced(m, MIDDLE_LAST)
    after = run(fp.short_key_permanent(styled), tiny_sdxl)
    # Oracle: the same function put at the full key by hand; Balanced Style passes that layer through.
    hot = fp.short_key_permanent(m).model_options["transformer_options"]["patches_replace"]["attn1"][("middle", 0)]
    by_hand = styled.clone()
    by_hand.set_model_attn1_replace(hot, "middle", 0, 0)
    assert_term_present(after, run(by_hand, tiny_sdxl), run(styled, tiny_sdxl))
    before = run(balanced(fp.short_key_permanent(m), MIDDLE_LAST), tiny_sdxl)
    assert_term_present(before, run(by_hand, tiny_sdxl), run(styled, tiny_sdxl))


def test_the_input_models_keep_their_own_patches(tiny_sdxl):
    m = fp.short_key_pag(tiny_sdxl.model)
    before = dict(m.model_options["transformer_options"].get("patches_replace", {}).get("attn1", {}))
    balanced(m, MIDDLE_FIRST)
    assert m.model_options["transformer_options"].get("patches_replace", {}).get("attn1", {}) == before


@pytest.mark.parametrize("order", ["bs-seg-pag", "pag-bs-seg", "seg-pag-bs"])
def test_chain_with_conduit_seg_keeps_every_term(tiny_sdxl, order):
    m = tiny_sdxl.model
    steps = {"bs": lambda x: balanced(x, MIDDLE_LAST), "seg": lambda x: seg.apply_seg(x, seg.SegSettings(3.0))}

    def build(pag):
        x = m
        for name in order.split("-"):
            x = pag(x) if name == "pag" else steps[name](x)
        return x

    without = m
    for name in order.split("-"):
        without = without if name == "pag" else steps[name](without)
    assert_term_present(run(build(fp.short_key_pag), tiny_sdxl), run(build(fp.full_key_pag), tiny_sdxl),
                        run(without, tiny_sdxl))


def test_sow_attention_keeps_a_short_key_extra_pass(tiny_sd15):
    img = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    seed = cow_nodes.ConduitCOWSeedCanvas().make(img, 128, 128, 32, 0, 64, 48, "pixels", "stretch", cm.GRAY)[-1]

    def sow(x):
        return sow_nodes.ConduitSOWAttention().patch(
            x, seed, suppress=2.0, enhance=1.5, time_decay=1.0, time_cutoff=1.0, distance_tau=0.25, threshold=0.0,
            near_fraction=0.2, gate="soft", apply_to="cond and uncond", phases="all steps", layers="all",
            related_box={"x": 0.1, "y": 0.3, "w": 0.8, "h": 0.7})[0]

    m = tiny_sd15.model
    layers = (("middle", 0),)
    alone = run(sow(m), tiny_sd15)
    oracle = run(fp.full_key_pag(sow(m), layers=layers), tiny_sd15)
    assert_term_present(run(fp.short_key_pag(sow(m), layers=layers), tiny_sd15), oracle, alone)
    assert_term_present(run(sow(fp.short_key_pag(m, layers=layers)), tiny_sd15), oracle, alone)


def test_sensitivity_analysis_samples_with_the_other_packs_term(tiny_sdxl):
    neg = tiny_sdxl.cond(1, 99)
    items = [analysis.AnalysisItem(g, tiny_sdxl.cond(1, g), neg, [0, 1], label=f"g{g}") for g in range(2)]
    settings = analysis.AnalysisSettings(steps=2, latent_hw=(8, 8))

    def stats(model):
        store, _, _ = analysis.collect(model, items, settings, "T")
        return store.data.clone()

    plain = stats(tiny_sdxl.model)
    short = stats(fp.short_key_pag(tiny_sdxl.model))
    full = stats(fp.full_key_pag(tiny_sdxl.model))
    assert (full - plain).abs().max() > 1e-4  # the extra pass changes the sampled images, hence the statistics
    torch.testing.assert_close(short, full, rtol=1e-4, atol=1e-5)  # rounding of two differently batched passes


def test_core_pag_matches_the_stand_in_and_survives_balanced_style(tiny_sdxl):
    nodes_pag = pytest.importorskip("comfy_extras.nodes_pag", reason="the 2024 host has no PerturbedAttentionGuidance")
    m = tiny_sdxl.model

    def core(x):
        node = nodes_pag.PerturbedAttentionGuidance
        return node.execute(x, 3.0)[0] if hasattr(node, "execute") else node().patch(x, 3.0)[0]

    torch.testing.assert_close(run(core(m), tiny_sdxl), run(fp.full_key_pag(m), tiny_sdxl), rtol=0, atol=1e-5)
    for ranks in (MIDDLE_LAST, MIDDLE_FIRST):
        alone = run(balanced(m, ranks), tiny_sdxl)
        oracle = run(fp.full_key_pag(balanced(m, ranks)), tiny_sdxl)
        assert_term_present(run(core(balanced(m, ranks)), tiny_sdxl), oracle, alone)
        assert_term_present(run(balanced(core(m), ranks), tiny_sdxl), oracle, alone)
