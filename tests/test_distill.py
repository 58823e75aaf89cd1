"""Chapter 12: progressive distillation's target against the exact teacher; the consistency
function's boundary condition, the multistep consistency sampler, and a consistency model
distilled from the exact teacher against the probability-flow ODE solved by ``solve_ivp``; the
solvers' evaluation counts and grids; the guided teacher's per-image levels."""

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from minidiff import datasets, distill, distill_mnist, process, samplers
from minidiff.datasets import GaussianMixture

pytestmark = pytest.mark.ch12
MIX = GaussianMixture.isotropic([0.3, 0.7], [[-1.5, 0.5], [1.0, -0.5]], 0.35)


@pytest.mark.exercise("12.1")
@pytest.mark.parametrize("path", [process.VP(), process.GVP()], ids=["vp", "gvp"])
def test_one_student_step_with_the_target_lands_where_two_teacher_steps_do(path, rng):
    # Salimans & Ho 2022, Algorithm 2, with the exact mixture teacher (float64): the student's
    # DDIM step from t to t'' with x_tilde reproduces the teacher's t -> t' -> t'' (1e-12).
    teacher = process.oracle(MIX, path, "x0")
    z = rng.standard_normal((500, 2))
    for t, t_mid, t_next in ((0.9, 0.7, 0.5), (0.5, 0.4, 0.3), (0.2, 0.15, 0.1)):
        coef = [float(f(t)) for f in (path.alpha, path.sigma)]
        coef_next = [float(f(t_next)) for f in (path.alpha, path.sigma)]
        z_next = distill.teacher_two_steps(teacher, z, path, t, t_mid, t_next)
        x_tilde = distill.distillation_target(z, z_next, *coef, *coef_next)
        np.testing.assert_allclose(distill.ddim_step(x_tilde, z, *coef, *coef_next), z_next,
                                   rtol=1e-12, atol=1e-12)
        # and it is not the teacher's own prediction at t (two steps are not one)
        assert np.abs(x_tilde - teacher(z, t)).max() > 1e-3


def test_a_ddim_step_with_the_true_data_follows_the_path(rng):
    # With x_hat = x0 the implied noise is the true eps, so the step lands on the path's z_s.
    path = process.GVP()
    x0, eps = rng.standard_normal((2, 10, 2))
    z_t, z_s = path.marginal(x0, 0.8, eps), path.marginal(x0, 0.3, eps)
    np.testing.assert_allclose(
        distill.ddim_step(x0, z_t, path.alpha(0.8), path.sigma(0.8), path.alpha(0.3),
                          path.sigma(0.3)), z_s, atol=1e-12)


@pytest.mark.exercise("12.2")
def test_the_consistency_function_meets_its_boundary_condition_exactly(rng):
    # f(x, sigma_min) = x for any network and any weights: c_skip = 1 and c_out = 0 there.
    f = distill.consistency_function(lambda p, x, c: p * np.tanh(x) + np.reshape(c, (-1, 1)),
                                     sigma_min=0.002)
    x = rng.standard_normal((7, 3))
    assert np.array_equal(f(123.0, x, 0.002), x)
    assert np.array_equal(f(-4.0, x, np.full(7, 0.002)), x)
    c_skip, c_out, _ = distill.consistency_scalings(np.array([0.002, 0.5, 80.0]))
    assert c_skip[0] == 1.0 and c_out[0] == 0.0 and c_skip[2] < 1e-4 and c_out[2] > 0.49
    with pytest.raises(ValueError, match="sigma_min"):
        distill.consistency_scalings(0.001)


@pytest.mark.exercise("12.4")
def test_multistep_consistency_sampling_with_the_exact_function_keeps_the_data_law(rng):
    # Gaussian data N(0, s² I): the ODE's end at sigma_min of the trajectory through x at sigma is
    # f*(x, sigma) = x sqrt((s² + sigma_min²) / (s² + sigma²)), the exact consistency function.
    # One step from N(0, (s² + 80²) I) gives N(0, s² + sigma_min²) exactly, and each re-noising
    # to tau and f* keeps it. Sample variance of n = 40,000 draws (x 2 coordinates): standard
    # error var sqrt(2 / 80,000) = 0.5%; tolerance 5 standard errors.
    s2, smin = 0.3, 0.002
    f_exact = lambda x, sigma: x * np.sqrt((s2 + smin**2) / (s2 + sigma**2))  # noqa: E731
    x_T = 80.0 * rng.standard_normal((40_000, 2))
    for taus in ([], [2.0], [5.0, 1.0, 0.2]):
        out = distill.multistep_sample(f_exact, x_T, 80.0, taus, rng, smin)
        assert np.var(out) == pytest.approx(s2 + smin**2, rel=5 * np.sqrt(2 / out.size))
    with pytest.raises(ValueError, match="taus"):
        distill.multistep_sample(f_exact, x_T, 80.0, [1.0, 2.0], rng)


def test_heun_step_with_one_level_per_point_is_the_sampler_s_step(rng):
    # distill.heun_step (per-sample levels) against samplers.heun on a two-level grid, one level
    # at a time: the same arithmetic, so equal to rounding (1e-12).
    D = distill.mixture_denoiser(MIX)
    levels = np.array([5.0, 1.3, 0.4, 0.05])
    nxt = np.array([2.0, 0.9, 0.1, 0.002])
    pick = rng.integers(0, 4, size=40)
    x = rng.standard_normal((40, 2)) * levels[pick, None]
    got = distill.heun_step(D, x, levels[pick], nxt[pick])
    for k in range(4):
        m = pick == k
        ref = samplers.heun(D, x[m], np.array([levels[k], nxt[k]]))
        np.testing.assert_allclose(got[m], ref, rtol=1e-12, atol=1e-12)


@pytest.mark.exercise("12.1")
def test_progressive_target_in_the_sigma_frame_with_per_point_levels(rng):
    # Each point's own (sigma, sigma_mid, sigma_next), the last step to sigma = 0 included: one
    # DDIM step with x_tilde lands where the exact teacher's two DDIM steps do (1e-12).
    D = distill.mixture_denoiser(MIX)
    lv = np.array([20.0, 6.0, 2.0, 0.6, 0.2, 0.05, 0.0])
    k = rng.integers(0, 3, size=60) * 2
    s, s_mid, s_next = lv[k], lv[k + 1], lv[k + 2]
    x = rng.standard_normal((60, 2)) * s[:, None]
    x_tilde = distill.progressive_target(D, x, s, s_mid, s_next)
    two = distill.ddim_step(D(x, s), x, 1.0, s, 1.0, s_mid)
    two = distill.ddim_step(D(two, s_mid), two, 1.0, s_mid, 1.0, s_next)
    np.testing.assert_allclose(distill.ddim_step(x_tilde, x, 1.0, s, 1.0, s_next), two,
                               rtol=1e-12, atol=1e-12)
    last = k == 4  # to sigma = 0 the target is the teacher's final point itself
    np.testing.assert_allclose(x_tilde[last], two[last], atol=1e-12)
    w = distill.truncated_snr_weight(np.array([0.1, 1.0, 10.0]))
    np.testing.assert_allclose(w, [100.0, 1.0, 1.0])


@pytest.mark.exercise("12.2")
def test_the_denoiser_form_of_the_consistency_function_meets_the_boundary_exactly(rng):
    f = distill.consistency_from_denoiser(lambda p, x, s: p * np.cos(x) - 3.0, sigma_min=0.01)
    x = rng.standard_normal((5, 1, 4, 4))
    assert np.array_equal(f(2.0, x, 0.01), x)
    c_skip, c_out = distill.denoiser_scalings(np.array([0.01, 157.0]), 0.01)
    assert (c_skip[0], c_out[0]) == (1.0, 0.0)
    assert c_skip[1] < 1e-4 and c_out[1] > 0.9999  # far from sigma_min f is the denoiser


@pytest.mark.exercise("12.3")
def test_a_consistency_model_distilled_from_the_exact_teacher_lands_on_the_ode_s_end():
    # Consistency distillation (Song et al. 2023, Algorithm 2) of the exact gmm8 teacher, 800
    # steps of a small MLP; then one evaluation f(x, 20) against the probability-flow ODE solved
    # by solve_ivp from 20 to 0.002 (rtol 1e-8) for 200 noise draws. The modes have standard
    # deviation 0.2 and radius 2: a mean distance under 0.4 (two modes' standard deviations; the
    # run measures 0.26; 2,000 steps reach 0.12, notebook 12) lands each draw on the right mode,
    # where the teacher's one-step guess D(x, 20) is the mixture's mean, 1.7 to 2.3 away.
    mix = datasets.gmm8()
    f, params, _ = distill.fit_toy_consistency(mix, steps=800, hidden=64, batch_size=128,
                                               lr=2e-3)
    D = distill.mixture_denoiser(mix)
    z = np.random.default_rng(5).standard_normal((200, 2)) * 20.0
    ode = solve_ivp(lambda s, y: ((y.reshape(-1, 2) - D(y.reshape(-1, 2), s)) / s).ravel(),
                    (20.0, 0.002), z.ravel(), rtol=1e-8, atol=1e-8)
    end = ode.y[:, -1].reshape(-1, 2)
    dist = np.linalg.norm(f(params, z, 20.0) - end, axis=1)
    assert dist.mean() < 0.4
    assert np.linalg.norm(D(z, 20.0) - end, axis=1).mean() > 1.5


@pytest.mark.parametrize("solver", sorted(distill.SOLVERS))
@pytest.mark.parametrize("grid", sorted(distill.GRIDS))
def test_each_solver_spends_the_evaluations_it_is_said_to(solver, grid):
    for nfe in (4, 5, 10):
        sigmas, used = distill.solver_levels(solver, nfe, grid, 0.01, 157.0)
        calls = []
        distill.solve(lambda x, s, c=calls: c.append(s) or 0.0 * x, solver, sigmas,
                      np.ones((1, 2)))
        assert len(calls) == used <= nfe and used >= nfe - 1
        assert sigmas[0] == pytest.approx(157.0) and sigmas[-1] == 0.0
    with pytest.raises(ValueError, match="solver"):
        distill.solver_levels("rk4", 4, grid, 0.01, 157.0)


def test_the_lambda_grid_is_uniform_in_log_sigma():
    s = samplers.lambda_sigmas(6, 0.01, 157.0)
    steps = np.diff(np.log(s[:-1]))
    np.testing.assert_allclose(steps, steps[0], rtol=1e-12)
    assert s[0] == pytest.approx(157.0) and s[-2] == pytest.approx(0.01) and s[-1] == 0.0


def test_consistency_training_pairs_share_their_noise_and_the_ict_schedule(rng):
    x0 = rng.standard_normal((50, 2))
    levels = distill.ict_levels(0, 1000)
    b = distill.consistency_training_batch(x0, levels, rng,
                                           distill.ict_level_probabilities(levels))
    z = (b["x"] - x0) / b["sigma"][:, None]
    np.testing.assert_allclose((b["x_next"] - x0) / b["sigma_next"][:, None], z, rtol=1e-10)
    # the number of levels doubles from 10 + 1 to 1280 + 1 over eight stages
    assert [len(distill.ict_levels(k, 800)) for k in (0, 99, 100, 700, 799)] == \
        [11, 11, 21, 1281, 1281]
    p = distill.ict_level_probabilities(distill.ict_levels(799, 800))
    assert p.sum() == pytest.approx(1.0) and np.all(p >= 0)


def test_the_guided_teacher_takes_one_level_per_image():
    # guidance.guided_eps with a step per image equals the one-step-for-all call, image by image.
    from minidiff import images

    model = distill_mnist.teacher_model(images.SHIPPED["unet"])
    labels = np.array([3, 7])
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32) * 5.0
    both = distill_mnist.guided_teacher(model, labels)(x, np.array([5.0, 0.5]))
    for k, s in enumerate((5.0, 0.5)):
        one = distill_mnist.guided_teacher(model, labels[k:k + 1])(x[k:k + 1], s)
        np.testing.assert_allclose(both[k:k + 1], one, atol=1e-5)


def test_the_mnist_recipes_write_students_that_sample_and_keep_the_boundary(tmp_path):
    # Two steps of each recipe (batch 4, one process): the files load, sample in their number of
    # steps, record their levels, and a finished stage is not trained again.
    from minidiff import images

    teacher = images.SHIPPED["unet"]
    distill_mnist.train_progressive(teacher, tmp_path, base=2, final=1, stage_steps=2,
                                    round_steps=2, batch_size=4, workers=1)
    assert sorted(p.name for p in tmp_path.glob("pd_*.npz")) == ["pd_1.npz", "pd_2.npz"]
    denoise, params, meta = distill_mnist.load_student(tmp_path / "pd_1.npz")
    levels = meta["distilled"]["levels"]
    assert len(levels) == 2 and levels[-1] == 0.0 and meta["target"] == "v"
    z = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    x = distill_mnist.sample_student(tmp_path / "pd_1.npz", np.array([1, 2, 3]), z)
    assert x.shape == (3, 1, 28, 28) and x.dtype == np.float32 and np.abs(x).max() <= 1.0
    before = (tmp_path / "pd_2.npz").stat().st_mtime_ns
    distill_mnist.train_progressive(teacher, tmp_path, base=2, final=1, stage_steps=2,
                                    round_steps=2, batch_size=4, workers=1)
    assert (tmp_path / "pd_2.npz").stat().st_mtime_ns == before

    out = tmp_path / "cm.npz"
    distill_mnist.train_consistency(teacher, tmp_path / "pd_2.npz", out, levels=4, steps=2,
                                    batch_size=4, workers=1)
    denoise, params, meta = distill_mnist.load_student(out)
    d = meta["distilled"]
    f = distill.consistency_from_denoiser(denoise, d["sigma_min"])
    assert np.array_equal(f(params, z, d["sigma_min"], np.array([1, 2, 3])), z)
    x = distill_mnist.sample_student(out, np.array([1, 2, 3]), z, taus=(2.0,))
    assert x.shape == (3, 1, 28, 28) and np.isfinite(x).all()
    with pytest.raises(ValueError, match="not a distilled student"):
        distill_mnist.load_student(teacher)


def _tiny_text_unet(guidance_embedding=False):
    from minidiff.models import unet

    return unet.UNetConfig(in_channels=4, resolution=7, channels=(16, 16), attention_levels=(1,),
                           head_channels=8, context_dim=8, num_classes=None,
                           guidance_embedding=guidance_embedding)


def _jitter(tree, rng):
    # a trained network's stand-in: ADM zero-initialises every residual branch's last layer, so
    # a fresh U-Net ignores its time (and guidance) embedding until these move
    if isinstance(tree, dict):
        return {k: _jitter(v, rng) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_jitter(v, rng) for v in tree]
    return tree + 0.05 * rng.standard_normal(tree.shape)


def _contexts(rng, n, length):
    mask = np.ones((n, length), bool)
    mask[0, -1] = False  # one caption shorter than the others
    return {"context": rng.standard_normal((n, length, 8)), "mask": mask}


def test_the_guidance_embedding_starts_as_its_teacher_and_then_reads_w(rng):
    # Luo et al. 2023's w input: zero-initialised, so a student built from a teacher's weights
    # computes exactly the teacher's function at every w; once trained it reads w per sample.
    from minidiff.models import unet

    cfg, gcfg = _tiny_text_unet(), _tiny_text_unet(True)
    teacher = _jitter(unet.init(rng, cfg, np.float64), rng)
    student = {**teacher, "guidance_emb": unet.init(rng, gcfg, np.float64)["guidance_emb"]}
    x, t = rng.standard_normal((3, 4, 7, 7)), np.array([10.0, 500.0, 990.0])
    ctx = _contexts(rng, 3, 5)
    want = unet.apply(teacher, x, t, ctx, cfg)
    for w in (1.0, 2.5):
        assert np.array_equal(unet.apply(student, x, t, {**ctx, "guidance": w}, gcfg), want)
    student["guidance_emb"]["w"] = 0.1 * rng.standard_normal(student["guidance_emb"]["w"].shape)
    at1, at2 = (unet.apply(student, x, t, {**ctx, "guidance": w}, gcfg) for w in (1.0, 2.0))
    assert np.abs(at1 - at2).max() > 1e-3  # the output depends on w ...
    mixed = unet.apply(student, x, t, {**ctx, "guidance": np.array([1.0, 2.0, 1.0])}, gcfg)
    np.testing.assert_allclose(mixed[[0, 2]], at1[[0, 2]], rtol=0, atol=1e-12)  # ... per sample
    np.testing.assert_allclose(mixed[1], at2[1], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="'guidance' entry"):
        unet.apply(student, x, t, ctx, gcfg)


def test_caption_guidance_takes_one_scale_per_caption(rng):
    # The teacher of the latent consistency model guides each caption at its own w and level:
    # one batched call equals caption-by-caption calls with scalar w and step (float64).
    from minidiff import latent
    from minidiff.models import unet

    cfg = _tiny_text_unet()
    params = _jitter(unet.init(rng, cfg, np.float64), rng)
    ctx, null = _contexts(rng, 3, 4), _contexts(rng, 1, 2)
    null["mask"][0, -1] = True
    x, steps, w = rng.standard_normal((3, 4, 7, 7)), np.array([10.0, 500.0, 990.0]), \
        np.array([1.0, 2.0, 3.5])
    both = latent.caption_guided_eps(unet.apply, params, cfg, ctx, null, w)(x, steps)
    for k in range(3):
        one = latent.caption_guided_eps(unet.apply, params, cfg,
                                        {key: v[k:k + 1] for key, v in ctx.items()}, null,
                                        float(w[k]))(x[k:k + 1], steps[k])
        np.testing.assert_allclose(both[k:k + 1], one, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="one per caption"):
        latent.caption_guided_eps(unet.apply, params, cfg, ctx, null, w[:2])


def test_the_latent_consistency_recipe_writes_a_model_that_samples(tmp_path):
    # Two steps of each stage (batch 4, one process) on 32 digits: the file is a latent model
    # with the guidance input, its f meets the boundary exactly at any w, it samples in one and
    # two evaluations, and its first stage is not trained again.
    from minidiff import datasets, distill_latent, latent
    from minidiff.images import SHIPPED
    from minidiff.nn import checkpoint
    from minidiff.text_encoder import CaptionedDigits, encode_captions, load_text_encoder

    x, y = datasets.mnist("fit")
    data = CaptionedDigits(x[:32], y[:32], load_text_encoder(SHIPPED["clip"])[2])
    out = tmp_path / "lcm.npz"
    kw = dict(levels=4, stage_steps=2, steps=2, batch_size=4, workers=1, data=data)
    distill_latent.train_lcm(SHIPPED["ldm"], out, **kw)
    models = latent.load_models(out)
    params, config = models["ldm"]
    assert config.guidance_embedding and config.context_dim is not None
    meta = checkpoint.load(out)[1]
    d = meta["distilled"]
    assert meta["target"] == "v" and d["method"] == "latent consistency"
    f = distill.consistency_from_denoiser(distill_latent.lcm_denoiser(config), d["sigma_min"])
    z = np.random.default_rng(0).standard_normal((2, 4, 7, 7)).astype(np.float32)
    prompts = ["a bold seven", "a two leaning left"]
    ctx = encode_captions(*models["text"], prompts)
    for w in (1.0, 3.0):
        y_w = distill_latent.condition(ctx, np.full(2, w))
        assert np.array_equal(f(params, z, d["sigma_min"], y_w), z)
    for taus in ((), (2.0,)):
        img = distill_latent.sample_lcm(out, prompts, 2.0, z, taus)
        assert img.shape == (2, 1, 28, 28) and np.isfinite(img).all()
    stage = tmp_path / "lcm.stage.npz"
    before = stage.stat().st_mtime_ns
    distill_latent.train_lcm(SHIPPED["ldm"], tmp_path / "lcm.npz", **kw)
    assert stage.stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="not a latent consistency model"):
        distill_latent.sample_lcm(SHIPPED["ldm"], prompts, 2.0, z)
