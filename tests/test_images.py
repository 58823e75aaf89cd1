"""The MNIST diffusion glue (images.py): batches, the loss, training, sampling, model files."""

from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_UNET as TINY  # the tiny U-Net and its `tiny_params` fixture

from minidiff import ddpm, images
from minidiff.models import unet
from minidiff.nn import tree_map

pytestmark = pytest.mark.ch6

ROOT = Path(__file__).resolve().parent.parent


def test_batches_drop_labels_at_the_stated_rate(rng):
    pics = rng.standard_normal((50, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 10, 50)
    batch = images.mnist_batches(ddpm.schedule("linear"), pics, labels, 20_000,
                                   p_uncond=0.1)(rng)
    assert batch["xt"].shape == (20_000, 1, 8, 8) and batch["xt"].dtype == np.float32
    frac = np.mean(batch["y"] == 10)
    assert abs(frac - 0.1) < 4 * np.sqrt(0.09 / 20_000)  # binomial standard error


@pytest.mark.parametrize("p_uncond", [0.0, 1.0])
def test_batches_at_the_ends_of_the_dropout_range(p_uncond, rng):
    labels = rng.integers(0, 10, 50)
    batch = images.mnist_batches(ddpm.schedule("linear"), np.zeros((50, 1, 8, 8)), labels,
                                   500, p_uncond=p_uncond)(rng)
    assert np.all(batch["y"] == 10) if p_uncond == 1.0 else np.all(batch["y"] < 10)


@pytest.mark.parametrize("p_uncond", [0.0, 1.0])
def test_train_mnist_drops_labels_at_the_rate_it_is_given(p_uncond, rng):
    # A class's embedding row gets a gradient only from images with that label. Every label
    # dropped: the class rows stay exactly where they started and the null row moves; none
    # dropped: the null row stays and the drawn classes' rows move.
    from minidiff import train
    pics = rng.uniform(-1, 1, (32, 1, 8, 8)).astype(np.float32)
    labels = np.arange(32) % TINY.num_classes
    start = unet.init(np.random.default_rng(0), TINY)
    state, _ = images.train_mnist(unet, TINY, train.init_state(start, 0), pics, labels, 3,
                                    batch_size=16, lr=1e-2, warmup=0, p_uncond=p_uncond,
                                    progress=False)
    moved = np.abs(state.params["class_emb"] - start["class_emb"]).max(axis=1)  # per row
    null_moved, classes_moved = moved[-1] > 1e-4, moved[:-1] > 1e-4
    if p_uncond == 1.0:
        assert null_moved and not classes_moved.any()
    else:
        assert not null_moved and classes_moved.sum() >= 5  # 48 draws need not hit all ten


@pytest.mark.parametrize("p_uncond", [-0.1, 1.5])
def test_batches_reject_a_dropout_rate_that_is_not_a_probability(p_uncond):
    with pytest.raises(ValueError, match="p_uncond"):
        images.mnist_batches(ddpm.schedule("linear"), np.zeros((5, 1, 8, 8)), np.arange(5), 2,
                               p_uncond=p_uncond)


def test_paired_batches_hold_each_image_with_and_without_its_label(rng):
    pics = rng.standard_normal((50, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 10, 50)
    batch = images.mnist_batches(ddpm.schedule("linear"), pics, labels, 64, p_uncond=0.5,
                                   paired=True)(rng)
    first, second = (slice(0, 32), slice(32, 64))
    for key in ("xt", "i", "eps", "x0"):  # the same draw twice: same image, step and noise
        assert np.array_equal(batch[key][first], batch[key][second]), key
    assert batch["xt"].dtype == np.float32 and batch["xt"].shape == (64, 1, 8, 8)
    assert np.all(batch["y"][second] == 10)
    # the first half keeps each image's own label: find each x0 among the images
    where = [np.flatnonzero((pics == x).all(axis=(1, 2, 3)))[0] for x in batch["x0"][first]]
    assert np.array_equal(batch["y"][first], labels[where])


def test_paired_loss_is_the_mean_of_the_labelled_and_the_null_loss(tiny_params, rng):
    # Exactly half the labels dropped, as p_uncond = 0.5 drops them on average: the paired
    # batch's loss is the average of the same draws' loss with every label kept and with every
    # label dropped, the two halves of the expected loss of random dropout at rate 0.5.
    pics = rng.uniform(-1, 1, (20, 1, 8, 8)).astype(np.float32)
    batch = images.mnist_batches(ddpm.schedule("linear"), pics, np.arange(20) % 10, 16,
                                   p_uncond=0.5, paired=True)(rng)
    loss = images.denoising_loss(unet.apply, TINY)
    half = {k: v[:8] for k, v in batch.items()}
    null = dict(half, y=np.full(8, 10))
    assert abs(loss(tiny_params, half) - loss(tiny_params, null)) > 1e-4  # the label matters here
    assert loss(tiny_params, batch) == pytest.approx(
        (loss(tiny_params, half) + loss(tiny_params, null)) / 2, rel=1e-6)


@pytest.mark.parametrize("p_uncond, batch_size", [(0.1, 64), (0.5, 7)])
def test_paired_batches_need_half_dropped_and_an_even_batch(p_uncond, batch_size):
    with pytest.raises(ValueError, match=f"p_uncond={p_uncond}, batch_size={batch_size}"):
        images.mnist_batches(ddpm.schedule("linear"), np.zeros((5, 1, 8, 8)), np.arange(5),
                               batch_size, p_uncond=p_uncond, paired=True)


def test_sampling_is_seeded_and_shaped(tiny_params):
    labels = np.arange(6) % 10
    a = images.sample(unet.apply, tiny_params, TINY, labels, np.random.default_rng(0), steps=3,
                        batch_size=4)
    b = images.sample(unet.apply, tiny_params, TINY, labels, np.random.default_rng(0), steps=3,
                        batch_size=4)
    assert a.shape == (6, 1, 8, 8) and a.dtype == np.float32 and np.array_equal(a, b)
    assert a.min() >= -1 and a.max() <= 1


def test_samples_do_not_depend_on_batching_or_workers(tiny_params):
    # The starting noise is drawn for all labels at once, so batch size and worker processes only
    # change float32 rounding (two one-thread processes against this one). The v-wrapped network
    # has to pickle to reach the workers; `progress` sees every image once.
    labels = np.arange(7) % 10
    apply = images.eps_network(unet.apply, "v")
    one = images.sample(apply, tiny_params, TINY, labels, np.random.default_rng(0), steps=3,
                          batch_size=7)
    seen = []
    two = images.sample(apply, tiny_params, TINY, labels, np.random.default_rng(0), steps=3,
                          batch_size=2, workers=2, progress=seen.append)
    assert sum(seen) == 7 and len(seen) == 4  # 7 images in 2 rounds of 2 workers
    np.testing.assert_allclose(two, one, rtol=0, atol=1e-5)
    assert not np.array_equal(one[0], one[1])
    with pytest.raises(ValueError, match="`workers`"):
        images.sample(apply, tiny_params, TINY, labels, np.random.default_rng(0), workers=0)


def test_sampling_in_threads_gives_the_same_images_bit_for_bit(tiny_params):
    # In one process the batches run on threads with BLAS at one thread each; every image is
    # computed by the same operations in the same order as on one thread, so a model samples
    # the same images, to the last bit, however many threads share the work.
    labels = np.arange(7) % 10
    runs = [images.sample(unet.apply, tiny_params, TINY, labels, np.random.default_rng(0),
                          steps=3, batch_size=2, threads=k) for k in (1, 2, 3)]
    assert all(np.array_equal(runs[0], other) for other in runs[1:])


def test_model_files_round_trip(tmp_path, tiny_params):
    images.save_model(tmp_path / "m.npz", tiny_params, TINY, seed=3)
    apply, params, cfg, meta = images.load_model(tmp_path / "m.npz")
    assert cfg == TINY and meta["seed"] == 3
    x = np.zeros((1, 1, 8, 8), np.float32)
    np.testing.assert_array_equal(apply(params, x, 5.0, None, cfg),
                                  unet.apply(tiny_params, x, 5.0, None, TINY))


def test_min_snr_weighted_eps_loss(rng):
    # Min-SNR-5 in the eps frame weights image i by min(SNR, 5) / SNR (Hang et al. 2023); with
    # gamma = inf every weight is 1 and the loss is L_simple again.
    sched = ddpm.schedule("linear")
    def net(params, x, t, y, cfg):
        return params * x
    batch = {"xt": rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
             "eps": rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
             "i": np.array([0, 10, 500, 999]), "y": np.zeros(4, int)}
    plain = images.denoising_loss(net, None)(0.5, batch)
    assert images.denoising_loss(net, None, weighting="min_snr", gamma=np.inf)(0.5, batch) \
        == pytest.approx(plain, rel=1e-6)
    per_image = ((0.5 * batch["xt"] - batch["eps"]) ** 2).mean(axis=(1, 2, 3))
    snr = sched.snr[batch["i"]]
    expected = np.mean(per_image * np.minimum(snr, 5.0) / snr)
    assert images.denoising_loss(net, None, weighting="min_snr")(0.5, batch) == \
        pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="`weighting`"):
        images.denoising_loss(net, None, weighting="snr")
    with pytest.raises(ValueError, match="`target`"):
        images.denoising_loss(net, None, target="x0")


def _noised_batch(rng, i):
    sched = ddpm.schedule("linear")
    x0 = rng.uniform(-1, 1, (len(i), 1, 4, 4))
    eps = rng.standard_normal(x0.shape)
    return {"x0": x0, "eps": eps, "i": np.asarray(i), "y": np.zeros(len(i), int),
            "xt": ddpm.q_sample(sched, x0, np.asarray(i), eps)}


def test_v_network_is_a_noise_predictor(rng):
    # A network that outputs the exact v = sqrt(ab) eps - sqrt(1 - ab) x0 of the (x0, eps) that
    # made x_t becomes, through eps_network, the exact eps -- at every noise level, including
    # i = 999 where x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab) divides by 0.006. Float64 throughout.
    ab = ddpm.schedule("linear").alpha_bar
    batch = _noised_batch(rng, [0, 1, 250, 500, 998, 999])
    a = np.sqrt(ab[batch["i"]])[:, None, None, None]
    v_true = a * batch["eps"] - np.sqrt(1 - ab[batch["i"]])[:, None, None, None] * batch["x0"]

    def oracle(params, x, t, y, cfg):
        assert x is batch["xt"] and np.array_equal(t, batch["i"])
        return v_true
    eps = images.eps_network(oracle, "v")(None, batch["xt"], batch["i"].astype(float),
                                          batch["y"], None)
    np.testing.assert_allclose(eps, batch["eps"], rtol=0, atol=1e-12)
    assert images.eps_network(oracle, "eps") is oracle
    with pytest.raises(ValueError, match="`target`"):
        images.eps_network(oracle, "score")


def test_v_loss_is_the_eps_error_over_alpha_bar(rng):
    # For any network, eps_hat - eps = sqrt(ab) (v_hat - v) on the variance-preserving path, so
    # the v loss of image j is its eps-frame error divided by alpha_bar_j (targets.x0_error_factor:
    # SNR + 1 against SNR in the x0 frame). The network here is an arbitrary linear map.
    ab = ddpm.schedule("linear").alpha_bar
    batch = _noised_batch(rng, [3, 100, 400, 700, 950])
    def net(params, x, t, y, cfg):
        return params * x + 0.1
    v_loss = images.denoising_loss(net, None, target="v")(0.7, batch)
    eps_hat = images.eps_network(net, "v")(0.7, batch["xt"], batch["i"], batch["y"], None)
    per_image = ((eps_hat - batch["eps"]) ** 2).mean(axis=(1, 2, 3))
    assert v_loss == pytest.approx(np.mean(per_image / ab[batch["i"]]), rel=1e-5)


@pytest.mark.parametrize("target", ["eps", "v"])
def test_float32_training_step_keeps_float32_gradients(tiny_params, rng, target):
    # The v target multiplies float32 images and noise by per-image coefficients: they must be
    # float32 too, or the whole backward silently runs in float64 (the chapter's first lesson).
    import autograd

    pics = rng.uniform(-1, 1, (12, 1, 8, 8)).astype(np.float32)
    batch = images.mnist_batches(ddpm.schedule("linear"), pics, np.arange(12) % 10, 4)(rng)
    value, grads = autograd.value_and_grad(
        images.denoising_loss(unet.apply, TINY, target=target))(tiny_params, batch)
    leaves = []
    tree_map(leaves.append, grads)
    assert np.asarray(value).dtype == np.float32
    assert {g.dtype for g in leaves} == {np.dtype(np.float32)}
