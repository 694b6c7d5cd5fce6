"""SOW's attention modulation on SD3/Flux joint attention (tiny real DiTs): a dense oracle on real blocks (the
bias on the image-to-image logits only, text rows and columns untouched), invariants, COW phases, chaining
with core SkipLayerGuidanceDiT."""
import math

import pytest
import torch

from tests.host.dit_helpers import conds, needs_dit, sample, slg
import conduit  # noqa: F401
from conduit_pack.toyworld import dit_build

import conduit_pack.nodes.cow as cow
import conduit_pack.nodes.sow as sown
import conduit_pack.patches.cow.cow_math as cm
import conduit_pack.patches.sow.dit_modulation as dm
import conduit_pack.patches.sow.modulation as sa
import conduit_pack.patches.sow.sow_math as sm
from conduit_pack.patches.engine.dit_attention import set_block_op

pytestmark = needs_dit
RELATED = {"x": 0.5, "y": 0.2, "w": 0.5, "h": 0.8}
HW = (8, 12)  # latent -> a 4 x 6 token grid


@pytest.fixture(scope="module")
def dits():
    return {name: dit_build.build_dit(name, 0) for name in ("sd3", "flux")}


def seed_obj(canvas=(96, 64)):
    img = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    return cow.ConduitCOWSeedCanvas().make(img, canvas[0], canvas[1], 0, 0, 48, 32, "pixels", "stretch",
                                           cm.GRAY)[-1]


def patched(model, seed, **kw):
    args = dict(suppress=2.0, enhance=1.5, time_decay=1.0, time_cutoff=1.0, distance_tau=0.25, threshold=0.0,
                near_fraction=0.2, gate="soft", apply_to="cond and uncond", phases="all steps", layers="all",
                related_box=RELATED)
    args.update(kw)
    return sown.ConduitSOWAttention().patch(model, seed, **args)[0]


def capture(model, name, key):
    """The first JointCall ComfyUI's block `key` makes (q, k, v after RoPE / q-k norms)."""
    got = []
    m = model.clone()

    def op(call):
        if not got:
            got.append(call)
        return call.attend(call.q, call.k, call.v)
    set_block_op(m, key, op, "test_capture")
    sample(m, *conds(name), name, hw=HW, steps=1)
    return got[0]


def plain_attend(q, k, v):
    b, h, n, d = q.shape
    out = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1) @ v
    return out.transpose(1, 2).reshape(b, n, h * d)


@pytest.mark.parametrize("name,key", [("sd3", ("double_block", 1)), ("flux", ("double_block", 0)),
                                      ("flux", ("single_block", 1))])
def test_real_block_matches_the_dense_joint_oracle(dits, name, key):
    call = capture(dits[name], name, key)
    seed = seed_obj()
    params = sm.SowParams(suppress=2.0, enhance=1.5, time_decay=0.7, threshold=0.0)
    related = sm.box_mask(RELATED, tuple(seed.canvas_latent_mask.shape))
    config = sa.SowConfig(params, seed.canvas_latent_mask, related)
    u = 0.4
    own = type(call)(call.q, call.k, call.v, call.key, call.text, call.grid, call.options, plain_attend)
    out = dm.make_dit_op(config, lambda options: u)(own)
    # the oracle: B on image queries x image keys, straight from the definition; zero on text rows/columns
    reg = sm.regions(seed.canvas_latent_mask, related, call.grid, params)
    c, r, wd = reg.cond, reg.related, reg.dist_w
    block = -params.suppress * c[:, None] * (1 - c[None, :]) + params.enhance * (wd * r)[:, None] * c[None, :]
    n = call.q.shape[2]
    dense = torch.zeros(n, n)
    img = call.image
    dense[img, img] = block * sm.time_weight(u, 0.7, 1.0)
    b, h, _, d = call.q.shape
    ref = torch.softmax(call.q @ call.k.transpose(-1, -2) / math.sqrt(d) + dense.to(call.q), -1) @ call.v
    ref = ref.transpose(1, 2).reshape(b, n, h * d)
    assert call.text > 0 and c.sum() > 0 and r.sum() > 0
    assert torch.allclose(out, ref, atol=3e-5), float((out - ref).abs().max())
    plain = plain_attend(call.q, call.k, call.v)
    assert torch.allclose(out[:, :call.text], plain[:, :call.text], atol=3e-5)  # text queries: as they were
    assert not torch.allclose(out[:, img], plain[:, img], atol=1e-4)


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_sow_changes_dit_sampling_zero_strength_is_bit_identical_and_model_untouched(dits, name):
    m = dits[name]
    seed = seed_obj()
    before = repr(sorted(m.model_options.get("transformer_options", {}).items())), len(m.model_options)
    pos, neg = conds(name)
    plain = sample(m, pos, neg, name, hw=HW)
    on = sample(patched(m, seed), pos, neg, name, hw=HW)
    off = sample(patched(m, seed, suppress=0.0, enhance=0.0), pos, neg, name, hw=HW)
    assert not torch.allclose(plain, on, atol=1e-3)
    assert torch.equal(plain, off)
    # the indicator reads the image tokens' own attention: a hard gate at ~0 says "already attended"
    gated = sample(patched(m, seed, suppress=0.0, threshold=1e-6, gate="hard"), pos, neg, name, hw=HW)
    assert torch.equal(plain, gated)
    assert not torch.allclose(plain, sample(patched(m, seed, suppress=0.0, threshold=100.0), pos, neg, name, hw=HW),
                              atol=1e-3)
    assert torch.equal(on, sample(patched(m, seed), pos, neg, name, hw=HW))
    assert (repr(sorted(m.model_options.get("transformer_options", {}).items())), len(m.model_options)) == before
    assert torch.equal(plain, sample(m, pos, neg, name, hw=HW))
    # chained with core SkipLayerGuidanceDiT, in both orders: both act
    sl = sample(slg(m), pos, neg, name, hw=HW, cfg=3.0)
    both = sample(slg(patched(m, seed)), pos, neg, name, hw=HW, cfg=3.0)
    other = sample(patched(slg(m), seed), pos, neg, name, hw=HW, cfg=3.0)
    assert not torch.allclose(both, sl, atol=1e-3) and torch.equal(both, other)


def test_sow_under_cow_acts_only_inside_cycles_on_a_dit(dits):
    import comfy.sample

    import conduit_pack.patches.cow.sampler as cs

    m, name = dits["sd3"], "sd3"
    pos, neg = conds(name)
    sig = cs.model_sigmas(m, "simple", 10)
    seed = cow.ConduitCOWSeedCanvas().make(torch.rand(1, 40, 40, 3, generator=torch.Generator().manual_seed(5)),
                                           128, 96, 32, 0, 64, 64, "pixels", "stretch", cm.GRAY)[-1]
    g = torch.Generator().manual_seed(7)
    crop = {"samples": torch.randn(1, 16, 8, 8, generator=g)}
    canvas = torch.randn(1, 16, 12, 16, generator=g)

    def run(model, cycles):
        inv, _ = cow.ConduitCOWInvert().invert(model, pos, neg, sig, seed, "crop alone", 3.0, 0.7, crop_latent=crop)
        (sampler,) = cow.ConduitCOWCycleSampler().build(inv, cycles, 0.7, 0.5, 1.0, 0.1, 0.4, "exact", 42)
        return comfy.sample.sample_custom(model, torch.zeros_like(canvas), 3.0, sampler, sig, pos, neg, canvas,
                                          disable_pbar=True, seed=0)

    sow = patched(m, seed, phases="cycles only", related_box={"x": 0.6, "y": 0.0, "w": 0.4, "h": 1.0})
    assert torch.equal(run(sow, 0), run(m, 0))  # no cycle: SOW never acts (inversion and final pass alike)
    assert not torch.allclose(run(sow, 2), run(m, 2), atol=1e-3)
