"""Chapter 11 — SiT: one network, four design axes, a diffusion coefficient chosen after training.

SiT (Ma et al. 2024) keeps DiT's network and changes only how it is trained and sampled, one axis
at a time, in the framework of stochastic interpolants (Albergo & Vanden-Eijnden 2023; Albergo,
Boffi & Vanden-Eijnden 2023). In minidiff every axis is already a choice of something that exists:

- **time**: discrete (``t`` on the 1,000-point grid ``t_i = i / 1000``, ``i = 1..1000``, of the VP
  SDE: DDPM's chain, whose VP SDE limit Song et al. 2021 give in appendix B) or continuous
  (``t ~ U``): ``Formulation.discrete``;
- **target**: noise, score or velocity (``targets.py``; velocity <-> score needs the path's
  derivatives): ``Formulation.kind``;
- **interpolant** ``x_t = alpha_t x0 + sigma_t eps`` (``process.py``): ``"vp"`` (the VP SDE's,
  ``process.VP``), ``"linear"`` (``alpha = 1 - t``, ``sigma = t``: chapter 10's) or ``"gvp"``
  (``alpha = cos(pi t / 2)``, ``sigma = sin(pi t / 2)``): ``Formulation.path``;
- **sampler**: the probability-flow ODE ``dx/dt = v(x, t)``, or one of a family of SDEs with the
  same marginals.

**The SDE family** (the convention: data at ``t = 0``, noise at ``t = 1``, as in SiT's paper and
in ``process.py``; SiT's code runs its time the other way). For any ``w_t >= 0``,

    dX_t = [v(X_t, t) - (w_t / 2) s(X_t, t)] dt + sqrt(w_t) dW_bar_t,     t from 1 down to 0

(``dt < 0``, ``W_bar`` a Brownian motion in reversed time) has the marginals ``p_t`` of the path
at every ``t``. Why: in forward time, ``p_t`` obeys the continuity equation ``d_t p = -div(v p)``;
the forward SDE ``dX = [v + (w/2) s] dt + sqrt(w) dW`` adds ``-div((w/2) s p) + (w/2) lap p = 0``
to it, since ``s p = grad p``. Reversing time flips the drift's ``v`` part and keeps the noise's
effect, which gives the equation above. With ``w = 0`` it is the ODE; with ``w_t = g_t²`` (the
path's own SDE, ``GaussianPath.g2``) and ``v = f x - ½ g² s`` (Song et al. 2021, eq. (13)) its
drift is ``f x - g² s``: Anderson's reverse SDE (their eq. (6); a test holds the two samplers
equal). So ``w_t`` is free after training: the property SiT's sampler axis uses
(``DIFFUSIONS``). SiT's code writes the noise as ``sqrt(2 D)`` with ``D = w / 2`` for its "SBDM"
choice; its other forms set ``D`` directly, so their ``w`` is twice the form's value.
"""

import dataclasses
import math

import autograd.numpy as np
import numpy as onp

from . import flow, process, train
from .models import mlp
from .targets import convert as _convert
from .targets import prediction_loss

PATHS = {"vp": process.VP(), "linear": process.Linear(), "gvp": process.GVP()}
KINDS = ("eps", "score", "velocity")
DISCRETE_STEPS = 1000


@dataclasses.dataclass(frozen=True)
class Formulation:
    """One row of SiT's walk: the interpolant (a key of ``PATHS``), what the network predicts
    (``KINDS``), and whether training times are the discrete grid or continuous. ``t_min`` is
    where training and sampling stop: ``1e-3`` on the VP path (its ``sigma`` vanishes like
    ``sqrt(0.1 t)`` and its velocity's ``sigma'`` blows up; score_sde's own ``eps``), ``0`` on the
    others, whose velocity is finite at both ends."""

    path: str = "linear"
    kind: str = "velocity"
    discrete: bool = False

    def __post_init__(self):
        if self.path not in PATHS:
            raise ValueError(f"`path` must be one of {sorted(PATHS)} (got {self.path!r})")
        if self.kind not in KINDS:
            raise ValueError(f"`kind` must be one of {KINDS} (got {self.kind!r})")
        if self.discrete and self.path != "vp":
            raise ValueError("discrete time is DDPM's chain: it is defined on the 'vp' path "
                             f"(got path {self.path!r})")

    @property
    def process(self):
        return PATHS[self.path]

    @property
    def t_min(self):
        return 1e-3 if self.path == "vp" else 0.0

    def name(self):
        return f"{'discrete' if self.discrete else 'continuous'} {self.path} {self.kind}"

    def times(self, n, rng, density="uniform"):
        """Training times: the grid ``i / 1000`` (``i`` uniform in 1..1000) if discrete, else
        ``t_min + (1 - t_min) t`` with ``t`` from ``flow.DENSITIES[density]``."""
        if self.discrete:
            return rng.integers(1, DISCRETE_STEPS + 1, size=n) / DISCRETE_STEPS
        return self.t_min + (1.0 - self.t_min) * flow.sample_times(density, n, rng)

    def coefficients(self, t, dtype=onp.float64):
        """``alpha``, ``sigma`` and their derivatives at ``t`` (per sample), in ``dtype``."""
        return {k: onp.asarray(getattr(self.process, k)(t), dtype=dtype)
                for k in ("alpha", "sigma", "dalpha", "dsigma")}


RECTIFIED_FLOW = Formulation()  # chapter 10's: the linear path, velocity, continuous time


def coefficients(path, t):
    """``(alpha, sigma, dalpha, dsigma)`` of ``path`` at the time(s) ``t``."""
    return path.alpha(t), path.sigma(t), path.dalpha(t), path.dsigma(t)


def convert(pred, source, target, x, path, t):
    """A prediction of kind ``source`` at ``(x, t)`` on ``path`` as kind ``target``
    (``targets.convert`` with the path's coefficients at ``t``); returned as it is when the kinds
    agree."""
    if source == target:
        return pred
    a, s, da, ds = coefficients(path, t)
    return _convert(pred, source, target, x, a, s, da, ds)


def sit_score_from_velocity(v, x, alpha, sigma, dalpha, dsigma):
    """SiT's formula for the score of a velocity model: ``s = (lam v - x) / (sigma² - lam sigma'
    sigma)`` with ``lam = alpha / alpha'`` (the one SiT's code implements as
    ``get_score_from_velocity``; it is unchanged by reversing time, since ``lam``, ``v`` and
    ``sigma'`` all flip sign). A test holds it equal to ``targets.convert``; it needs
    ``alpha' != 0`` (not at ``t = 0`` on the GVP path), where ``convert`` does not."""
    # BEGIN EXERCISE 11.2: the score of a velocity model by SiT's formula (Ma et al. 2024, sec. 2;
    #   their code's get_score_from_velocity); notebook 11, section 2
    lam = alpha / dalpha
    return (lam * v - x) / (sigma * sigma - lam * dsigma * sigma)
    # END EXERCISE


def fields(predict, kind, path):
    """``(velocity(x, t), score(x, t))`` of a network ``predict(x, t)`` (``t`` scalar) that outputs
    ``kind``: the two fields every sampler of this chapter needs, converted on ``path``. Both read
    one network call: asked at the same ``(x, t)`` (the same array object), the second reuses the
    first's prediction, so an SDE step costs one evaluation like an Euler step."""
    last = {}

    def once(x, t):
        if not (last.get("x") is x and last.get("t") == t):  # holding x keeps its id unique
            last.update(x=x, t=t, out=predict(x, t))
        return last["out"]
    velocity = lambda x, t: convert(once(x, t), kind, "velocity", x, path, t)  # noqa: E731
    score = lambda x, t: convert(once(x, t), kind, "score", x, path, t)  # noqa: E731
    return velocity, score


# ----------------------------------------------------------------------------- the sampler axis

def _sin2(path, t):
    return math.sin(math.pi * t) ** 2


DIFFUSIONS = {
    "sigma": lambda path, t: float(path.sigma(t)),  # SiT's default: w = sigma_t
    "1-t": lambda path, t: 1.0 - t,  # largest at the data (t = 0), where the score is stiffest
    "sin2": _sin2,  # zero at both ends: noise only in the middle
    "g2": lambda path, t: float(path.g2(t)),  # the path's own SDE: Anderson's reverse SDE
}


def diffusion(name, path, t):
    """``w_t`` of the named choice (``DIFFUSIONS``) on ``path`` at the scalar time ``t``."""
    if name not in DIFFUSIONS:
        raise ValueError(f"`diffusion` must be one of {sorted(DIFFUSIONS)} (got {name!r})")
    return DIFFUSIONS[name](path, t)


def sde_drift(velocity, score, w):
    """The SDE family's drift in the direction of decreasing ``t``: ``v - (w_t / 2) s``."""
    # BEGIN EXERCISE 11.1: the drift of the SDE family that keeps the path's marginals for any w_t
    #   (module docstring; Ma et al. 2024, sec. 2); notebook 11, section 3
    return lambda x, t: velocity(x, t) - 0.5 * w(t) * score(x, t)
    # END EXERCISE


def sample_sde(velocity, score, path, w, x, ts, rng, return_path=False, denoise=True):
    """Euler–Maruyama on the SDE family over the decreasing grid ``ts``: ``x <- x + (t' - t)
    [v - (w_t / 2) s] + sqrt(w_t (t - t')) z``, ``w`` a ``DIFFUSIONS`` name or ``w(t)``. With
    ``denoise`` the last step adds no noise (its mean: SiT's default last step, and score_sde's
    ``denoise``); without, every state is a draw of the path's law at its time."""
    if not isinstance(rng, onp.random.Generator):
        raise TypeError(f"`rng` must be a numpy.random.Generator (got {type(rng).__name__})")
    w_fn = (lambda t: diffusion(w, path, t)) if isinstance(w, str) else w
    drift = sde_drift(velocity, score, w_fn)
    out = [x]
    for k, (t0, t1) in enumerate(zip(ts[:-1], ts[1:], strict=True)):
        # BEGIN EXERCISE 11.3: one Euler–Maruyama step backwards in time, without noise on the
        #   last step when denoising (Euler–Maruyama: Kloeden & Platen 1992); notebook 11, section 3
        x = x + (t1 - t0) * drift(x, t0)
        if not (denoise and k == len(ts) - 2):
            x = x + math.sqrt(w_fn(t0) * (t0 - t1)) * rng.standard_normal(x.shape)
        # END EXERCISE
        out.append(x)
    return onp.stack(out) if return_path else x


def sample_ode(velocity, x, ts, solver="heun", return_path=False):
    """The probability-flow ODE ``dx/dt = v(x, t)`` over ``ts`` by ``flow.SOLVERS[solver]``."""
    return flow.SOLVERS[solver](velocity, x, ts, return_path)


def time_grid(formulation, steps, t_max=1.0):
    """``steps + 1`` uniform times from ``t_max`` down to the formulation's ``t_min``."""
    return onp.linspace(t_max, formulation.t_min, steps + 1)


def sample(velocity, score, formulation, x, steps, rng=None, sampler="ode", t_max=1.0):
    """``sampler`` = ``"ode"`` (Heun, ``steps`` steps: ``2 steps - 1`` evaluations) or a
    ``DIFFUSIONS`` name (Euler–Maruyama, ``steps`` evaluations) from ``x`` at ``t_max``."""
    ts = time_grid(formulation, steps, t_max)
    if sampler == "ode":
        return sample_ode(velocity, x, ts)
    return sample_sde(velocity, score, formulation.process, sampler, x, ts, rng)


# ----------------------------------------------------------------------------- the walk on 2D

WALK = (Formulation("vp", "eps", discrete=True), Formulation("vp", "eps"),
        Formulation("vp", "velocity"), Formulation("linear", "velocity"),
        Formulation("gvp", "velocity"))


def toy_net(params, x, t):
    """The 2D network of every formulation: chapter 1's MLP with the time read as ``1000 t``."""
    return mlp.apply(params, x, 1000.0 * t)


def toy_batches(formulation, data, batch_size, density="uniform"):
    """``batch_fn(rng)`` for ``targets.prediction_loss(toy_net, formulation.kind)``: data, times
    (``Formulation.times``), noise, ``x_t`` and the path's coefficients."""
    data = onp.asarray(data, dtype=onp.float64)

    def batch_fn(rng):
        x0 = data[rng.integers(0, len(data), size=batch_size)]
        t = formulation.times(batch_size, rng, density)
        eps = rng.standard_normal(x0.shape)
        return {"x0": x0, "t": t, "eps": eps, "xt": formulation.process.marginal(x0, t, eps),
                **formulation.coefficients(t)}
    return batch_fn


def fit_toy(formulation, data, steps, seed=0, lr=2e-3, batch_size=256):
    """A 2D network trained on ``formulation`` (EMA parameters) and its losses."""
    params = mlp.init(onp.random.default_rng(seed), hidden=128, depth=3, emb_dim=32)
    state = train.init_state(params, seed + 1)
    state, losses = train.fit(prediction_loss(toy_net, formulation.kind), state,
                              toy_batches(formulation, data, batch_size), steps, lr=lr,
                              warmup=100, cooldown=steps // 5, progress=False)
    return state.ema, losses


def toy_fields(params, formulation):
    """``(velocity, score)`` of a trained 2D network."""
    return fields(lambda x, t: toy_net(params, x, onp.full(len(x), t)), formulation.kind,
                  formulation.process)


def sample_metrics(x, mixture, rng):
    """Yardsticks for 2D samples ``x`` of ``mixture``: their mean negative log-density under the
    mixture, exact (precision: how far off the modes they land; below the data's own value means
    too concentrated, so it is read beside the data's), and the sliced Wasserstein-2 distance to as
    many fresh draws of the mixture (``metrics.sliced_wasserstein``: spread, balance and shift)."""
    from .metrics import sliced_wasserstein

    ref = mixture.sample(len(x), rng)
    finite = onp.all(onp.isfinite(x), axis=1)
    if not finite.all():
        return {"nll": math.inf, "sw2": math.inf, "finite": float(finite.mean())}
    return {"nll": float(-np.mean(mixture.log_prob(x))), "sw2": sliced_wasserstein(x, ref, rng),
            "finite": 1.0}


def model_nll(velocity, formulation, x, rtol=1e-5, atol=1e-5, divergence=None):
    """Mean ``-log p(x)`` in nats of 2D points under the model's own probability-flow ODE
    ``dx/dt = v`` (``sde.log_likelihood`` with the exact divergence; Chen et al. 2018), from the
    formulation's ``t_min`` to 1, where the prior is ``N(0, (alpha(1)² + sigma(1)²) I)``: exact for
    the model, a proper score for comparing models (its minimum is the data's entropy).
    ``divergence(x, t)`` replaces autograd's exact divergence (for fields autograd cannot
    trace)."""
    from . import sde

    path = formulation.process
    prior_var = float(path.alpha(1.0)) ** 2 + float(path.sigma(1.0)) ** 2
    div = sde.exact_divergence(velocity) if divergence is None else divergence
    logp, _, _ = sde.log_likelihood(velocity, div, x,
                                    lambda z: sde.gaussian_logp(z, prior_var),
                                    t_eps=formulation.t_min, t_end=1.0, rtol=rtol, atol=atol)
    return float(-onp.mean(logp))


def admissible(formulation, w):
    """Whether the diffusion ``w`` can start at ``t = 1`` on the formulation's path: ``g²`` is
    ``2t / (1 - t)`` on the linear path and ``pi tan(pi t / 2)`` on the GVP one, infinite at pure
    noise (their own forward SDEs need infinite noise to erase the signal); the VP SDE's is
    ``beta(t)`` <= 20."""
    return w != "g2" or formulation.path == "vp"


def toy_walk(mixture, train_steps=3000, n=2000, steps=50, seed=0, samplers=None, n_nll=500,
             nll_tol=1e-4):
    """SiT's walk on 2D: each formulation of ``WALK`` trained ``train_steps`` steps on draws of
    ``mixture``, then sampled from the same ``n`` noises by the ODE (Heun, ``steps // 2`` steps)
    and by the SDE with each admissible diffusion (Euler–Maruyama, ``steps`` steps: the same
    number of evaluations); each model's own likelihood of ``n_nll`` held-out draws by its ODE
    (``model_nll``, ``solve_ivp`` at ``rtol = atol = nll_tol``). Returns ``{"rows":
    [{"formulation", "sampler", "model_nll", "nll", "sw2", "finite"}], "data": the same metrics
    of fresh mixture draws (its "model_nll": the entropy's estimate), "samples": {(name,
    sampler): x}}``."""
    rng = onp.random.default_rng(seed)
    data = mixture.sample(20000, rng)
    x1 = rng.standard_normal((n, mixture.dim))
    held_out = mixture.sample(n_nll, rng)
    samplers = ("ode", *DIFFUSIONS) if samplers is None else samplers
    rows, samples = [], {}
    for form in WALK:
        params, _ = fit_toy(form, data, train_steps, seed)
        velocity, score = toy_fields(params, form)
        nll_model = model_nll(velocity, form, held_out, nll_tol, nll_tol)
        for name in (s for s in samplers if admissible(form, s)):
            with onp.errstate(all="ignore"):
                x = sample(velocity, score, form, x1, steps // 2 if name == "ode" else steps,
                           onp.random.default_rng(seed + 1), name)
            samples[form.name(), name] = x
            rows.append({"formulation": form.name(), "sampler": name, "model_nll": nll_model,
                         **sample_metrics(x, mixture, onp.random.default_rng(seed + 2))})
    data_row = sample_metrics(mixture.sample(n, rng), mixture, onp.random.default_rng(seed + 2))
    data_row["model_nll"] = float(-onp.mean(mixture.log_prob(held_out)))  # the entropy's estimate
    return {"rows": rows, "samples": samples, "data": data_row}
