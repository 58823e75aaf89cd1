"""The toolbox: pytrees, layers, embeddings, the MLP, Adam/EMA/clipping, checkpoints."""

import math
import os
import zipfile

import autograd
import numpy as np
import pytest
from autograd.test_util import check_grads

from minidiff import nn
from minidiff.models import mlp


def test_tree_flatten_round_trip():
    tree = {"a": np.arange(3.0), "b": [{"w": np.ones((2, 2))}, {"w": np.zeros(1)}], "c": {}}
    flat = nn.tree_flatten(tree)
    assert sorted(flat) == ["a", "b/0/w", "b/1/w"]
    back = nn.tree_unflatten(nn.tree_structure(tree), flat)
    assert back["c"] == {} and np.array_equal(back["b"][1]["w"], np.zeros(1))
    assert nn.tree_size(tree) == 8
    with pytest.raises(ValueError, match="without '/'"):
        nn.tree_flatten({"a/b": np.zeros(1)})


def test_linear_is_affine_map_and_flattens_leading_axes(rng):
    p = nn.init_linear(rng, 3, 4, dtype=np.float64)
    p["b"] = rng.normal(size=4)
    x = rng.normal(size=(2, 5, 3))
    np.testing.assert_allclose(nn.linear(p, x), np.einsum("abi,ij->abj", x, p["w"]) + p["b"])


def test_mean_keeps_float32_gradient():
    x = np.ones((4, 3), np.float32)
    assert autograd.grad(lambda x: nn.mean(x ** 2))(x).dtype == np.float32
    np.testing.assert_allclose(autograd.grad(lambda x: nn.mean(x, axis=0).sum())(x), 1 / 4)


def test_sigmoid_primitive_passes_check_grads_and_keeps_dtype():
    x = np.linspace(-6, 6, 13)
    check_grads(nn.sigmoid, modes=["rev"], order=2)(x)
    check_grads(nn.silu, modes=["rev"], order=2)(x)
    g = autograd.elementwise_grad(nn.silu)(np.array([-1e4, 0.0, 1e4], np.float32))
    assert g.dtype == np.float32 and np.array_equal(g, [0.0, 0.5, 1.0])


@pytest.mark.parametrize("axis, keepdims", [(None, False), (0, False), (1, True), (-1, False)])
def test_logsumexp_matches_scipy_and_its_gradient_is_the_softmax(axis, keepdims, rng):
    from scipy.special import logsumexp, softmax

    x = rng.normal(size=(3, 4)) * 5
    np.testing.assert_allclose(nn.logsumexp(x, axis, keepdims),
                               logsumexp(x, axis, keepdims=keepdims), rtol=1e-14)
    check_grads(lambda x: nn.logsumexp(x, axis, keepdims), modes=["rev"], order=2)(x)
    g = autograd.grad(lambda x: np.sum(nn.logsumexp(x, axis, keepdims)))(x)
    np.testing.assert_allclose(g, softmax(x, axis=axis), rtol=1e-13)


def test_logsumexp_neither_overflows_nor_promotes():
    # float32 exp overflows past 88.7; the shift by the maximum keeps every exp at most 1
    x = np.array([[1000.0, 1000.0], [-np.inf, -np.inf], [-1000.0, 0.0]], np.float32)
    out = nn.logsumexp(x, axis=1)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [1000.0 + math.log(2), -np.inf, 0.0], rtol=1e-6)
    g = autograd.grad(lambda x: np.sum(nn.logsumexp(x[[0, 2]], axis=1)))(x)
    assert g.dtype == np.float32
    np.testing.assert_allclose(g[[0, 2]], [[0.5, 0.5], [0.0, 1.0]])


def test_silu_matches_definition_and_is_stable():
    x = np.array([-1000.0, -3.0, 0.0, 2.0, 1000.0])
    np.testing.assert_allclose(nn.silu(x), x / (1 + np.exp(-np.clip(x, -700, 700))), atol=1e-300)


def test_sinusoidal_embedding_values():
    e = nn.sinusoidal_embedding(np.array([0.0, 1.0]), 4, max_period=100.0, dtype=np.float64)
    # frequencies 100^(-0/2) = 1 and 100^(-1/2) = 0.1
    np.testing.assert_allclose(e[1], [math.sin(1), math.sin(0.1), math.cos(1), math.cos(0.1)])
    np.testing.assert_allclose(e[0], [0, 0, 1, 1])


@pytest.mark.filterwarnings("ignore:Output seems independent of input")
def test_fourier_embedding_is_frozen(rng):
    p = {"f": nn.init_fourier(rng, 8, scale=2.0, dtype=np.float64)}
    g = autograd.grad(lambda p, t: np.sum(nn.fourier_embedding(p["f"], t) ** 3))(p, np.ones(3))
    assert np.all(g["f"]["W"] == 0)


@pytest.mark.parametrize("embedding", ["sinusoidal", "fourier"])
def test_mlp_gradients_pass_check_grads_in_float64(rng, embedding):
    params = mlp.init(rng, dim=2, hidden=8, depth=2, emb_dim=4, embedding=embedding,
                      dtype=np.float64)
    x, t = rng.normal(size=(5, 2)), rng.uniform(size=5)
    # The Fourier frequencies are frozen (zero gradient by design), so they are held fixed here.
    frozen = {k: v for k, v in params.items() if k == "fourier"}
    trained = {k: v for k, v in params.items() if k != "fourier"}
    check_grads(lambda p: mlp.apply({**p, **frozen}, x, t), modes=["rev"], order=1)(trained)
    check_grads(lambda x: mlp.apply(params, x, t), modes=["rev"], order=2)(x)


def test_every_gradient_of_a_float32_step_is_float32(rng):
    params = mlp.init(rng, hidden=16, depth=2, emb_dim=8)
    x = rng.normal(size=(7, 2)).astype(np.float32)
    t = rng.uniform(size=7).astype(np.float32)
    loss = lambda p: nn.mean(np.sum((mlp.apply(p, x, t) - x) ** 2, axis=1))
    grads = autograd.grad(loss)(params)
    assert {g.dtype for g in nn.tree_leaves(grads)} == {np.dtype(np.float32)}
    new, state = nn.adam_update(grads, nn.adam_init(params), params, 1e-3)
    assert {p.dtype for p in nn.tree_leaves(new)} == {np.dtype(np.float32)}
    ema = nn.ema_update(params, new, nn.ema_decay(0))
    assert {p.dtype for p in nn.tree_leaves(ema)} == {np.dtype(np.float32)}


def test_mlp_rejects_bad_shapes(rng):
    params = mlp.init(rng)
    with pytest.raises(ValueError, match=r"`x` must have shape \(N, 2\)"):
        mlp.apply(params, np.zeros((3, 3), np.float32), 0.0)
    with pytest.raises(ValueError, match=r"`t` must be a scalar or have shape \(3,\)"):
        mlp.apply(params, np.zeros((3, 2), np.float32), np.zeros(4))
    with pytest.raises(ValueError, match="`embedding`"):
        mlp.init(rng, embedding="learned")


def test_adam_first_step_is_lr_times_sign(rng):
    # Kingma & Ba 2015, sec. 2.1: with bias correction the first step is lr * g / (|g| + eps').
    params = {"w": rng.normal(size=5)}
    grads = {"w": rng.normal(size=5)}
    new, state = nn.adam_update(grads, nn.adam_init(params), params, lr=0.1, eps=0.0)
    np.testing.assert_allclose(new["w"], params["w"] - 0.1 * np.sign(grads["w"]))
    assert int(state["count"]) == 1


def test_adam_minimises_a_quadratic():
    params, state = {"w": np.array([3.0, -2.0])}, nn.adam_init({"w": np.zeros(2)})
    for _ in range(2000):
        params, state = nn.adam_update({"w": 2 * params["w"]}, state, params, lr=0.01)
    assert np.all(np.abs(params["w"]) < 1e-2)


def test_clip_warmup_and_ema_schedules():
    g = {"a": np.array([3.0, 4.0])}
    clipped, norm = nn.clip_by_global_norm(g, 1.0)
    assert norm == 5.0 and math.isclose(nn.global_norm(clipped), 1.0)
    assert nn.clip_by_global_norm(g, 10.0)[0] is g
    assert [nn.warmup_lr(s, 1.0, 4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert nn.ema_decay(0) == 0.1 and nn.ema_decay(10**6) == 0.999
    assert nn.ema_decay(0, warmup=False) == 0.999
    # After 1,500 steps a flat 0.999 keeps 0.999**1500 of the start; the warmed-up EMA keeps
    # prod_k (1 + k)/(10 + k) for the steps where that is below 0.999, a vanishing fraction.
    keep_flat = 0.999**1500
    keep_warm = math.prod(nn.ema_decay(k) for k in range(1500))
    assert keep_flat > 0.2 and keep_warm < 1e-6


# ----------------------------------------------------------------------------- checkpoints

def _tree(rng):
    return {"w": rng.normal(size=(3, 2)).astype(np.float32), "layers": [{"b": np.arange(4)}]}


def test_checkpoint_round_trip_is_exact(tmp_path, rng):
    tree = _tree(rng)
    nn.checkpoint.save(tmp_path / "c.npz", tree, step=7, note="hello")
    back, meta = nn.checkpoint.load(tmp_path / "c.npz")
    assert meta == {"step": 7, "note": "hello"}
    assert back["w"].dtype == np.float32 and np.array_equal(back["w"], tree["w"])
    assert np.array_equal(back["layers"][0]["b"], tree["layers"][0]["b"])
    assert [f for f in os.listdir(tmp_path)] == ["c.npz"]  # no temporary file left behind


def test_truncated_checkpoint_is_refused(tmp_path, rng):
    path = tmp_path / "c.npz"
    nn.checkpoint.save(path, _tree(rng))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated or damaged"):
        nn.checkpoint.load(path)


def test_tampered_checkpoint_is_refused(tmp_path, rng):
    path = tmp_path / "c.npz"
    tree = _tree(rng)
    nn.checkpoint.save(path, tree)
    # Rewrite the archive with one weight changed but the old header (a valid zip, valid CRCs).
    with np.load(path) as z:
        entries = {k: z[k] for k in z.files}
    entries["tree/w"] = entries["tree/w"] + 1
    np.savez(path, **entries)
    with pytest.raises(ValueError, match="altered or damaged"):
        nn.checkpoint.load(path)


def test_pickled_npz_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, __header__=np.array("{}"), payload=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickled objects"):
        nn.checkpoint.load(path)


def test_foreign_npz_and_non_zip_are_refused(tmp_path):
    np.savez(tmp_path / "plain.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a minidiff checkpoint"):
        nn.checkpoint.load(tmp_path / "plain.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 but not really a zip")
    with pytest.raises(ValueError, match="truncated or damaged"):
        nn.checkpoint.load(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError):
        nn.checkpoint.load(tmp_path / "missing.npz")


def test_failed_save_overwrites_nothing(tmp_path, rng):
    path = tmp_path / "c.npz"
    nn.checkpoint.save(path, _tree(rng), step=1)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="object arrays"):
        nn.checkpoint.save(path, {"x": np.array([None, 1], dtype=object)})
    with pytest.raises(ValueError, match="JSON"):
        nn.checkpoint.save(path, _tree(rng), bad=object())
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.npz"]
    assert zipfile.is_zipfile(path)


def _gelu_reference(x):
    # the formula traced op by op (the primitive must agree with it)
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def test_gelu_primitive_matches_the_formula_and_passes_check_grads(rng):
    x = rng.normal(size=(4, 7)) * 3
    np.testing.assert_allclose(nn.gelu(x), _gelu_reference(x), rtol=1e-14, atol=1e-15)
    check_grads(nn.gelu, modes=["rev"], order=1)(x)
    xf = np.array([-100.0, -50.0, 0.0, 50.0, 100.0], np.float32)  # no overflow far out
    with np.errstate(all="raise"):
        g = autograd.grad(lambda z: np.sum(nn.gelu(z)))(xf)
    assert g.dtype == np.float32
    np.testing.assert_array_equal(g, [0.0, 0.0, 0.5, 1.0, 1.0])


def _mln_reference(x, shift, scale, eps=1e-6):
    mu = np.mean(x, axis=-1, keepdims=True)
    var = np.mean((x - mu) ** 2, axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * (1.0 + scale) + shift


@pytest.mark.exercise("9.4")
def test_modulated_layer_norm_matches_the_formula_and_passes_check_grads(rng):
    x = rng.normal(size=(2, 5, 6)) * 2 + 1
    shift, scale = rng.normal(size=(2, 1, 6)), rng.normal(size=(2, 1, 6))
    np.testing.assert_allclose(nn.modulated_layer_norm(x, shift, scale),
                               _mln_reference(x, shift, scale), rtol=1e-12, atol=1e-12)
    check_grads(nn.modulated_layer_norm, argnum=(0, 1, 2), modes=["rev"], order=1)(x, shift, scale)
    # shared (1, 1, D) modulation broadcasts over samples and tokens; gradients sum back to it
    s1, c1 = rng.normal(size=(1, 1, 6)), rng.normal(size=(1, 1, 6))
    check_grads(nn.modulated_layer_norm, argnum=(0, 1, 2), modes=["rev"], order=1)(x, s1, c1)
    xf, sf = x.astype(np.float32), shift.astype(np.float32)
    grads = autograd.grad(lambda a, b, c: np.sum(nn.modulated_layer_norm(a, b, c) ** 2),
                          argnum=(0, 1, 2))(xf, sf, sf)
    assert all(g.dtype == np.float32 for g in grads)
