"""Pure engine math: token grids, batch chunks, schedule positions."""
import subprocess
import sys

import pytest
import torch

from conduit.host import REPO_ROOT as REPO
import conduit  # noqa: F401  (registers conduit_pack for the imports below)

import conduit_pack.patches.engine.grid as grid
import conduit_pack.patches.engine.batch as batch
import conduit_pack.patches.engine.schedule as schedule


def unet_strides(h, w, levels=4):
    """Independent oracle: run real stride-2 convs (padding 1) on an h x w map and record every size."""
    x = torch.zeros(1, 1, h, w)
    conv = torch.nn.Conv2d(1, 1, 3, stride=2, padding=1)
    sizes = [(h, w)]
    for _ in range(levels):
        x = conv(x)
        sizes.append(tuple(x.shape[-2:]))
    return sizes


@pytest.mark.parametrize("px", [(1024, 1024), (1152, 896), (896, 1152), (1536, 640), (640, 1536),
                                (2048, 1024), (520, 328), (200, 136), (264, 264), (8, 8)])
def test_token_grid_matches_real_downsampling(px):
    latent = (px[1] // 8, px[0] // 8)
    for hw in unet_strides(*latent):
        assert grid.token_grid(latent, hw[0] * hw[1]) == hw


def test_token_grid_rejects_impossible_counts():
    with pytest.raises(ValueError, match="tokens"):
        grid.token_grid((64, 64), 1000)


def test_grid_round_trip():
    x = torch.randn(2, 15, 5)
    assert torch.equal(grid.grid_to_tokens(grid.tokens_to_grid(x, (3, 5))), x)
    assert grid.tokens_to_grid(x, (3, 5))[1, 4, 2, 1].item() == x[1, 2 * 5 + 1, 4].item()


def test_chunks_follow_cond_or_uncond_in_any_order():
    assert batch.chunk_slices(6, [1, 0]) == [(1, slice(0, 3)), (0, slice(3, 6))]
    assert batch.rows_of(6, [1, 0], 0).tolist() == [3, 4, 5]
    assert batch.rows_of(4, [0], 1).tolist() == []
    assert batch.kind_mask(6, [0, 1, 0], 0).tolist() == [True, True, False, False, True, True]
    with pytest.raises(ValueError):
        batch.chunk_size(5, [0, 1])


def test_step_index_exact_between_and_outside():
    s = torch.tensor([14.6, 7.0, 3.0, 1.0, 0.0])
    assert schedule.step_index(7.0, s) == 1
    assert schedule.step_index(2.0, s) == 2  # a mid-step evaluation belongs to the step above it
    assert schedule.step_index(20.0, s) is None
    ctx = schedule.StepContext(7.0, 1, 4, 0.3)
    assert ctx.fraction == 0.25
    assert schedule.StepContext(7.0, None, None, 0.3).fraction == 0.3


def test_percent_from_timestep_inverts_comfy_convention():
    for p in (0.0, 0.25, 0.5, 1.0):
        assert schedule.percent_from_timestep((1 - p) * 999) == pytest.approx(p)


PURE = ["patches.engine.grid", "patches.engine.batch", "patches.engine.schedule", "patches.engine.errors",
        "patches.engine.phases", "patches.engine.safe_files"] + sorted(
    ".".join(p.relative_to(REPO).with_suffix("").parts) for p in (REPO / "patches").rglob("*_math.py"))


def test_pure_modules_import_without_comfyui():
    """Convention: patches/**/*_math.py and the engine's pure modules never import comfy."""
    assert len(PURE) >= 13  # the engine modules above plus the seven *_math modules
    code = ("import sys; sys.path.insert(0, '.'); import conduit; "
            + "".join(f"import conduit_pack.{m}; " for m in PURE) +
            "bad = [k for k in sys.modules if k == 'comfy' or k.startswith('comfy.')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
