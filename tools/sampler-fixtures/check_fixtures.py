#!/usr/bin/env python3
"""Re-derive the fixtures' results from the JSON alone, in plain numpy (no torch, k-diffusion or
diffusers), to show the fixtures fully determine every result and to document the update rules
the way a port has to write them. Run: python3 check_fixtures.py [FIXTURE_DIR]"""

import json
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DIR = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "crates", "horde-diffusion", "tests",
                                                           "fixtures", "samplers")
TOL = 1e-12


def load(name):
    with open(os.path.join(DIR, name)) as f:
        return json.load(f)


def ancestral(s_from, s_to, eta=1.0):
    if not eta:
        return s_to, 0.0
    up = min(s_to, eta * (s_to ** 2 * (s_from ** 2 - s_to ** 2) / s_from ** 2) ** 0.5)
    return (s_to ** 2 - up ** 2) ** 0.5, up


def lms_coeff(order, t, i, j):
    """Integral over [t[i], t[i+1]] of the Lagrange basis polynomial j (exact, via numpy)."""
    others = [t[i - k] for k in range(order) if k != j]
    poly = np.poly1d([1.0])
    for o in others:
        poly *= np.poly1d([1.0, -o]) / (t[i - j] - o)
    integ = poly.integ()
    return integ(t[i + 1]) - integ(t[i])


def run(name, fx, sch):
    mu, s = np.array(fx["denoiser"]["mu"]), fx["denoiser"]["s"]
    D = lambda x, sig: mu + s * s / (s * s + sig * sig) * (x - mu)
    noise = iter(np.array(fx.get("noise", [])))
    sig = sch["sigmas"]
    x = np.array(fx["initial"]) * sig[0]
    ds = []
    for i in range(len(sig) - 1):
        a, b = sig[i], sig[i + 1]
        den = D(x, a)
        d = (x - den) / a
        if name == "k_euler":
            x = x + d * (b - a)
        elif name == "k_heun":
            if b == 0:
                x = x + d * (b - a)
            else:
                x2 = x + d * (b - a)
                x = x + (d + (x2 - D(x2, b)) / b) / 2 * (b - a)
        elif name == "k_dpm_2":
            if b == 0:
                x = x + d * (b - a)
            else:
                mid = math.exp((math.log(a) + math.log(b)) / 2)
                x2 = x + d * (mid - a)
                x = x + (x2 - D(x2, mid)) / mid * (b - a)
        elif name == "k_lms":
            ds = (ds + [d])[-4:]
            order = min(i + 1, 4)
            x = x + sum(lms_coeff(order, sig, i, j) * dd for j, dd in zip(range(order), reversed(ds)))
        elif name == "k_dpmpp_2m":
            t, tn = -math.log(a), (-math.log(b) if b > 0 else math.inf)
            h = tn - t
            if i == 0 or b == 0:
                dd = den
            else:
                r = (t + math.log(sig[i - 1])) / h
                dd = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old
            x = (b / a) * x - math.expm1(-h) * dd
            old = den
        elif name in ("k_euler_a", "k_dpm_2_a", "k_dpmpp_2s_a"):
            down, up = ancestral(a, b)
            if name == "k_euler_a" or down == 0:
                x = x + d * (down - a)
            elif name == "k_dpm_2_a":
                mid = math.exp((math.log(a) + math.log(down)) / 2)
                x2 = x + d * (mid - a)
                x = x + (x2 - D(x2, mid)) / mid * (down - a)
            else:
                h = math.log(a) - math.log(down)
                sm = math.exp(-(-math.log(a) + h / 2))
                x2 = (sm / a) * x - math.expm1(-h / 2) * den
                x = (down / a) * x - math.expm1(-h) * D(x2, sm)
            if b > 0:
                x = x + next(noise) * up
        elif name == "k_dpmpp_sde":
            if b == 0:
                x = x + d * (b - a)
            else:
                t, tn = -math.log(a), -math.log(b)
                h = tn - t
                sm = math.exp(-(t + h / 2))
                sd, su = ancestral(a, sm)
                s_ = -math.log(sd)
                x2 = (sd / a) * x - math.expm1(t - s_) * den
                x2 = x2 + next(noise) * su
                den2 = D(x2, sm)
                sd, su = ancestral(a, b)
                tn_ = -math.log(sd)
                # r = 1/2, so (1 - 1/(2r)) * den + 1/(2r) * den2 is just den2
                x = (sd / a) * x - math.expm1(t - tn_) * den2
                x = x + next(noise) * su
        else:
            raise KeyError(name)
    return x


def run_diffusers(name, fx, sch, abar):
    mu, s = np.array(fx["denoiser"]["mu"]), fx["denoiser"]["s"]
    D = lambda x, sig: mu + s * s / (s * s + sig * sig) * (x - mu)
    noise = iter(np.array(fx.get("noise", [])))
    ts = sch["timesteps"]
    x_t = np.array(fx["initial"]) * sch["init_noise_sigma"]
    for i, t in enumerate(ts):
        a_t = abar[t]
        sig = math.sqrt((1 - a_t) / a_t)
        x = x_t / math.sqrt(a_t)
        eps = (x - D(x, sig)) / sig
        x0 = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        if name == "DDIM":
            prev = t - 1000 // len(ts)
            a_p = abar[prev] if prev >= 0 else abar[0]
            x_t = math.sqrt(a_p) * x0 + math.sqrt(1 - a_p) * eps
        elif name == "lcm":
            st = t * 10.0
            c_skip, c_out = 0.25 / (st ** 2 + 0.25), st / (st ** 2 + 0.25) ** 0.5
            den = c_out * x0 + c_skip * x_t
            if i < len(ts) - 1:
                a_p = abar[ts[i + 1]]
                x_t = math.sqrt(a_p) * den + math.sqrt(1 - a_p) * next(noise)
            else:
                x_t = den
    return x_t


def main():
    worst = 0.0
    for name in ["k_euler", "k_heun", "k_dpm_2", "k_lms", "k_dpmpp_2m", "k_euler_a", "k_dpm_2_a", "k_dpmpp_2s_a",
                 "k_dpmpp_sde"]:
        fx = load(f"{name}.json")
        for sname, sch in fx["schedules"].items():
            err = float(np.abs(run(name, fx, sch) - np.array(sch["final"])).max())
            worst = max(worst, err)
            print(f"{name:<14} {sname:<9} max |numpy - fixture| = {err:.2e}")
            assert err < TOL, (name, sname, err)
    abar = load("sd1_schedule.json")["alphas_cumprod"]
    for name in ["DDIM", "lcm"]:
        fx = load(f"{name.lower()}.json")
        sch = fx["schedules"]["default"]
        err = float(np.abs(run_diffusers(name, fx, sch, abar) - np.array(sch["final"])).max())
        worst = max(worst, err)
        print(f"{name:<14} {'default':<9} max |numpy - fixture| = {err:.2e}")
        assert err < TOL, (name, err)
    print(f"ok: worst {worst:.2e} < {TOL:g}")


if __name__ == "__main__":
    main()
