"""The mutation check: one-line changes to the mathematics that the test suite must notice.

    python -m minidiff.tools.mutations            # every mutation; prints the survivors
    python -m minidiff.tools.mutations --list     # the list
    python -m minidiff.tools.mutations --only sde.corrector_alpha_inverted ...

A test that still passes when the formula it guards is wrong proves nothing. Each entry below
replaces one line of a module (``old`` must occur exactly once: ``tests/test_mutations.py``
checks the list against the code in the default suite, so it cannot go stale), in a copy of the
package in a temporary folder, and runs the unit tests there: first the files named with the
mutation (``-x``, so a caught mutation costs seconds), then, if those pass, every unit test of
the default suite (``make test`` without the notebook executions). A mutation that passes
everything *survives*: a hole in the tests. ``make mutations`` runs the whole list.

**Each new chapter adds its own** (issue convention): the lines that are the chapter's idea, a
sign, a factor, an index, each with the test file that should catch it.
"""
# line budget: 420 -- MUTATIONS is data (four lines per entry) and grows by a dozen per chapter;
# the code that runs them is under 80 lines.

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class Mutation(typing.NamedTuple):
    name: str
    file: str  # relative to the repository
    old: str
    new: str
    tests: tuple  # test files tried first


M = Mutation
MUTATIONS = [
    # chapter 1: scores and Langevin
    M("score.langevin_step_halved", "minidiff/score.py",
      "x = x + (0.5 * step_size) * score(x)", "x = x + (0.25 * step_size) * score(x)",
      ("tests/test_score.py",)),
    M("score.geometric_sigmas_linspace", "minidiff/score.py",
      "return onp.geomspace(sigma_max, sigma_min, n)",
      "return onp.linspace(sigma_max, sigma_min, n)", ("tests/test_score.py",)),
    # chapter 2 and the spine: conversions
    M("targets.score_from_eps_sign", "minidiff/targets.py",
      'return -eps / per_sample(sigma, eps, "sigma", positive=True)',
      'return eps / per_sample(sigma, eps, "sigma", positive=True)',
      ("tests/test_targets.py", "tests/test_dsm.py")),
    M("targets.eps_from_score_sign", "minidiff/targets.py",
      'return -per_sample(sigma, score, "sigma", positive=True) * score',
      'return per_sample(sigma, score, "sigma", positive=True) * score',
      ("tests/test_targets.py",)),
    M("targets.tweedie_sigma_not_squared", "minidiff/targets.py",
      "return (xt + s * s * score) / per_sample(alpha, xt, \"alpha\", positive=True)",
      "return (xt + s * score) / per_sample(alpha, xt, \"alpha\", positive=True)",
      ("tests/test_targets.py",)),
    M("targets.min_snr_max", "minidiff/targets.py",
      "return onp.minimum(snr, gamma) / x0_error_factor(",
      "return onp.maximum(snr, gamma) / x0_error_factor(", ("tests/test_targets.py",)),
    M("targets.edm_c_skip", "minidiff/targets.py",
      "return (sigma_data**2 / total, sigma * sigma_data / onp.sqrt(total)",
      "return (sigma_data / total, sigma * sigma_data / onp.sqrt(total)",
      ("tests/test_targets.py",)),
    M("targets.edm_p_std_ignored", "minidiff/targets.py",
      "return onp.exp(p_mean + p_std * rng.standard_normal(n))",
      "return onp.exp(p_mean + rng.standard_normal(n))", ("tests/test_targets.py",)),
    # paths
    M("process.ve_sigma_reversed", "minidiff/process.py",
      "return self.sigma_min * (self.sigma_max / self.sigma_min) ** _times(t)",
      "return self.sigma_max * (self.sigma_min / self.sigma_max) ** _times(t)",
      ("tests/test_sde.py", "tests/test_process.py")),
    M("process.t_from_ratio_linear_in_ratio", "minidiff/process.py",
      "return onp.interp(onp.log(r), log_ratios, onp.arange(self.T, dtype=onp.float64))",
      "return onp.interp(r, self.ratios, onp.arange(self.T, dtype=onp.float64))",
      ("tests/test_process.py",)),
    # chapter 3: DDPM
    M("ddpm.cosine_offset", "minidiff/ddpm.py",
      "f = lambda t: onp.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2",
      "f = lambda t: onp.cos((t / T + s) / (1 - s) * math.pi / 2) ** 2", ("tests/test_ddpm.py",)),
    M("ddpm.posterior_beta_off_by_one", "minidiff/ddpm.py",
      "ab, ab_prev, b = sched.alpha_bar[i], sched.alpha_bar_prev[i], sched.betas[i]",
      "ab, ab_prev, b = sched.alpha_bar[i], sched.alpha_bar_prev[i], sched.betas[i - 1]",
      ("tests/test_ddpm.py",)),
    M("ddpm.p_mean_sqrt_dropped", "minidiff/ddpm.py",
      "return (xt - b / np.sqrt(1.0 - ab) * eps_hat) / np.sqrt(1.0 - b)",
      "return (xt - b / (1.0 - ab) * eps_hat) / np.sqrt(1.0 - b)", ("tests/test_ddpm.py",)),
    M("ddpm.vlb_l0_variance_doubled", "minidiff/ddpm.py",
      "b = sched.betas[0]", "b = 2 * sched.betas[0]", ("tests/test_ddpm.py",)),
    M("ddpm.vlb_prior_variance_1_2", "minidiff/ddpm.py",
      "(1 - ab_T) * ones, 0 * x0, ones)", "(1 - ab_T) * ones, 0 * x0, 1.2 * ones)",
      ("tests/test_ddpm.py",)),
    M("ddpm.ancestral_variance_1_3_beta", "minidiff/ddpm.py",
      "        return sched.betas\n", "        return 1.3 * sched.betas\n",
      ("tests/test_ddpm.py",)),
    M("ddpm.ddim_eta_noise_ignored", "minidiff/ddpm.py",
      "x = a_j * x0_hat + math.sqrt(max(s_j * s_j - s * s, 0.0)) * eps",
      "x = a_j * x0_hat + s_j * eps", ("tests/test_ddpm.py",)),
    # chapter 4: score SDEs
    M("sde.corrector_alpha_inverted", "minidiff/sde.py",
      "a = float(path.alpha(t) / path.alpha(t_prev)) ** 2",
      "a = float(path.alpha(t_prev) / path.alpha(t)) ** 2", ("tests/test_sde.py",)),
    M("sde.corrector_alpha_fourth_power", "minidiff/sde.py",
      "a = float(path.alpha(t) / path.alpha(t_prev)) ** 2",
      "a = float(path.alpha(t) / path.alpha(t_prev)) ** 4", ("tests/test_sde.py",)),
    M("sde.corrector_step_four_times", "minidiff/sde.py",
      "e = 2.0 * a * (snr * z_norm / s_norm) ** 2", "e = 8.0 * a * (snr * z_norm / s_norm) ** 2",
      ("tests/test_sde.py",)),
    # chapter 5: samplers
    M("samplers.dpm_solver_r_inverted", "minidiff/samplers.py",
      "r = math.log(sigmas[k - 1] / s) / h", "r = h / math.log(sigmas[k - 1] / s)",
      ("tests/test_samplers.py",)),
    M("samplers.ancestral_sigma_up", "minidiff/samplers.py",
      "up = min(s_next, eta * math.sqrt(s_next**2 * (s**2 - s_next**2) / s**2))",
      "up = min(s_next, eta * math.sqrt(s**2 - s_next**2))", ("tests/test_samplers.py",)),
    M("samplers.heun_trapezoid_weight", "minidiff/samplers.py",
      "x_next = x + (s_next - s_hat) * 0.5 * (d + _d(denoiser, x_next, s_next))",
      "x_next = x + (s_next - s_hat) * 0.6 * (d + _d(denoiser, x_next, s_next))",
      ("tests/test_samplers.py",)),
    # chapter 6: the primitives
    M("conv_fast.weight_grad_taps_swapped", "minidiff/nn/conv_fast.py",
      "dw[i, j] += tmp", "dw[j, i] += tmp", ("tests/test_conv.py",)),
    M("conv_fast.in_place_gemm_overwrites", "minidiff/nn/conv_fast.py",
      "c = gemm(1.0, tap.T, rows[s + off:e + off].T, beta=beta, c=blk.T, overwrite_c=True)",
      "c = gemm(1.0, tap.T, rows[s + off:e + off].T, beta=0.0, c=blk.T, overwrite_c=True)",
      ("tests/test_conv.py",)),
    M("nn.logsumexp_drops_its_shift", "minidiff/nn/layers.py",
      "s = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m",
      "s = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))", ("tests/test_nn.py",)),
    M("threads.shards_weighted_equally", "minidiff/nn/threads.py",
      "total += other[k] * (size / n)", "total += other[k] * (1 / len(sizes))",
      ("tests/test_parallel.py",)),
    M("train.plan_counts_the_first_step", "minidiff/train.py",
      "per_step = (now - first_done) / (plan_after - 1)",
      "per_step = (now - start) / (plan_after - 1)", ("tests/test_train.py",)),
    M("train.replan_keeps_the_first_speed", "minidiff/train.py",
      "per_step = (now - since_plan[1]) / (state.step - since_plan[0])",
      "per_step = (since_plan[1] - first_done) / (plan_after - 1)", ("tests/test_train.py",)),
    M("conv.reference_col2im_overwrites", "minidiff/nn/conv.py",
      "dxp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride] += \\",
      "dxp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride] = \\",
      ("tests/test_conv.py",)),
    M("conv.group_norm_scale_grad", "minidiff/nn/conv.py",
      'da[sl] = onp.einsum("ksc,ksc->kc", gz, xhat)', 'da[sl] = onp.einsum("ksc->kc", gz)',
      ("tests/test_conv.py",)),
    M("attention.key_grad_unscaled", "minidiff/nn/attention.py",
      "out[1] = (_t(ds) @ q) * scale", "out[1] = _t(ds) @ q", ("tests/test_conv.py",)),
    M("layers.modulated_ln_shift_grad", "minidiff/nn/layers.py",
      "out.append(reduce_to(g, shift))", "out.append(reduce_to(2 * g, shift))",
      ("tests/test_nn.py",)),
    # chapter 7: guidance
    M("guidance.cfg_from_the_conditional", "minidiff/guidance.py",
      "return eps_neg + w * (eps_pos - eps_neg)", "return eps_pos + w * (eps_pos - eps_neg)",
      ("tests/test_guidance.py",)),
    M("guidance.bayes_rule_sign", "minidiff/guidance.py",
      "return conditional_score(mix, x, labels, alpha, sigma) - mix.noised(alpha, sigma).score(x)",
      "return conditional_score(mix, x, labels, alpha, sigma) + mix.noised(alpha, sigma).score(x)",
      ("tests/test_guidance.py",)),
    M("guidance.guided_score_branches_swapped", "minidiff/guidance.py",
      "return guide(conditional_score(mix, x, labels, alpha, sigma),",
      "return guide(2 * mix.noised(alpha, sigma).score(x) - conditional_score(mix, x, labels, "
      "alpha, sigma),", ("tests/test_guidance.py",)),
    M("guidance.classifier_guidance_sign", "minidiff/guidance.py",
      "return eps + scale * eps_from_score(g, float(sigma_of(i)))",
      "return eps - scale * eps_from_score(g, float(sigma_of(i)))", ("tests/test_guidance.py",)),
    M("guidance.classifier_guidance_without_sigma", "minidiff/guidance.py",
      "return eps + scale * eps_from_score(g, float(sigma_of(i)))",
      "return eps + scale * eps_from_score(g, 1.0)", ("tests/test_guidance.py",)),
    M("guidance.tilt_not_by_w", "minidiff/guidance.py",
      "return mix.log_prob(x) + w * class_log_posterior(mix, x, labels)",
      "return mix.log_prob(x) + (w + 1) * class_log_posterior(mix, x, labels)",
      ("tests/test_guidance.py",)),
    M("guidance.interval_end_excluded", "minidiff/guidance.py",
      "return int(inside[0]), int(inside[-1]) + 1", "return int(inside[0]), int(inside[-1])",
      ("tests/test_guidance.py",)),
    M("metrics.knn_radius_off_by_one", "minidiff/metrics.py",
      "return onp.sort(d, axis=1)[:, k]", "return onp.sort(d, axis=1)[:, k - 1]",
      ("tests/test_metrics.py",)),
    M("metrics.recall_from_the_real_radii", "minidiff/metrics.py",
      "recall = onp.mean((d.T <= knn_radii(fake, k)[None]).any(axis=1))",
      "recall = onp.mean((d.T <= knn_radii(real, k)[:, None]).any(axis=1))",
      ("tests/test_metrics.py",)),
    # chapter 8: captions, the autoencoder, the text encoder, cross-attention, guidance by caption
    M("captions.thickness_without_the_two", "minidiff/captions.py",
      "return 2.0 * intensity.sum(axis=(1, 2)) / onp.maximum(edges, 1)",
      "return intensity.sum(axis=(1, 2)) / onp.maximum(edges, 1)", ("tests/test_captions.py",)),
    M("captions.slant_over_var_x", "minidiff/captions.py",
      "return (w * dx * dy).sum(axis=(1, 2)) / onp.maximum((w * dy * dy).sum(axis=(1, 2)), 1e-8)",
      "return (w * dx * dy).sum(axis=(1, 2)) / onp.maximum((w * dx * dx).sum(axis=(1, 2)), 1e-8)",
      ("tests/test_captions.py",)),
    M("captions.two_bins_not_three", "minidiff/captions.py",
      "out[name] = (v > lo).astype(int) + (v > hi).astype(int)",
      "out[name] = 2 * (v > lo).astype(int)", ("tests/test_captions.py",)),
    M("vae.reparametrise_with_the_variance", "minidiff/models/vae.py",
      "return mean + np.exp(0.5 * logvar) * eps", "return mean + np.exp(logvar) * eps",
      ("tests/test_vae.py",)),
    M("vae.kl_logvar_sign", "minidiff/models/vae.py",
      "per_dim = 0.5 * (mean ** 2 + np.exp(logvar) - 1.0 - logvar)",
      "per_dim = 0.5 * (mean ** 2 + np.exp(logvar) - 1.0 + logvar)", ("tests/test_vae.py",)),
    M("latent.psnr_peak_not_squared", "minidiff/latent.py",
      "return 10.0 * onp.log10(peak_to_peak ** 2 / onp.maximum(mse, 1e-12))",
      "return 10.0 * onp.log10(peak_to_peak / onp.maximum(mse, 1e-12))", ("tests/test_vae.py",)),
    M("latent.scale_is_the_std", "minidiff/latent.py",
      "return float(1.0 / z.std())", "return float(z.std())", ("tests/test_latent.py",)),
    M("text.contrastive_one_direction", "minidiff/models/text.py",
      "return 0.5 * (rows + cols)", "return rows", ("tests/test_text.py",)),
    M("attention.padding_not_masked", "minidiff/nn/attention.py",
      "s = onp.where(mask, s, -onp.inf)", "s = onp.where(mask, s, 0.0)",
      ("tests/test_text.py",)),
    M("unet.cross_attention_mask_heads_misaligned", "minidiff/models/unet.py",
      "mask=onp.repeat(mask, heads, axis=0))  # (N*heads, L, C/heads)",
      "mask=onp.tile(mask, (heads, 1)))  # (N*heads, L, C/heads)", ("tests/test_text.py",)),
    M("latent.caption_guidance_branches_swapped", "minidiff/latent.py",
      "return guide(out[:n], out[n:], onp.asarray(guidance, out.dtype))",
      "return guide(out[n:], out[:n], onp.asarray(guidance, out.dtype))",
      ("tests/test_text.py",)),
    # chapter 10: rectified flow, SD3's densities, reflow, MMDiT, FLUX, QK-norm
    M("flow.eps_factor_not_divided", "minidiff/flow.py",
      'return {"x0": u, "eps": u / x0_error_factor("eps", a, s)}',
      'return {"x0": u, "eps": u * x0_error_factor("eps", a, s)}', ("tests/test_flow.py",)),
    M("flow.logit_normal_pdf_without_jacobian", "minidiff/flow.py",
      "s * math.sqrt(2 * math.pi) * t * (1 - t))", "s * math.sqrt(2 * math.pi))",
      ("tests/test_flow.py",)),
    M("flow.mode_cos_not_squared", "minidiff/flow.py",
      "return 1.0 - u - scale * (onp.cos(math.pi * u / 2) ** 2 - 1.0 + u)",
      "return 1.0 - u - scale * (onp.cos(math.pi * u / 2) - 1.0 + u)", ("tests/test_flow.py",)),
    M("flow.cosmap_tan_half_angle_lost", "minidiff/flow.py",
      "return 1.0 - 1.0 / (onp.tan(math.pi * rng.uniform(size=n) / 2) + 1.0)",
      "return 1.0 - 1.0 / (onp.tan(math.pi * rng.uniform(size=n) / 4) + 1.0)",
      ("tests/test_flow.py",)),
    M("flow.shift_inverted", "minidiff/flow.py",
      "return shift * t / (1.0 + (shift - 1.0) * t)", "return t / (shift - (shift - 1.0) * t)",
      ("tests/test_flow.py",)),
    M("flow.euler_step_forward_in_time", "minidiff/flow.py",
      "x = x + (t1 - t0) * velocity(x, t0)", "x = x + (t0 - t1) * velocity(x, t0)",
      ("tests/test_flow.py",)),
    M("flow.straightness_against_the_start", "minidiff/flow.py",
      "d = (x1 - x) / (ts[0] - ts[-1])  # the straight displacement per unit time",
      "d = x1 / (ts[0] - ts[-1])  # the straight displacement per unit time",
      ("tests/test_flow.py",)),
    M("flow.reflow_pairs_shuffled", "minidiff/flow.py",
      "eps = onp.asarray(pairs[idx], dtype) if pairs is not None \\",
      "eps = onp.asarray(pairs[idx[::-1]], dtype) if pairs is not None \\",
      ("tests/test_flow.py", "tests/test_latent_flow.py")),
    M("mmdit.text_padding_not_masked", "minidiff/models/mmdit.py",
      "keys = onp.concatenate([mask, onp.ones((mask.shape[0], qkv_img[0].shape[1]), bool)], "
      "axis=1)",
      "keys = onp.concatenate([mask | True, onp.ones((mask.shape[0], qkv_img[0].shape[1]), "
      "bool)], axis=1)", ("tests/test_mmdit.py",)),
    M("mmdit.streams_share_the_image_weights", "minidiff/models/mmdit.py",
      "q = p[name]\n        mods[name]", "q = p[\"img\"]\n        mods[name]",
      ("tests/test_mmdit.py",)),
    M("mmdit.single_block_mlp_not_activated", "minidiff/models/mmdit.py",
      'out = linear(p["lin2"], np.concatenate([o, gelu(m)], axis=1))',
      'out = linear(p["lin2"], np.concatenate([o, m], axis=1))', ("tests/test_mmdit.py",)),
    M("mmdit.pooled_caption_ignored", "minidiff/models/mmdit.py",
      'c = t_emb + linear(params["pooled2"], silu(linear(params["pooled1"], pooled)))  # (N, D)',
      'c = t_emb + 0.0 * linear(params["pooled2"], silu(linear(params["pooled1"], pooled)))',
      ("tests/test_mmdit.py",)),
    M("layers.rms_norm_without_the_mean", "minidiff/nn/layers.py",
      "return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale",
      "return x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True) + eps) * scale",
      ("tests/test_mmdit.py",)),
    M("process.gvp_dsigma_sign", "minidiff/process.py",
      "return 0.5 * onp.pi * np.cos(0.5 * onp.pi * _times(t))",
      "return -0.5 * onp.pi * np.cos(0.5 * onp.pi * _times(t))", ("tests/test_interpolants.py",)),
    M("process.gvp_sigma_full_angle", "minidiff/process.py",
      "return np.sin(0.5 * onp.pi * _times(t))", "return np.sin(onp.pi * _times(t))",
      ("tests/test_interpolants.py",)),
    M("interpolants.sde_score_term_not_halved", "minidiff/interpolants.py",
      "return lambda x, t: velocity(x, t) - 0.5 * w(t) * score(x, t)",
      "return lambda x, t: velocity(x, t) - w(t) * score(x, t)", ("tests/test_interpolants.py",)),
    M("interpolants.sde_noise_not_square_rooted", "minidiff/interpolants.py",
      "x = x + math.sqrt(w_fn(t0) * (t0 - t1)) * rng.standard_normal(x.shape)",
      "x = x + w_fn(t0) * math.sqrt(t0 - t1) * rng.standard_normal(x.shape)",
      ("tests/test_interpolants.py",)),
    M("interpolants.sit_score_sign", "minidiff/interpolants.py",
      "return (lam * v - x) / (sigma * sigma - lam * dsigma * sigma)",
      "return (lam * v - x) / (sigma * sigma + lam * dsigma * sigma)",
      ("tests/test_interpolants.py",)),
    M("interpolants.discrete_grid_off_by_one", "minidiff/interpolants.py",
      "return rng.integers(1, DISCRETE_STEPS + 1, size=n) / DISCRETE_STEPS",
      "return rng.integers(0, DISCRETE_STEPS, size=n) / DISCRETE_STEPS",
      ("tests/test_interpolants.py",)),
    M("interpolants.sin2_not_squared", "minidiff/interpolants.py",
      "return math.sin(math.pi * t) ** 2", "return math.sin(math.pi * t)",
      ("tests/test_interpolants.py",)),
    M("samplers.dpm3m_second_difference_halved", "minidiff/samplers.py",
      "x = x + phi_2 * first - 2.0 * (phi_2 / h - 0.5) * second",
      "x = x + phi_2 * first - (phi_2 / h - 0.5) * second", ("tests/test_samplers.py",)),
    M("distill.target_ratio_inverted", "minidiff/distill.py",
      'ratio = per_sample(sigma_next, z, "sigma_next") / per_sample(sigma, z, "sigma", '
      'positive=True)',
      'ratio = per_sample(sigma, z, "sigma_next") / per_sample(sigma_next, z, "sigma", '
      'positive=True)',
      ("tests/test_distill.py",)),
    M("distill.consistency_c_out_not_shifted", "minidiff/distill.py",
      "(sigma - sigma_min) * sigma_data / root, 1.0 / root)",
      "sigma * sigma_data / root, 1.0 / root)", ("tests/test_distill.py",)),
    M("distill.multistep_renoise_to_the_top", "minidiff/distill.py",
      "x = f(x + math.sqrt(tau**2 - sigma_min**2) * rng.standard_normal(x.shape), tau)",
      "x = f(x + math.sqrt(sigma_max**2 - sigma_min**2) * rng.standard_normal(x.shape), tau)",
      ("tests/test_distill.py",)),
    M("distill.heun_step_without_the_average", "minidiff/distill.py",
      "return x + (s_next - s) * 0.5 * (d + eps_from_x0(denoiser(x_euler, sigma_next), x_euler,",
      "return x + (s_next - s) * (d + eps_from_x0(denoiser(x_euler, sigma_next), x_euler,",
      ("tests/test_distill.py",)),
    M("distill.progressive_first_step_to_the_end", "minidiff/distill.py",
      "x_mid = ddim_step(teacher(x, sigma), x, 1.0, sigma, 1.0, sigma_mid)",
      "x_mid = ddim_step(teacher(x, sigma), x, 1.0, sigma, 1.0, sigma_next)",
      ("tests/test_distill.py",)),
    M("distill.truncated_snr_min", "minidiff/distill.py",
      "return onp.maximum(1.0 / onp.asarray(sigma, dtype=onp.float64) ** 2, 1.0)",
      "return onp.minimum(1.0 / onp.asarray(sigma, dtype=onp.float64) ** 2, 1.0)",
      ("tests/test_distill.py",)),
    M("distill.denoiser_c_out_not_shifted", "minidiff/distill.py",
      "gap = onp.asarray(getval(sigma), dtype=onp.float64) - sigma_min",
      "gap = onp.asarray(getval(sigma), dtype=onp.float64)", ("tests/test_distill.py",)),
    M("distill.ct_pair_with_fresh_noise", "minidiff/distill.py",
      '"x_next": x0 + per_sample(levels[n + 1].astype(x0.dtype), x0) * z,',
      '"x_next": x0 + per_sample(levels[n + 1].astype(x0.dtype), x0) * rng.standard_normal('
      'x0.shape),', ("tests/test_distill.py",)),
    M("distill.cd_target_at_the_upper_level", "minidiff/distill.py",
      'return {"x": x, "sigma": levels[n], "target": target_f(x_hat, levels[n + 1])}',
      'return {"x": x, "sigma": levels[n], "target": target_f(x_hat, levels[n])}',
      ("tests/test_distill.py",)),
    M("distill.heun_counts_two_per_step", "minidiff/distill.py",
      'used = 2 * steps - 1 if solver == "heun" else steps',
      'used = 2 * steps if solver == "heun" else steps', ("tests/test_distill.py",)),
    M("samplers.lambda_grid_linear_in_sigma", "minidiff/samplers.py",
      "return onp.append(onp.exp(onp.linspace(math.log(sigma_max), math.log(sigma_min), n)), 0.0)",
      "return onp.append(onp.linspace(sigma_max, sigma_min, n), 0.0)", ("tests/test_distill.py",)),
    M("unet.guidance_embedding_not_zero", "minidiff/models/unet.py",
      'p["guidance_emb"] = init_linear(rng, ch0, ch0, dtype, zero=True)',
      'p["guidance_emb"] = init_linear(rng, ch0, ch0, dtype)', ("tests/test_distill.py",)),
    M("latent.one_guidance_scale_for_all", "minidiff/latent.py",
      "guidance = onp.asarray(guidance, onp.float64).reshape(n, 1, 1, 1)",
      "guidance = onp.mean(guidance)", ("tests/test_distill.py",)),
    M("latent_flow.loss_target_always_velocity", "minidiff/latent_flow.py",
      'truth = target(kind, batch["x0"], batch["eps"], *coef)',
      'truth = target("velocity", batch["x0"], batch["eps"], *coef)',
      ("tests/test_latent_flow.py",)),
]


def check(mutation, root=ROOT):
    """The mutated text of ``mutation.file``; ``ValueError`` unless ``old`` occurs exactly once."""
    text = (root / mutation.file).read_text()
    count = text.count(mutation.old)
    if count != 1:
        raise ValueError(f"mutation {mutation.name}: its line occurs {count} times in "
                         f"{mutation.file} (expected once): update the list in "
                         "minidiff/tools/mutations.py")
    return text.replace(mutation.old, mutation.new)


def _pytest(where, args, env):
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-m", "not slow", "-p", "no:cacheprovider",
           "--ignore=tests/test_notebooks.py", *args]
    return subprocess.run(cmd, cwd=where, env=env, capture_output=True, text=True).returncode


def run(mutations, root=ROOT, out=print):
    """Apply each mutation in a temporary copy and run the tests; returns the survivors. The
    copy is imported ahead of the installed package (``PYTHONPATH``), and is first checked to
    pass its tests unmutated."""
    survivors = []
    with tempfile.TemporaryDirectory(prefix="minidiff-mutations-") as tmp:
        tmp = Path(tmp)
        for part in ("minidiff", "tests"):
            shutil.copytree(root / part, tmp / part, ignore=shutil.ignore_patterns("__pycache__"))
        for part in ("pyproject.toml", "data"):
            (tmp / part).symlink_to(root / part)  # read only: the data are never mutated
        env = dict(os.environ, PYTHONPATH=str(tmp), MINIDIFF_FAST="1")
        # the copy must pass unmutated, or every mutation would look "caught"
        baseline = sorted({t for m in mutations for t in m.tests})
        if _pytest(tmp, baseline, env) != 0:
            raise RuntimeError(f"the unmutated copy fails {baseline}: fix the tests first")
        for m in mutations:
            original = (tmp / m.file).read_text()
            (tmp / m.file).write_text(check(m, root))
            t0 = time.perf_counter()
            try:
                caught = _pytest(tmp, list(m.tests), env) != 0 or _pytest(tmp, ["tests"], env) != 0
            finally:
                (tmp / m.file).write_text(original)
            out(f"{'caught  ' if caught else 'SURVIVED'} {m.name:42s} "
                f"{time.perf_counter() - t0:5.0f} s")
            if not caught:
                survivors.append(m)
    return survivors


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minidiff.tools.mutations",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", help="run only these mutations (by name)")
    parser.add_argument("--list", action="store_true", help="print the list and stop")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.only and len(chosen) != len(args.only):
        known = {m.name for m in MUTATIONS}
        parser.error(f"unknown mutations: {sorted(set(args.only) - known)}")
    if args.list:
        for m in chosen:
            print(f"{m.name:42s} {m.file}: {m.old.strip()!r} -> {m.new.strip()!r}")
        return 0
    survivors = run(chosen)
    print(f"{len(chosen) - len(survivors)} of {len(chosen)} mutations caught"
          + ("" if not survivors else "; surviving: " + ", ".join(m.name for m in survivors)))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
