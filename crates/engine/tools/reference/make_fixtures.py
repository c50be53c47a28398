#!/usr/bin/env python3
"""Produce the parity fixtures of `crates/engine/tests/fixtures/` with the real PyTorch and diffusers.

The Rust tests only read the JSON this writes; they never need Python. Re-run this after changing what is
recorded, or to check a newer torch/diffusers:

    python3 -m venv /work/venv-ref                      # outside the repository (torch is ~5.7 GB)
    /work/venv-ref/bin/pip install torch diffusers scipy torchsde
    git -C <InvokeAI clone> show HEAD:invokeai/backend/rectified_flow/er_sde_scheduler.py > /tmp/er_sde_scheduler.py
    INVOKEAI_ER_SDE=/tmp/er_sde_scheduler.py /work/venv-ref/bin/python crates/engine/tools/reference/make_fixtures.py

With file names as arguments (`noise.json`, `schedulers.json`, `schedulers_sde.json`) it writes only those.
`dpmpp_sde*` need torchsde as well (`pip install torchsde`).

`er_sde` is InvokeAI's own scheduler class, not a diffusers one: the script imports it from the file that
`INVOKEAI_ER_SDE` names (a copy of InvokeAI's `er_sde_scheduler.py`, kept outside the repository; it needs only
torch, numpy and diffusers) and refuses to run without it, so that the fixtures never silently lose its runs.

Fixtures written (compact JSON, float32 values with 9 significant digits):

- `noise.json`: `torch.randn` golden values for several seeds and sizes (n < 16, n not a multiple of 16, an SD
  latent 1x4x8x8) and one generator drawing several tensors in a row.
- `schedulers.json`: for each scheduler name but `dpmpp_sde*`, full runs of the diffusers scheduler built the way InvokeAI builds
  it (`get_scheduler`: the model's scheduler config + the per-name overrides + the model's prediction type) and
  driven the way InvokeAI drives it (`init_scheduler` slicing, `add_noise` on zero or given latents, the
  `seed ^ 0xFFFFFFFF` step generator), with a deterministic fake model eps(x, t) = 0.1*x + 0.001*t that the Rust
  test reproduces. Each run records the schedule, the noised start, the first scaled model input and the
  latents after every step.
- `schedulers_sde.json`: the same kind of runs for `dpmpp_sde` and `dpmpp_sde_k` (DPMSolverSDEScheduler with
  `noise_sampler_seed` = the seed, as InvokeAI's get_scheduler sets it), plus `brownian`: the values of diffusers'
  BrownianTreeNoiseSampler alone for a few seeds, sigma ranges and (sigma, sigma_next) queries.
"""

import importlib.util
import inspect
import json
import os
import sys
import tempfile

import diffusers
import torch
from diffusers import (
    DPMSolverSDEScheduler,
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    TCDScheduler,
    UniPCMultistepScheduler,
)


def load_er_sde_scheduler():
    """InvokeAI's ERSDEScheduler, imported from the file INVOKEAI_ER_SDE names (see the module docstring)."""
    path = os.environ.get("INVOKEAI_ER_SDE")
    if not path or not os.path.isfile(path):
        sys.exit(
            "set INVOKEAI_ER_SDE to a copy of InvokeAI's invokeai/backend/rectified_flow/er_sde_scheduler.py "
            "(e.g. git show HEAD:invokeai/backend/rectified_flow/er_sde_scheduler.py > /tmp/er_sde_scheduler.py)"
        )
    spec = importlib.util.spec_from_file_location("invokeai_er_sde_scheduler", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ERSDEScheduler


ERSDEScheduler = load_er_sde_scheduler()

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures")

# The scheduler_config.json files of the reference models, as published on the Hugging Face hub.
SD15_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
SD21_V_CONFIG = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
SDXL_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
# name -> (model config, the class that loads it, the UNet's prediction type)
MODEL_CONFIGS = {
    "sd15": (SD15_CONFIG, PNDMScheduler, "epsilon"),
    "sd2v": (SD21_V_CONFIG, DDIMScheduler, "v_prediction"),
    "sdxl": (SDXL_CONFIG, EulerDiscreteScheduler, "epsilon"),
}

# InvokeAI's SCHEDULER_MAP entries for the names the Rust engine implements
# (invokeai/backend/stable_diffusion/schedulers/schedulers.py).
SCHEDULER_MAP = {
    "ddim": (DDIMScheduler, {}),
    "lms": (LMSDiscreteScheduler, {"use_karras_sigmas": False}),
    "lms_k": (LMSDiscreteScheduler, {"use_karras_sigmas": True}),
    "heun": (HeunDiscreteScheduler, {"use_karras_sigmas": False}),
    "heun_k": (HeunDiscreteScheduler, {"use_karras_sigmas": True}),
    "euler": (EulerDiscreteScheduler, {"use_karras_sigmas": False}),
    "euler_k": (EulerDiscreteScheduler, {"use_karras_sigmas": True}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"use_karras_sigmas": False, "solver_order": 2}),
    "dpmpp_2m_k": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True, "solver_order": 2}),
    "dpmpp_2m_sde": (
        DPMSolverMultistepScheduler,
        {"use_karras_sigmas": False, "solver_order": 2, "algorithm_type": "sde-dpmsolver++"},
    ),
    "dpmpp_2m_sde_k": (
        DPMSolverMultistepScheduler,
        {"use_karras_sigmas": True, "solver_order": 2, "algorithm_type": "sde-dpmsolver++"},
    ),
    "dpmpp_3m": (DPMSolverMultistepScheduler, {"use_karras_sigmas": False, "solver_order": 3}),
    "dpmpp_3m_k": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True, "solver_order": 3}),
    "unipc": (UniPCMultistepScheduler, {"use_karras_sigmas": False, "cpu_only": True}),
    "unipc_k": (UniPCMultistepScheduler, {"use_karras_sigmas": True, "cpu_only": True}),
    "ddpm": (DDPMScheduler, {}),
    "deis": (DEISMultistepScheduler, {"use_karras_sigmas": False}),
    "deis_k": (DEISMultistepScheduler, {"use_karras_sigmas": True}),
    "pndm": (PNDMScheduler, {}),
    "kdpm_2": (KDPM2DiscreteScheduler, {"use_karras_sigmas": False}),
    "kdpm_2_k": (KDPM2DiscreteScheduler, {"use_karras_sigmas": True}),
    "kdpm_2_a": (KDPM2AncestralDiscreteScheduler, {"use_karras_sigmas": False}),
    "kdpm_2_a_k": (KDPM2AncestralDiscreteScheduler, {"use_karras_sigmas": True}),
    "dpmpp_2s": (DPMSolverSinglestepScheduler, {"use_karras_sigmas": False, "solver_order": 2}),
    "dpmpp_2s_k": (DPMSolverSinglestepScheduler, {"use_karras_sigmas": True, "solver_order": 2}),
    "lcm": (LCMScheduler, {}),
    "tcd": (TCDScheduler, {}),
    "er_sde": (ERSDEScheduler, {"solver_order": 3, "use_flow_sigmas": False, "stochastic": True}),
    "dpmpp_sde": (DPMSolverSDEScheduler, {"use_karras_sigmas": False, "noise_sampler_seed": 0}),
    "dpmpp_sde_k": (DPMSolverSDEScheduler, {"use_karras_sigmas": True, "noise_sampler_seed": 0}),
}
# Recorded in their own file (schedulers_sde.json), so that schedulers.json stays as it was made.
SDE_NAMES = ["dpmpp_sde", "dpmpp_sde_k"]


def f32(values):
    """Float32 values as JSON numbers with 9 significant digits (enough to round-trip a float32)."""
    return [float(f"{float(v):.9g}") for v in torch.as_tensor(values, dtype=torch.float32).flatten().tolist()]


def number(v):
    v = float(v)
    return int(v) if v.is_integer() else float(f"{v:.9g}")


def load_model_scheduler(key):
    """Load the model's scheduler from a scheduler_config.json, as InvokeAI's model loader does."""
    config, cls, _ = MODEL_CONFIGS[key]
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "scheduler"))
        with open(os.path.join(d, "scheduler", "scheduler_config.json"), "w") as f:
            json.dump(config, f)
        return cls.from_pretrained(d, subfolder="scheduler")


def invokeai_scheduler(name, key, seed=0):
    """InvokeAI's get_scheduler (invokeai/app/invocations/denoise_latents.py), minus the model manager."""
    scheduler_class, extra = SCHEDULER_MAP[name]
    orig = load_model_scheduler(key)
    base = orig.config
    if "_backup" in base:
        base = base["_backup"]
    config = {**base, **extra, "_backup": base}
    config["prediction_type"] = MODEL_CONFIGS[key][2]
    if scheduler_class is DPMSolverSDEScheduler:
        config["noise_sampler_seed"] = seed
    return scheduler_class.from_config(config)


def invokeai_slice(scheduler, steps, denoising_start, denoising_end):
    """InvokeAI's init_scheduler slicing: (full timesteps, start, end)."""
    scheduler.set_timesteps(steps, device="cpu")
    timesteps = scheduler.timesteps
    first_order = timesteps[:: scheduler.order]
    start_val = int(round(scheduler.config["num_train_timesteps"] * (1 - denoising_start)))
    start = len(list(filter(lambda ts: ts >= start_val, first_order)))
    end_val = int(round(scheduler.config["num_train_timesteps"] * (1 - denoising_end)))
    keep = len(list(filter(lambda ts: ts >= end_val, first_order[start:])))
    start *= scheduler.order
    keep *= scheduler.order
    return timesteps, start, min(start + keep, len(timesteps))


def fake_model(x, t):
    return 0.1 * x + 0.001 * float(t)


def run(name, key, steps, seed, shape, denoising_start=0.0, denoising_end=1.0, init_seed=None):
    scheduler = invokeai_scheduler(name, key, seed)
    timesteps, start, end = invokeai_slice(scheduler, steps, denoising_start, denoising_end)
    sigmas = getattr(scheduler, "sigmas", None)
    record = {
        "name": name,
        "model": key,
        "steps": steps,
        "seed": seed,
        "shape": list(shape),
        "denoising_start": denoising_start,
        "denoising_end": denoising_end,
        "init_seed": init_seed,
        "timesteps": [number(t) for t in timesteps.tolist()],
        "sigmas": f32(sigmas) if sigmas is not None else None,
        "init_noise_sigma": number(scheduler.init_noise_sigma),
        "order": scheduler.order,
        "slice": [start, end],
    }
    noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))
    if init_seed is None:
        latents = torch.zeros(shape)
    else:
        latents = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(init_seed)) * 0.5
    if start >= end:
        record.update({"noised": None, "scaled_first": None, "latents": []})
        return record
    x = scheduler.add_noise(latents, noise, timesteps[start : start + 1])
    record["noised"] = f32(x)
    kwargs = {}
    if "generator" in inspect.signature(scheduler.step).parameters:
        kwargs["generator"] = torch.Generator("cpu").manual_seed(seed ^ 0xFFFFFFFF)
    if isinstance(scheduler, TCDScheduler):
        kwargs["eta"] = 1.0  # as InvokeAI's init_scheduler passes it
    out = []
    for k, t in enumerate(timesteps[start:end]):
        x_in = scheduler.scale_model_input(x, t)
        if k == 0:
            record["scaled_first"] = f32(x_in)
        eps = fake_model(x_in, t)
        x = scheduler.step(eps, t, x, **kwargs).prev_sample
        out.append(f32(x))
    record["latents"] = out
    return record


def noise_fixtures():
    cases = []
    for seed, n in [
        (0, 16),
        (0, 60),  # 4*3*5: not a multiple of 16
        (1, 256),  # an SD latent 1x4x8x8
        (42, 256),
        (123456789, 4 * 8 * 12),
        (4294967295, 64),  # the noise node's −1
        (2**32 + 7, 17),  # only the low 32 bits count
        (7, 5),  # n < 16: PyTorch's scalar path
        (7, 15),
        (2024, 1000),
    ]:
        values = torch.randn(n, generator=torch.Generator("cpu").manual_seed(seed))
        cases.append({"seed": seed, "n": n, "values": f32(values)})
    latent = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(31337))
    g = torch.Generator("cpu").manual_seed(99)
    draws = [5, 3, 20, 16, 60, 1]
    stream = [f32(torch.randn(n, generator=g)) for n in draws]
    return {
        "torch": torch.__version__,
        "cases": cases,
        "latent_1x4x8x8": {"seed": 31337, "values": f32(latent)},
        "stream": {"seed": 99, "draws": draws, "values": stream},
    }


def scheduler_fixtures():
    shape = (1, 4, 4, 4)
    runs = []
    for name in [n for n in SCHEDULER_MAP if n not in SDE_NAMES]:
        runs.append(run(name, "sdxl", 4, 1234, shape))
        runs.append(run(name, "sdxl", 10, 5678, shape))
        runs.append(run(name, "sd15", 10, 42, shape))
        runs.append(run(name, "sd2v", 10, 7, shape))
        # Image to image: strength 0.7 from given latents, stopping at 0.9 (a refiner-style split).
        runs.append(run(name, "sdxl", 10, 99, shape, denoising_start=0.3, denoising_end=0.9, init_seed=5))
    # Stochastic schedulers with a latent size that is not a multiple of 16 (the per-step draws use the tail rule).
    runs.append(run("euler_a", "sd15", 6, 2**32 - 1, (1, 4, 3, 5)))
    runs.append(run("dpmpp_2m_sde_k", "sdxl", 6, 3, (1, 4, 3, 5)))
    runs.append(run("ddpm", "sd15", 6, 2**32 - 1, (1, 4, 3, 5)))
    runs.append(run("kdpm_2_a_k", "sdxl", 6, 3, (1, 4, 3, 5)))
    runs.append(run("lcm", "sd15", 6, 2**32 - 1, (1, 4, 3, 5)))
    runs.append(run("tcd", "sdxl", 6, 3, (1, 4, 3, 5)))
    runs.append(run("er_sde", "sd2v", 6, 17, (1, 4, 3, 5)))
    # Longer runs where the multistep solvers reach full order before the final steps.
    for name in ["dpmpp_3m_k", "dpmpp_3m", "lms", "unipc", "heun", "pndm", "kdpm_2_k", "deis"]:
        runs.append(run(name, "sdxl", 25, 11, (1, 4, 2, 2 * 4)))
    for name in ["dpmpp_2s", "dpmpp_2s_k", "er_sde", "lcm", "tcd"]:
        runs.append(run(name, "sdxl", 25, 11, (1, 4, 2, 2 * 4)))
        runs.append(run(name, "sd15", 25, 13, (1, 4, 2, 2 * 4), denoising_start=0.45, init_seed=8))
    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "runs": runs}


def sde_fixtures():
    import torchsde
    from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler

    shape = (1, 4, 4, 4)
    runs = []
    for name in SDE_NAMES:
        runs.append(run(name, "sdxl", 4, 1234, shape))
        runs.append(run(name, "sdxl", 10, 5678, shape))
        runs.append(run(name, "sd15", 10, 42, shape))
        runs.append(run(name, "sd2v", 10, 7, shape))
        runs.append(run(name, "sdxl", 10, 99, shape, denoising_start=0.3, denoising_end=0.9, init_seed=5))
        runs.append(run(name, "sd15", 4, 2**32 - 1, (1, 4, 3, 5)))
        runs.append(run(name, "sdxl", 25, 11, (1, 4, 2, 2 * 4)))
        runs.append(run(name, "sd15", 25, 13, (1, 4, 2, 2 * 4), denoising_start=0.45, init_seed=8))
    brownian = []
    for seed, lo, hi, shape, queries in [
        (0, 0.0291675, 14.614642, (1, 4, 4, 4), [(14.614642, 7.0), (7.0, 3.5), (14.614642, 0.0291675), (1.25, 0.5)]),
        (1234, 0.0291675, 14.614642, (1, 4, 3, 5), [(14.614642, 10.2), (10.2, 6.1), (6.1, 0.0291675)]),
        (2**32 - 1, 0.1, 3.0, (1, 4, 8, 8), [(3.0, 2.999), (2.999, 2.9985), (0.3, 0.1), (2.5, 0.12345678)]),
        (7, 0.03, 80.0, (2, 3), [(80.0, 0.03), (40.0, 1e-2)]),
    ]:
        lo, hi = float(torch.tensor(lo)), float(torch.tensor(hi))
        x = torch.zeros(shape)
        sampler = BrownianTreeNoiseSampler(x, lo, hi, seed)
        values = []
        for a, b in queries:
            a, b = torch.tensor(a), torch.tensor(b)
            values.append(f32(sampler(a, b)))
        brownian.append(
            {
                "seed": seed,
                "sigma_min": lo,
                "sigma_max": hi,
                "shape": list(shape),
                "queries": [[float(torch.tensor(a)), float(torch.tensor(b))] for a, b in queries],
                "values": values,
            }
        )
    return {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "torchsde": torchsde.__version__,
        "runs": runs,
        "brownian": brownian,
    }


def write(name, data):
    path = os.path.join(OUT_DIR, name)
    with open(path, "w") as f:
        json.dump(data, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {os.path.normpath(path)} ({os.path.getsize(path)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    torch.set_num_threads(1)
    os.makedirs(OUT_DIR, exist_ok=True)
    makers = {"noise.json": noise_fixtures, "schedulers.json": scheduler_fixtures, "schedulers_sde.json": sde_fixtures}
    for target in sys.argv[1:] or list(makers):
        if target not in makers:
            sys.exit(f"unknown fixture {target}; choose from {', '.join(makers)}")
        write(target, makers[target]())
