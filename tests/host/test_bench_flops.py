"""The FLOP counters behind the bench notes run the real patch code on the meta-device SDXL UNet."""
from __future__ import annotations

import pytest

from bench import cb_flops, seg_flops
from bench.meta_unet import meta_attention


def test_balanced_style_flops_count_the_reference_rows_and_the_shared_keys():
    """One reference row per chunk is at least the rows' share of the work; sharing adds a little on top."""
    with meta_attention():
        mean1, worst1 = cb_flops.ratios(side=8, batch=1, strength=0.43, rows=1)
        mean4, _ = cb_flops.ratios(side=8, batch=4, strength=0.43, rows=1)
        off, _ = cb_flops.ratios(side=8, batch=1, strength=0.0, rows=1)
    assert mean1 == worst1
    assert 2.0 < mean1 < 2.1
    assert 1.25 < mean4 < mean1
    assert off == pytest.approx(2.0, abs=1e-3)  # no styled layer: just the reference rows


def test_seg_flop_script_runs(capsys):
    assert seg_flops.main(["--latent", "8"]) == 0
    assert "| 64x64 | > 1 | inf |" in capsys.readouterr().out
