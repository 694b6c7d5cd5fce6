"""Sensitivity grading math: the JSD against independent oracles, the group ratio, the grouping fix."""
import itertools
import math

import pytest
import torch

import conduit  # noqa: F401  (registers conduit_pack for the imports below)

import conduit_pack.patches.tables.analysis_math as am


def random_stats(m, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, d, generator=g, dtype=torch.float64), torch.rand(m, d, generator=g, dtype=torch.float64) + 0.2


def test_jsd_matches_torch_closed_form_kl():
    from torch.distributions import Normal, kl_divergence

    mu, sd = random_stats(2, 64, 1)
    pa, pb = Normal(mu[0], sd[0]), Normal(mu[1], sd[1])
    mid = Normal((mu[0] + mu[1]) / 2, ((sd[0] ** 2 + sd[1] ** 2) / 2).sqrt())  # the reference's averaged variance
    want = 0.5 * (kl_divergence(pa, mid).sum() + kl_divergence(pb, mid).sum())
    got = am.gaussian_jsd(mu[0], sd[0], mu[1], sd[1])
    assert torch.allclose(got, want, rtol=1e-12)
    assert float(am.gaussian_jsd(mu[0], sd[0], mu[0], sd[0])) == pytest.approx(0.0, abs=1e-12)


def test_jsd_matches_numeric_integration():
    scipy = pytest.importorskip("scipy")
    from scipy import integrate, stats

    mu, sd = random_stats(2, 3, 2)
    total = 0.0
    for d in range(3):
        p = stats.norm(float(mu[0, d]), float(sd[0, d]))
        q = stats.norm(float(mu[1, d]), float(sd[1, d]))
        m = stats.norm(float(mu[:, d].mean()), math.sqrt(float((sd[:, d] ** 2).mean())))
        for dist in (p, q):
            kl, _ = integrate.quad(lambda x, dist=dist: dist.pdf(x) * (dist.logpdf(x) - m.logpdf(x)), -30, 30,
                                   limit=200)
            total += 0.5 * kl
    assert float(am.gaussian_jsd(mu[0], sd[0], mu[1], sd[1])) == pytest.approx(total, rel=1e-6)
    assert scipy


def test_pairwise_matrix_is_every_pair():
    mu, sd = random_stats(7, 5, 3)
    mat = am.pairwise_jsd(mu, sd, chunk=3)
    for i, j in itertools.product(range(7), repeat=2):
        assert float(mat[i, j]) == pytest.approx(float(am.gaussian_jsd(mu[i], sd[i], mu[j], sd[j])), rel=1e-12)


def brute_score(mu, sd, groups):
    intra, inter = [], []
    for i, j in itertools.combinations(range(len(groups)), 2):
        d = float(am.gaussian_jsd(mu[i], sd[i], mu[j], sd[j]))
        (intra if groups[i] == groups[j] else inter).append(d)
    return (sum(intra) / len(intra)) / (sum(inter) / len(inter))


def test_layer_scores_equal_brute_force_per_layer_with_unequal_groups():
    groups = [2, 0, 0, 1, 2, 1, 0, 2, 2]  # any order, unequal sizes
    mu, sd = random_stats(9, 2 * 7, 4)
    mu3, sd3 = mu.view(9, 2, 7), sd.view(9, 2, 7)  # 2 passes (uncond, cond) x 7 channels
    offsets = am.channel_offsets([3, 4])
    got = am.layer_scores(mu3.float(), sd3.float(), offsets, groups)
    for li, (a, b) in enumerate(offsets):
        want = brute_score(mu3[:, :, a:b].reshape(9, -1), sd3[:, :, a:b].reshape(9, -1), groups)
        assert float(got[li]) == pytest.approx(want, rel=1e-5)


def reference_windows(styles, n):
    """The released grader's same-style windows: images range(n) + s*2 (should be + s*n)."""
    return [[i + s * 2 for i in range(n)] for s in range(styles)]


def test_grouping_fix_counts_each_pair_once():
    styles, n = 10, 5
    labels = [s for s in range(styles) for _ in range(n)]  # style-major, as the stats list is ordered
    same, diff = am.group_pair_masks(labels)
    assert int(same.sum()) == styles * math.comb(n, 2)  # the normaliser the reference assumes
    assert int(diff.sum()) == math.comb(styles, 2) * n * n
    buggy = [tuple(p) for w in reference_windows(styles, n) for p in itertools.combinations(w, 2)]
    assert len(set(buggy)) < len(buggy)  # overlapping windows count some pairs twice
    assert any(labels[i] != labels[j] for i, j in buggy)  # and call cross-style pairs "same style"


def test_fixed_grouping_detects_a_perfect_style_layer_that_the_reference_windows_blur():
    styles, n, d = 4, 5, 8
    g = torch.Generator().manual_seed(5)
    centres = torch.randn(styles, d, generator=g, dtype=torch.float64) * 5
    mu = torch.stack([centres[s] + 0.01 * torch.randn(d, generator=g, dtype=torch.float64)
                      for s in range(styles) for _ in range(n)])
    sd = torch.ones_like(mu)
    labels = [s for s in range(styles) for _ in range(n)]
    fixed = am.layer_scores(mu[:, None], sd[:, None], [(0, d)], labels)[0]
    assert fixed < 1e-3  # images of one style are identical up to noise
    windows = reference_windows(styles, n)
    windows = [[i for i in w if i < styles * n] for w in windows]
    dist = am.pairwise_jsd(mu, sd)
    intra = (sum(float(dist[i, j]) for w in windows for i, j in itertools.combinations(w, 2))
             / (styles * math.comb(n, 2)))
    inter = float(dist[~(torch.tensor(labels)[:, None] == torch.tensor(labels)[None])].sum() / 2) / (
        math.comb(styles, 2) * n * n)
    assert intra / inter > 100 * fixed  # the reference's grouping hides the layer


def test_ratio_edge_cases_and_group_checks():
    z = torch.zeros(3, 3, dtype=torch.float64)
    same, diff = am.group_pair_masks([0, 0, 1])
    assert am.ratio_score(z, same, diff) == 1.0
    assert am.check_groups([0, 0, 0]) and am.check_groups([0, 1, 2]) and am.check_groups([])
    assert am.check_groups([0, 0, 1]) is None


def test_token_stats_use_unbiased_variance_plus_eps():
    x = torch.randn(2, 10, 4, dtype=torch.float64)
    mu, sd = am.token_stats(x)
    assert torch.allclose(mu, x.mean(1).float())
    ref = torch.tensor([[math.sqrt(sum((float(x[b, i, c]) - float(x[b, :, c].mean())) ** 2 for i in range(10)) / 9
                                   + 1e-5) for c in range(4)] for b in range(2)])
    assert torch.allclose(sd, ref.float(), atol=1e-6)


def test_trimmed_mean_and_duplicate_timesteps():
    v = torch.tensor([[1.0, 5.0], [2.0, 0.0], [3.0, 7.0], [10.0, 1.0], [4.0, 2.0]])
    assert torch.allclose(am.trimmed_mean(v), torch.tensor([3.0, 8.0 / 3]))  # min and max dropped per column
    assert torch.allclose(am.trimmed_mean(v[:2]), v[:2].mean(0))
    t, s = am.merge_duplicate_timesteps([999, 500, 500, 0], {"q": torch.tensor([[1.0], [2.0], [4.0], [5.0]])})
    assert t == [999, 500, 0] and s["q"].flatten().tolist() == [1.0, 3.0, 5.0]


@pytest.mark.parametrize("disk", [False, True])
def test_store_grades_the_same_in_memory_and_on_disk(disk):
    shape = am.StoreShape(images=6, steps=2, channels=5)
    store = am.StatsStore(shape, disk_over_bytes=0 if disk else 1 << 40)
    g = torch.Generator().manual_seed(0)
    for run in range(3):
        buf = torch.rand(2, 2, 3, 2, 2, 5, generator=g) + 0.1
        store.write_run([2 * run, 2 * run + 1], buf, torch.ones(2, 2, dtype=torch.bool))
    labels = [0, 0, 1, 1, 2, 2]
    scores = am.grade_store(store, labels, [2, 3])
    want = am.layer_scores(store.data[:, 1, 0, :, 0].clone(), store.data[:, 1, 0, :, 1].clone(),
                           am.channel_offsets([2, 3]), labels)
    store.close()
    assert torch.allclose(scores["q"][1], want)
    assert scores["v"].shape == (2, 2) and torch.isfinite(scores["k"]).all()
