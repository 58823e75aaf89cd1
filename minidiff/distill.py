"""Chapter 12 — few-step sampling and distillation (in progress: issue 27).

So far: **progressive distillation's target** (Salimans & Ho 2022, Algorithm 2). A student learns
to take in one DDIM step what its teacher takes in two. On a path ``z_t = alpha_t x + sigma_t eps``
the deterministic DDIM step from ``t`` to ``s`` with a prediction ``x_hat`` of the data is

    z_s = alpha_s x_hat + sigma_s eps_hat,     eps_hat = (z_t - alpha_t x_hat) / sigma_t

(Song, Meng & Ermon 2021, eq. (12) with ``sigma = 0``; ``ddim_step``). The teacher steps ``t ->
t' -> t''``; the student's target is the ``x_tilde`` for which one DDIM step ``t -> t''`` lands
exactly where the teacher's two did:

    x_tilde = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t)

(their Algorithm 2, the line defining ``x_tilde``; ``distillation_target``). A test holds the
identity with the exact mixture teacher in float64.
"""

from .targets import per_sample


def ddim_step(x_hat, z, alpha, sigma, alpha_next, sigma_next):
    """One deterministic DDIM step on any Gaussian path: keep the implied noise ``eps_hat`` and
    move the coefficients, ``z' = alpha' x_hat + sigma' (z - alpha x_hat) / sigma``."""
    eps_hat = (z - per_sample(alpha, z, "alpha") * x_hat) / per_sample(sigma, z, "sigma",
                                                                         positive=True)
    return per_sample(alpha_next, z, "alpha_next") * x_hat \
        + per_sample(sigma_next, z, "sigma_next") * eps_hat


def teacher_two_steps(predict_x0, z, path, t, t_mid, t_next):
    """The teacher's two DDIM steps ``t -> t_mid -> t_next`` on ``path`` with its data prediction
    ``predict_x0(z, t)`` (``t`` scalar)."""
    a, s = float(path.alpha(t)), float(path.sigma(t))
    am, sm = float(path.alpha(t_mid)), float(path.sigma(t_mid))
    an, sn = float(path.alpha(t_next)), float(path.sigma(t_next))
    z_mid = ddim_step(predict_x0(z, t), z, a, s, am, sm)
    return ddim_step(predict_x0(z_mid, t_mid), z_mid, am, sm, an, sn)


def distillation_target(z, z_next, alpha, sigma, alpha_next, sigma_next):
    """Salimans & Ho (2022), Algorithm 2: the data prediction ``x_tilde`` whose single DDIM step
    from ``z`` (at ``alpha, sigma``) reaches the teacher's ``z_next`` (at ``alpha_next,
    sigma_next``): ``(z_next - (sigma_next / sigma) z) / (alpha_next - (sigma_next / sigma)
    alpha)``."""
    ratio = per_sample(sigma_next, z, "sigma_next") / per_sample(sigma, z, "sigma", positive=True)
    return (z_next - ratio * z) / (per_sample(alpha_next, z, "alpha_next")
                                   - ratio * per_sample(alpha, z, "alpha"))
