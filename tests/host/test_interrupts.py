"""Long loops stop on ComfyUI's /interrupt: the Balanced Style inversion and the sensitivity analysis check
comfy.model_management's flag at every iteration (the flag is set here from inside the model call)."""
import pytest

from conduit import testing
import conduit  # noqa: F401  (registers conduit_pack for the imports below)
from tests.host.cb_helpers import hand_table, ref_latent

import conduit_pack.patches.conditional_balance.style as bs
import conduit_pack.patches.conditional_balance.reference as rb
import conduit_pack.patches.tables.analysis as analysis


@pytest.fixture
def interrupt_after_first_call(tiny_sdxl):
    """Counts UNet forwards; after the first one, sets ComfyUI's interrupt flag (as /interrupt does)."""
    import comfy.model_management as mm

    calls = []

    def hook(module, args):
        calls.append(args[0].shape[0])
        if len(calls) == 1:
            mm.interrupt_current_processing(True)

    handle = tiny_sdxl.model.model.diffusion_model.register_forward_pre_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()
        mm.interrupt_current_processing(False)


def test_inversion_loop_stops_on_interrupt(tiny_sdxl, interrupt_after_first_call):
    import comfy.model_management as mm

    steps = 40
    ref = rb.InvertedReference(ref_latent(), steps)
    m = bs.apply_balanced_style(tiny_sdxl.model, hand_table(tiny_sdxl.model), ref, bs.StyleSettings(0.5))
    with pytest.raises(mm.InterruptProcessingException):
        testing.sample(m, tiny_sdxl.cond(), tiny_sdxl.cond(seed=1), steps=3, cfg=4.0)
    calls = interrupt_after_first_call
    assert calls and all(rows == 1 for rows in calls)  # stopped inside the first inversion
    assert len(calls) < steps


def test_analysis_loop_stops_on_interrupt(tiny_sdxl, interrupt_after_first_call):
    import comfy.model_management as mm

    neg = tiny_sdxl.cond(1, 99)
    items = [analysis.AnalysisItem(g, tiny_sdxl.cond(1, g), neg, [0, 1], label=f"g{g}") for g in range(3)]
    ticks = []
    with pytest.raises(mm.InterruptProcessingException):
        analysis.analyse(tiny_sdxl.model, items, analysis.AnalysisSettings(steps=4, latent_hw=(8, 8)), "T",
                         progress=ticks.append)
    assert len(interrupt_after_first_call) == 1 and len(ticks) < 3 * 4


def test_image_probe_loop_stops_on_interrupt(tiny_sdxl, interrupt_after_first_call):
    """Image groups are probed one schedule step at a time: the check runs before each probe."""
    import comfy.model_management as mm

    c, neg = tiny_sdxl.cond(1, 0), tiny_sdxl.cond(1, 99)
    latents = [ref_latent(seed=i, hw=(8, 8)) for i in range(4)]
    items = analysis.image_items(latents, 2, 0, c, neg, 0)
    with pytest.raises(mm.InterruptProcessingException):
        analysis.analyse(tiny_sdxl.model, items, analysis.AnalysisSettings(steps=6, latent_hw=(8, 8)), "T")
    assert len(interrupt_after_first_call) < 6
