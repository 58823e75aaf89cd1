"""Property: the public functions of the spine and of chapters 3-5 refuse out-of-domain
arguments with a ValueError that names the argument -- never another exception, a NaN or
silent nonsense. Hypothesis draws the bad values (negative, zero where it must be positive,
NaN, infinite, outside [0, 1])."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidiff import ddpm, process, samplers, sde, targets

X = np.zeros((3, 2))
GRID = np.array([2.0, 1.0, 0.0])
D = lambda x, s: x  # noqa: E731  (a denoiser: any function of (x, sigma))
RNG = np.random.default_rng(0)
SCHED = ddpm.schedule("linear", T=10)

nan_or_inf = st.sampled_from([math.nan, math.inf, -math.inf])
negative = st.floats(max_value=-1e-9, allow_nan=False) | nan_or_inf
non_positive = st.floats(max_value=0.0, allow_nan=False) | nan_or_inf
outside_unit = (st.floats(max_value=-1e-9, allow_nan=False)
                | st.floats(min_value=1.0 + 1e-9, allow_nan=False) | st.just(math.nan))

# (what is called, the argument's name, values outside its domain)
CASES = {
    "x0_from_eps sigma": (lambda v: targets.x0_from_eps(X, X, 1.0, v), "sigma", negative),
    "x0_from_eps alpha": (lambda v: targets.x0_from_eps(X, X, v, 0.5), "alpha", non_positive),
    "eps_from_x0 sigma": (lambda v: targets.eps_from_x0(X, X, 1.0, v), "sigma", non_positive),
    "score_from_eps sigma": (lambda v: targets.score_from_eps(X, v), "sigma", non_positive),
    "edm_precond sigma": (lambda v: targets.edm_precond(v), "sigma", non_positive),
    "edm_precond sigma_data": (lambda v: targets.edm_precond(1.0, v), "sigma_data",
                               non_positive),
    "edm_loss_weight sigma_data": (lambda v: targets.edm_loss_weight(1.0, v), "sigma_data",
                                   non_positive),
    "edm_sigmas p_std": (lambda v: targets.edm_sigmas(4, RNG, p_std=v), "p_std", non_positive),
    "min_snr_weight gamma": (lambda v: targets.min_snr_weight("eps", 0.6, 0.8, v), "gamma",
                             st.floats(max_value=0.0) | st.just(-math.inf)),  # inf: no cap
    "VE sigma_min": (lambda v: process.VE(sigma_min=v), "sigma_min", non_positive),
    "VE sigma_max": (lambda v: process.VE(sigma_max=v), "sigma_max", non_positive),
    "VP beta_min": (lambda v: process.VP(beta_min=v), "beta_min", negative),
    "VP beta_max": (lambda v: process.VP(beta_max=v), "beta_max", non_positive),
    "VP t_from_ratio": (lambda v: process.VP().t_from_ratio(v), "r", negative),
    "Linear t_from_ratio": (lambda v: process.Linear().t_from_ratio(v), "r", negative),
    "DiscreteVP t_from_ratio": (lambda v: SCHED.path.t_from_ratio(v), "r", non_positive),
    "Linear sigma": (lambda v: process.Linear().sigma(v), "t", outside_unit),
    "ddim_sample eta": (lambda v: ddpm.ddim_sample(lambda x, i: x, SCHED, X, RNG, steps=2,
                                                   eta=v), "eta", outside_unit),
    "euler_ancestral eta": (lambda v: samplers.euler_ancestral(D, X, GRID, RNG, eta=v), "eta",
                            outside_unit),
    "heun churn": (lambda v: samplers.heun(D, X, GRID, RNG, churn=v), "churn", negative),
    "karras_sigmas sigma_min": (lambda v: samplers.karras_sigmas(5, v, 80.0), "sigma_min",
                                non_positive),
    "karras_sigmas rho": (lambda v: samplers.karras_sigmas(5, rho=v), "rho", non_positive),
    "langevin_corrector snr": (lambda v: sde.langevin_corrector(lambda x, t: x, process.VP(), X,
                                                                0.5, 0.4, RNG, snr=v), "snr",
                               non_positive),
}


@pytest.mark.parametrize("case", sorted(CASES))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_out_of_domain_arguments_raise_a_value_error_naming_them(case, data):
    call, name, bad = CASES[case]
    value = data.draw(bad, label=name)
    with pytest.raises(ValueError, match=f"`{name}`"):
        call(value)


@pytest.mark.exercise("5.1")
def test_the_same_calls_accept_a_value_inside_the_domain():
    # So the property above is not met by functions that refuse everything.
    targets.x0_from_eps(X, X, 1.0, 0.0)
    targets.edm_precond(1.0, 0.5)
    assert targets.min_snr_weight("eps", 0.6, 0.8, 5.0) == pytest.approx(1.0)
    assert targets.min_snr_weight("eps", 0.6, 0.8, math.inf) == pytest.approx(1.0)
    process.VE(sigma_min=0.1)
    process.VP(beta_min=0.0)
    assert process.Linear().t_from_ratio(1.0) == 0.5
    samplers.euler_ancestral(D, X, GRID, RNG, eta=0.5)
    ddpm.ddim_sample(lambda x, i: x, SCHED, X, RNG, steps=2, eta=0.5, clip_x0=(-1, 1))


@pytest.mark.parametrize("call", [
    lambda: ddpm.ancestral_sample(lambda x, i: x, SCHED, X, None),
    lambda: samplers.euler_ancestral(D, X, GRID, None),
    lambda: sde.euler_maruyama(lambda x, t: x, process.VP(), X, None, steps=2),
], ids=["ancestral_sample", "euler_ancestral", "euler_maruyama"])
def test_a_missing_generator_is_named(call):
    # ancestral_sample(rng=None) used to raise AttributeError from deep inside the loop.
    with pytest.raises(TypeError, match="`rng` must be a numpy.random.Generator"):
        call()


def test_a_reversed_clip_range_is_refused():
    with pytest.raises(ValueError, match="`clip_x0` must be a range"):
        ddpm.ddim_sample(lambda x, i: x, SCHED, X, steps=2, clip_x0=(1, -1))
