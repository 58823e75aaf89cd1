"""Chapter 7's home: classifier-free guidance as the samplers use it."""

import numpy as np
import pytest
from conftest import TINY_UNET as TINY  # the tiny U-Net and its `tiny_params` fixture

from minidiff import guidance, images
from minidiff.models import unet
from minidiff.nn import tree_map

pytestmark = pytest.mark.ch7


def test_guidance_combines_conditional_and_unconditional(tiny_params, rng):
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    y = np.array([1, 5, 9])
    cond = guidance.guided_eps(unet.apply, tiny_params, TINY, y, guidance=1.0)(x, 40)
    uncond = guidance.guided_eps(unet.apply, tiny_params, TINY, y, guidance=0.0)(x, 40)
    guided = guidance.guided_eps(unet.apply, tiny_params, TINY, y, guidance=2.5)(x, 40)
    np.testing.assert_allclose(uncond, unet.apply(tiny_params, x, 40.0, np.full(3, 10), TINY),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(guided, uncond + 2.5 * (cond - uncond), rtol=1e-4, atol=1e-5)


def test_a_guidance_interval_guides_inside_it_and_conditions_outside(tiny_params, rng):
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    y = np.array([1, 5, 9])
    cond = guidance.guided_eps(unet.apply, tiny_params, TINY, y, guidance=1.0)
    full = guidance.guided_eps(unet.apply, tiny_params, TINY, y, guidance=2.5)
    banded = guidance.guided_eps(unet.apply, tiny_params, TINY, y, guidance=2.5, interval=(30, 60))
    for i, inside in [(29, False), (30, True), (59, True), (60, False)]:  # lo <= i < hi
        assert np.array_equal(banded(x, i), (full if inside else cond)(x, i))
    assert not np.allclose(full(x, 30), cond(x, 30))  # the two differ, so the check has teeth
    # Sampling with an interval covering every step is plain guided sampling; an empty one is w = 1.
    labels, kw = np.arange(4), dict(steps=3, guidance=2.5)
    run = lambda **k: images.sample(unet.apply, tiny_params, TINY, labels,  # noqa: E731
                                      np.random.default_rng(0), **kw, **k)
    assert np.array_equal(run(guidance_interval=(0, 1000)), run())
    assert np.array_equal(run(guidance_interval=(500, 500)),
                          images.sample(unet.apply, tiny_params, TINY, labels,
                                          np.random.default_rng(0), steps=3, guidance=1.0))
    for bad in [(60, 30), (1, 2, 3), (-1, 5), (0.5, 2)]:
        with pytest.raises(ValueError, match="guidance interval must be two step indices"):
            run(guidance_interval=bad)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "2", None, True])
def test_a_guidance_scale_that_is_not_a_finite_number_is_refused(bad, tiny_params):
    # `--guidance nan` used to write all-black images with exit status 0.
    with pytest.raises(ValueError, match="`guidance` must be a finite number"):
        guidance.guided_eps(unet.apply, tiny_params, TINY, np.arange(2), guidance=bad)


def test_guidance_adds_w_minus_1_times_the_implicit_classifiers_gradient():
    # Bayes for scores: grad log p_t(c | x) = grad log p_t(x | c) - grad log p_t(x), and
    # score = -eps / sigma, so eps_c - eps_u = -sigma grad log p_t(c | x) (Ho & Salimans 2022,
    # sec. 3.2). On a Gaussian mixture whose components are the classes every term is exact:
    # the class posterior's gradient comes from autograd of the log responsibilities, and the
    # guided eps of guidance.guided_eps must move by -(w - 1) sigma times it (float64).
    import autograd
    from autograd.scipy.special import logsumexp

    from minidiff import datasets, ddpm

    means = np.array([[-1.0, 0.5], [1.2, -0.3], [0.1, 1.4]])
    mix = datasets.GaussianMixture.isotropic([0.2, 0.5, 0.3], means, 0.4)
    path = ddpm.schedule("linear").path
    i = 400
    a, s = float(path.alpha(i)), float(path.sigma(i))
    noised = mix.noised(a, s)
    classes = [datasets.GaussianMixture.isotropic([1.0], means[c:c + 1], 0.4).noised(a, s)
               for c in range(3)]

    def oracle(params, x, t, y, config):  # an exact "network": eps = -sigma * score
        x = x.reshape(len(x), 2).astype(np.float64)
        per_class = np.stack([cl.score(x) for cl in classes])  # (3, N, 2)
        score = np.where((y == 3)[:, None], noised.score(x),
                         per_class[np.minimum(y, 2), np.arange(len(x))])
        return -s * score.reshape(len(x), 1, 1, 2)

    x = noised.sample(6, np.random.default_rng(0))
    labels = np.array([0, 1, 2, 0, 1, 2])

    def log_posterior(x, c):
        logp = noised.component_log_probs(x)  # (N, K): log w_k N_k(x)
        return logp[np.arange(len(x)), c] - logsumexp(logp, axis=1)

    grad_log_post = autograd.elementwise_grad(log_posterior)(x, labels)  # (N, 2)
    x4 = x.reshape(6, 1, 1, 2)
    eps_c64, eps_u64 = oracle(None, x4, i, labels, None), oracle(None, x4, i, np.full(6, 3), None)
    np.testing.assert_allclose((eps_c64 - eps_u64).reshape(6, 2), -s * grad_log_post,
                               rtol=1e-12, atol=1e-12)  # the identity, in float64
    # guided_eps computes in float32, as the image networks do: agreement to float32 rounding
    eps_u = guidance.guided_eps(oracle, None, None, labels, 0.0, null_label=3)(x4, i)
    eps_c = guidance.guided_eps(oracle, None, None, labels, 1.0, null_label=3)(x4, i)
    np.testing.assert_allclose((eps_c - eps_u).reshape(6, 2), -s * grad_log_post, atol=1e-5)
    w = 2.5
    guided = guidance.guided_eps(oracle, None, None, labels, w, null_label=3)(x4, i)
    np.testing.assert_allclose((guided - eps_u).reshape(6, 2), -w * s * grad_log_post, atol=1e-5)


# ----------------------------------------------------------------------------- the mixture oracle
# Three overlapping classes in 2D: every term of Bayes' rule for scores is closed form.

MEANS = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.5]])


def _mixture():
    from minidiff import datasets

    return datasets.GaussianMixture.isotropic([0.4, 0.3, 0.3], MEANS, 0.6)


@pytest.mark.exercise("7.1")
@pytest.mark.parametrize("t", [0.02, 0.3, 0.7, 1.0])
def test_bayes_rule_for_scores_holds_exactly_on_the_mixture(t):
    # grad log p_t(x | c) = grad log p_t(x) + grad log p_t(c | x), each term on its own: the
    # component's score, the noised mixture's score, and autograd of the log responsibility.
    import autograd

    from minidiff import datasets, process

    mix, path = _mixture(), process.VP()
    a, s = float(path.alpha(t)), float(path.sigma(t))
    x = mix.noised(a, s).sample(50, np.random.default_rng(1))
    labels = np.arange(50) % 3
    grad_log_post = autograd.elementwise_grad(
        lambda z: guidance.class_log_posterior(mix, z, labels, a, s))(x)
    one = [datasets.GaussianMixture.isotropic([1.0], MEANS[c:c + 1], 0.6).noised(a, s)
           for c in range(3)]
    cond = np.stack([one[c].score(x[n:n + 1])[0] for n, c in enumerate(labels)])
    np.testing.assert_allclose(guidance.conditional_score(mix, x, labels, a, s), cond,
                               rtol=0, atol=1e-10)
    np.testing.assert_allclose(cond, mix.noised(a, s).score(x) + grad_log_post, rtol=0, atol=1e-10)
    np.testing.assert_allclose(guidance.class_score(mix, x, labels, a, s), grad_log_post,
                               rtol=0, atol=1e-10)
    # and the class posterior is a distribution over the classes at every point
    total = sum(np.exp(guidance.class_log_posterior(mix, x, np.full(50, c), a, s))
                for c in range(3))
    np.testing.assert_allclose(total, 1.0, rtol=1e-12)


@pytest.mark.exercise("7.2")
def test_classifier_guidance_at_s_and_cfg_at_w_equal_s_take_the_same_step():
    # With exact scores the two rules are one: the implicit classifier of CFG
    # (eps_c - eps_u = -sigma grad log p_t(c | x)) is the exact noise-conditional classifier.
    # One DDIM step of each from the same x_t, float64 throughout.
    from minidiff import ddpm

    mix = _mixture()
    sched = ddpm.schedule("linear")
    path = sched.path

    def noised(i):
        return mix.noised(float(path.alpha(i)), float(path.sigma(i)))

    def oracle(params, x, t, y, config):  # an exact network: eps = -sigma * score, label 3 = null
        i = int(t[0])
        x2, sig = x.reshape(len(x), 2), float(path.sigma(i))
        cond = guidance.conditional_score(mix, x2, np.minimum(y, 2), float(path.alpha(i)), sig)
        score = np.where((y == 3)[:, None], noised(i).score(x2), cond)
        return (-sig * score).reshape(x.shape)

    def log_probs(x, t):  # the exact classifier p_t(c | x) for every class, (N, 3)
        i = int(t[0])
        lp = noised(i).component_log_probs(x.reshape(len(x), 2))
        from autograd.scipy.special import logsumexp
        return lp - logsumexp(lp, axis=1, keepdims=True)

    rng = np.random.default_rng(2)
    labels = np.array([0, 1, 2, 0, 1, 2])
    x = noised(600).sample(6, rng).reshape(6, 1, 1, 2)
    eps_u = lambda x, i: oracle(None, x, np.full(len(x), i), np.full(len(x), 3), None)  # noqa: E731
    grad = guidance.classifier_log_prob_grad(
        lambda x, t: log_probs(x, t).reshape(len(x), 3))
    grad4 = lambda x, t, y: grad(x, t, y).reshape(x.shape)  # noqa: E731
    for s in (0.5, 1.0, 3.0):
        cg = guidance.classifier_guided_eps(eps_u, grad4, path.sigma, labels, s)
        cfg = guidance.guided_eps(oracle, None, None, labels, s, null_label=3)
        assert cg(x, 600).dtype == np.float64
        np.testing.assert_allclose(cg(x, 600), cfg(x, 600), rtol=0, atol=1e-12)
        one_step = [_one_ddim_step(f, sched, x, 600, 580) for f in (cg, cfg)]
        np.testing.assert_allclose(one_step[0], one_step[1], rtol=0, atol=1e-12)


def _one_ddim_step(eps_fn, sched, x, i, j):
    """DDIM from step i to step j (eta = 0), written out: x_j = a_j x0_hat + s_j eps."""
    from minidiff.targets import x0_from_eps

    a_i, s_i = float(sched.path.alpha(i)), float(sched.path.sigma(i))
    eps = eps_fn(x, i)
    return float(sched.path.alpha(j)) * x0_from_eps(eps, x, a_i, s_i) \
        + float(sched.path.sigma(j)) * eps


@pytest.mark.exercise("7.3")
def test_tilted_density_at_w_0_and_1_is_the_data_and_the_class():
    # log p(x) + w log p(c | x): w = 0 is log p(x); w = 1 is log p(x, c) = log w_c + log N_c(x).
    from minidiff import datasets

    mix = _mixture()
    x = mix.sample(40, np.random.default_rng(3))
    labels = np.arange(40) % 3
    np.testing.assert_allclose(guidance.tilted_log_density(mix, x, labels, 0.0), mix.log_prob(x),
                               rtol=1e-12)
    joint = np.array([np.log(mix.weights[c]) + datasets.GaussianMixture.isotropic(
        [1.0], MEANS[c:c + 1], 0.6).log_prob(x[n:n + 1])[0] for n, c in enumerate(labels)])
    np.testing.assert_allclose(guidance.tilted_log_density(mix, x, labels, 1.0), joint,
                               rtol=1e-12)


def test_sampling_on_a_grid_draws_the_density():
    # A correlated Gaussian: the grid sampler's mean and covariance within 4 standard errors
    # (n = 20,000: the mean's SE is sqrt(var / n) <= 0.008, a variance's sqrt(2 / n) var <= 0.02).
    from minidiff import datasets

    cov = np.array([[1.0, 0.6], [0.6, 0.8]])
    g = datasets.GaussianMixture([1.0], [[0.5, -0.3]], [cov])
    x = guidance.sample_on_grid(g.log_prob, 20_000, np.random.default_rng(4), -6.0, 6.0)
    np.testing.assert_allclose(x.mean(0), [0.5, -0.3], atol=4 * np.sqrt(1.0 / 20_000))
    np.testing.assert_allclose(np.cov(x.T), cov, atol=4 * np.sqrt(2 / 20_000) * 1.0)


def _ks_max(a, b, directions=8):
    """The largest two-sample Kolmogorov-Smirnov statistic over projections onto
    ``directions`` evenly spaced unit vectors."""
    from scipy.stats import ks_2samp

    angles = np.linspace(0, np.pi, directions, endpoint=False)
    return max(ks_2samp(a @ d, b @ d).statistic
               for d in np.stack([np.cos(angles), np.sin(angles)], axis=1))


@pytest.mark.exercise("7.3")
def test_guided_sampling_draws_the_class_at_w_1_and_misses_the_tilted_target_above():
    # The probability-flow ODE (chapter 4) with the exact guided score, from N(0, I) at t = 1 to
    # t = 1e-4 (adaptive RK45). KS on 8 projections: the critical value of the two-sample
    # statistic at level 0.001 is 1.95 sqrt(2 / n) (0.062 for n = 2000); eight of them at that
    # level make a family-wise level below 0.01.
    # w = 1: guidance is the conditional model, and its samples pass as draws of p(x | c).
    # w = 3: the guided score is the exact score of p_t(x) p_t(c | x)^3 at every t, yet the
    # samples fail as draws of p_0(x) p_0(c | x)^3 / Z (drawn on a grid): that family of
    # tilted densities is not one density noised (Chidambaram et al. 2024).
    from minidiff import process, sde

    mix, path, n = _mixture(), process.VP(), 2000
    crit = 1.95 * np.sqrt(2 / n)
    rng = np.random.default_rng(5)
    labels = np.zeros(n, dtype=int)
    results = {}
    for w in (1.0, 3.0):
        drift = sde.pf_ode_drift(guidance.guided_score(mix, path, labels, w), path)
        x, _ = sde.solve_ode(drift, rng.standard_normal((n, 2)), 1.0, 1e-4)
        target = guidance.sample_on_grid(
            lambda z, w=w: guidance.tilted_log_density(mix, z, np.zeros(len(z), int), w), n, rng,
            -6.0, 6.0)
        results[w] = _ks_max(x, target)
    assert results[1.0] < crit
    assert results[3.0] > 3 * crit


# ----------------------------------------------------------------------------- on images

def test_autoguidance_by_an_identical_model_is_the_conditional_model(tiny_params, rng):
    # D_bad + w (D_good - D_bad) with D_bad = D_good is D_good at every w: the conditional model.
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    y = np.array([1, 5, 9])
    cond = guidance.guided_eps(unet.apply, tiny_params, TINY, y, guidance=1.0)(x, 40)
    same = guidance.guided_eps(unet.apply, tiny_params, TINY, y, guidance=3.0,
                               bad=(unet.apply, tiny_params, TINY))(x, 40)
    np.testing.assert_allclose(same, cond, rtol=1e-5, atol=1e-6)
    # A different weaker model: the rule, written out with both branches conditional.
    weaker = tree_map(lambda p: 0.5 * p, tiny_params)
    eps_bad = unet.apply(weaker, x, np.full(3, 40.0, np.float32), y, TINY)
    auto = guidance.guided_eps(unet.apply, tiny_params, TINY, y, guidance=3.0,
                               bad=(unet.apply, weaker, TINY))(x, 40)
    np.testing.assert_allclose(auto, eps_bad + 3.0 * (cond - eps_bad), rtol=1e-4, atol=1e-5)
    assert not np.allclose(auto, cond, atol=1e-3)


TINY28 = unet.UNetConfig(resolution=28, channels=(4, 8), num_res_blocks=1, attention_levels=(),
                         head_channels=4, groups=2, num_classes=10)


@pytest.mark.exercise("7.2")
def test_classifier_guidance_in_the_image_sampler(rng):
    # Scale 0 is the unconditional model (CFG at w = 0, the same images); a positive scale moves
    # the images; autoguidance and classifier guidance together are refused.
    from minidiff.models import classifier

    params = tree_map(lambda p: p + 0.05 * rng.standard_normal(p.shape).astype(p.dtype),
                      unet.init(rng, TINY28))
    clf = classifier.init_noisy(np.random.default_rng(1))
    labels = np.array([0, 7])
    run = lambda **k: images.sample(unet.apply, params, TINY28, labels,  # noqa: E731
                                    np.random.default_rng(0), steps=3, **k)
    np.testing.assert_allclose(run(guidance=0.0, classifier=clf), run(guidance=0.0), atol=1e-6)
    assert not np.allclose(run(guidance=50.0, classifier=clf), run(guidance=0.0), atol=1e-4)
    with pytest.raises(ValueError, match="not both"):
        run(guidance=2.0, classifier=clf, bad=(unet.apply, params, TINY28))


@pytest.mark.exercise("7.4")
def test_the_guidance_interval_from_noise_levels():
    # Kynkaanniemi et al.'s (0.28, 5.42] in the sigma frame, on the linear schedule: the steps
    # just inside have sigma/alpha in the interval and the steps just outside do not.
    from minidiff import ddpm

    sched = ddpm.schedule("linear")
    lo, hi = guidance.interval_from_ratios(sched, 0.28, 5.42)
    ratio = lambda i: float(sched.path.sigma(i) / sched.path.alpha(i))  # noqa: E731
    assert ratio(lo - 1) <= 0.28 < ratio(lo) and ratio(hi - 1) <= 5.42 < ratio(hi)
    assert (lo, hi) == (82, 579)
    for bad in [(1.0, 0.5), (-1.0, 2.0)]:
        with pytest.raises(ValueError, match="need 0 <= lo < hi"):
            guidance.interval_from_ratios(sched, *bad)


# ----------------------------------------------------------------------------- the shipped curve

def test_the_shipped_guidance_curve_has_what_the_chapter_reads():
    # data/weights/guidance_curve.json (python -m minidiff.tools.guidance_curve): at least five
    # scales each of CFG and autoguidance (w = 1, the conditional model, counts for both), every
    # point scored on the validation and the test digits, with the metrics the notebook plots.
    import json

    from minidiff.tools import guidance_curve

    table = json.loads((images.WEIGHTS_DIR / "guidance_curve.json").read_text())
    assert table["protocol"]["n"] == 1000 and table["protocol"]["ddim_steps"] == 50
    pts = table["points"]
    kinds = {k: {r["w"] for r in pts.values() if r["kind"] == k}
             for k in guidance_curve.POINTS_KINDS}
    assert len(kinds["cfg"]) >= 5 and len(kinds["auto"] | {1.0}) >= 5, kinds
    assert kinds["classifier"] and kinds["interval"]
    for name, r in pts.items():
        for ref in ("validation", "test"):
            row = r[ref]
            assert 0 <= row["agreement"] <= 1 and 0 <= row["precision"] <= 1, name
            assert 0 <= row["recall"] <= 1 and row["fd"] > 0 and row["between"] >= 0, name
    with pytest.raises(SystemExit):
        guidance_curve.main(["--only", "cfg_w7"])  # not a point: refused by name
