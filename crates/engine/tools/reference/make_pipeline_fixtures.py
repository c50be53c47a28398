#!/usr/bin/env python3
"""Produce `crates/engine/tests/fixtures/pipeline.json` (and `pipeline_sde.json`): the candle pipeline's parity
reference.

The tiny models come from the Rust generator (the same bytes the Rust tests write), loaded here with diffusers,
transformers and compel and driven with InvokeAI's semantics (spec generation.md §10.2-§10.5), not diffusers'
pipelines (which multiply the start latents by init_noise_sigma):

    /work/venv-ref/bin/pip install torch diffusers transformers compel scipy torchsde
    /work/venv-ref/bin/python crates/engine/tools/reference/make_pipeline_fixtures.py

It runs `cargo run --release -p atelier-engine --example write_tiny -- <tmp>` itself (seed 1234), so run it from
the repository; with `ATELIER_TINY_DIR=<dir>` it uses models that example already wrote there. With file names as
arguments (`pipeline.json`, `pipeline_sde.json`) it writes only those. Recorded (float32 values with 9 significant digits; pixels as integers):

- `tokens`: compel's 77-token windows (truncate_long_prompts=False, SplitLongTextMode.SENTENCES, as InvokeAI's
  `compel` node builds it) and the plain CLIPTokenizer ids, for SD1 (`<|endoftext|>` padding) and SD2 (`!`).
- `clip`: compel's conditioning tensor for a few prompts, with clip skip 0 and 1 (InvokeAI pops the last layers).
- `unet`: one UNet forward on inputs drawn with torch.randn (the Rust test redraws them bit-identically).
- `vae_decode` / `vae_encode`: one decode (float image before quantisation and the 8-bit pixels) and one encode
  (the distribution mean times scaling_factor) of a synthetic image.
- `runs`: full prompt-to-pixels runs (InvokeAI's denoise loop: add_noise on zeros, scale_model_input, one
  [negative, positive] UNet batch, CFG, optional rescale, step), final latents and pixels.

`pipeline_sde.json` holds only `seed` and `runs`: text-to-image and image-to-image runs with `dpmpp_sde` and
`dpmpp_sde_k` (DPMSolverSDEScheduler, `noise_sampler_seed` = the seed as InvokeAI sets it; needs torchsde).
"""

import contextlib
import copy
import inspect
import json
import os
import subprocess
import sys
import tempfile

import diffusers
import torch
import transformers
from compel import Compel, SplitLongTextMode
import diffusers.models.activations as activations
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DPMSolverSDEScheduler, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import SCHEDULER_MAP, f32, invokeai_slice  # noqa: E402

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", ".."))
FIXTURES = os.path.join(REPO, "crates", "engine", "tests", "fixtures")
SEED = 1234

PROMPTS = [
    "a photo of a cat",
    "A  Painting of the RED house,\twith a tree!",
    "",
    # > 75 tokens with a sentence end: compel splits after the last '.' within the first 75 tokens.
    "a red cat sitting on the blue house. " * 3 + "a dog in the forest, painting a tree with the red cat; " * 3,
]


@contextlib.contextmanager
def candle_geglu():
    """candle's UNet computes the GEGLU gate with the tanh approximation of GELU where diffusers uses the exact
    one; inside this context diffusers does what candle does, which isolates that one known difference."""
    original = activations.GEGLU.gelu
    activations.GEGLU.gelu = lambda self, gate: F.gelu(gate, approximate="tanh")
    try:
        yield
    finally:
        activations.GEGLU.gelu = original


def randn(shape, seed):
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))


def load(model_dir):
    unet, info = UNet2DConditionModel.from_pretrained(os.path.join(model_dir, "unet"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    vae, info = AutoencoderKL.from_pretrained(os.path.join(model_dir, "vae"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    te, info = CLIPTextModel.from_pretrained(os.path.join(model_dir, "text_encoder"), output_loading_info=True)
    assert not info["missing_keys"], info
    tok = CLIPTokenizer.from_pretrained(os.path.join(model_dir, "tokenizer"))
    for m in (unet, vae, te):
        m.eval()
    return tok, te, unet, vae


def compel_for(tok, te, clip_skip):
    """InvokeAI's compel node: clip skip pops the last layers of a copy of the encoder."""
    if clip_skip:
        te = copy.deepcopy(te)
        # transformers 4.x nests the encoder under `text_model`, 5.x does not.
        inner = getattr(te, "text_model", te)
        inner.encoder.layers = inner.encoder.layers[:-clip_skip]
    return Compel(
        tokenizer=tok,
        text_encoder=te,
        truncate_long_prompts=False,
        split_long_text_mode=SplitLongTextMode.SENTENCES,
        device="cpu",
    )


def encode(tok, te, prompt, clip_skip=0):
    compel = compel_for(tok, te, clip_skip)
    conjunction = Compel.parse_prompt_string(prompt)
    c, _ = compel.build_conditioning_tensor_for_conjunction(conjunction)
    return c


def token_windows(tok, te, prompt):
    compel = compel_for(tok, te, 0)
    ids, _, _ = compel.conditioning_provider.get_token_ids_and_expand_weights([prompt], [1.0], device="cpu")
    ids = ids.tolist()
    return [ids[i : i + 77] for i in range(0, len(ids), 77)]


def scheduler_for(model_dir, name, prediction_type, seed=0):
    """InvokeAI's get_scheduler with the model's own scheduler folder."""
    scheduler_class, extra = SCHEDULER_MAP[name]
    with open(os.path.join(model_dir, "scheduler", "scheduler_config.json")) as f:
        cls = {"PNDMScheduler": PNDMScheduler, "DDIMScheduler": DDIMScheduler}[json.load(f)["_class_name"]]
    orig = cls.from_pretrained(model_dir, subfolder="scheduler")
    base = orig.config
    config = {**base, **extra, "_backup": base}
    config["prediction_type"] = prediction_type
    if scheduler_class is DPMSolverSDEScheduler:
        config["noise_sampler_seed"] = seed
    return scheduler_class.from_config(config)


def invokeai_denoise(model_dir, unet, name, prediction_type, pos, neg, noise, latents, steps, cfg, rescale,
                     denoising_start, denoising_end, seed):
    scheduler = scheduler_for(model_dir, name, prediction_type, seed)
    timesteps, start, end = invokeai_slice(scheduler, steps, denoising_start, denoising_end)
    if latents is None:
        latents = torch.zeros_like(noise)
    if start >= end:
        return latents
    x = latents
    if noise is not None:
        x = scheduler.add_noise(latents, noise, timesteps[start : start + 1])
    kwargs = {}
    params = inspect.signature(scheduler.step).parameters
    if "generator" in params:
        kwargs["generator"] = torch.Generator("cpu").manual_seed(seed ^ 0xFFFFFFFF)
    if "eta" in params:
        kwargs["eta"] = 0.0
    for i, t in enumerate(timesteps[start:end]):
        x_in = scheduler.scale_model_input(x, t)
        out = unet(torch.cat([x_in, x_in]), t, encoder_hidden_states=torch.cat([neg, pos])).sample
        uncond, cond = out.chunk(2)
        scale = cfg[i] if isinstance(cfg, list) else cfg
        guided = uncond + scale * (cond - uncond)
        if rescale > 0:
            ro_pos = torch.std(cond, dim=(1, 2, 3), keepdim=True)
            ro_cfg = torch.std(guided, dim=(1, 2, 3), keepdim=True)
            guided = rescale * (guided * (ro_pos / ro_cfg)) + (1.0 - rescale) * guided
        x = scheduler.step(guided, t, x, **kwargs).prev_sample
    return x


def decode(vae, latents):
    image = vae.decode(latents / vae.config.scaling_factor).sample
    image = (image / 2 + 0.5).clamp(0, 1)
    pixels = (image.permute(0, 2, 3, 1) * 255).round().to(torch.uint8)
    return image, pixels


def synthetic_image(w, h):
    """An RGB u8 image (H, W, 3) the Rust test rebuilds: (7x + 13y + 50c + xy) mod 256."""
    img = torch.zeros((h, w, 3), dtype=torch.uint8)
    for y in range(h):
        for x in range(w):
            for c in range(3):
                img[y, x, c] = (7 * x + 13 * y + 50 * c + x * y) % 256
    return img


def tiny_models():
    """The directory with the tiny models: ATELIER_TINY_DIR, or a fresh one the Rust example writes."""
    given = os.environ.get("ATELIER_TINY_DIR")
    if given:
        return given
    tmp = tempfile.mkdtemp(prefix="atelier-tiny-")
    subprocess.run(
        ["cargo", "run", "-q", "--release", "-p", "atelier-engine", "--example", "write_tiny", "--", tmp, str(SEED)],
        cwd=REPO,
        check=True,
    )
    return tmp


def write(name, out):
    path = os.path.join(FIXTURES, name)
    with open(path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {os.path.relpath(path, REPO)} ({os.path.getsize(path)} bytes)", file=sys.stderr)


def main():
    torch.set_num_threads(1)
    targets = sys.argv[1:] or ["pipeline.json", "pipeline_sde.json"]
    for target in targets:
        if target not in ("pipeline.json", "pipeline_sde.json"):
            sys.exit(f"unknown fixture {target}; choose from pipeline.json, pipeline_sde.json")
    tmp = tiny_models()
    models = {name: (os.path.join(tmp, name), load(os.path.join(tmp, name))) for name in ["sd1", "sd2", "sd2v"]}
    with torch.no_grad():
        if "pipeline.json" in targets:
            write("pipeline.json", pipeline_fixtures(models))
        if "pipeline_sde.json" in targets:
            import torchsde

            out = {
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "torchsde": torchsde.__version__,
                "seed": SEED,
                "runs": record_runs(models, SDE_RUNS),
            }
            write("pipeline_sde.json", out)


# (family, scheduler, prediction, steps, cfg, rescale, start, end, seed, prompt, negative, img2img)
SDE_RUNS = [
    ("sd1", "dpmpp_sde", "epsilon", 4, 7.5, 0.0, 0.0, 1.0, 42, PROMPTS[0], "", False),
    ("sd1", "dpmpp_sde_k", "epsilon", 4, 7.5, 0.0, 0.0, 1.0, 42, PROMPTS[0], "", False),
    ("sd1", "dpmpp_sde", "epsilon", 4, 7.5, 0.0, 0.5, 1.0, 3, PROMPTS[0], "", True),
    ("sd1", "dpmpp_sde_k", "epsilon", 4, 7.5, 0.0, 0.5, 1.0, 3, PROMPTS[0], "", True),
    ("sd2v", "dpmpp_sde_k", "v_prediction", 4, 7.5, 0.0, 0.0, 1.0, 7, PROMPTS[1], "a dog", False),
]


def pipeline_fixtures(models):
    out = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "seed": SEED,
        "tokens": [],
        "clip": [],
        "runs": [],
    }
    for family in ["sd1", "sd2"]:
        _, (tok, te, _, _) = models[family]
        for prompt in PROMPTS:
            out["tokens"].append(
                {
                    "model": family,
                    "prompt": prompt,
                    "ids": tok(prompt).input_ids,
                    "windows": token_windows(tok, te, prompt),
                }
            )
    for family, prompt, skip in [
        ("sd1", PROMPTS[0], 0),
        ("sd1", PROMPTS[0], 1),
        ("sd1", PROMPTS[3], 0),
        ("sd1", "", 0),
        ("sd2", PROMPTS[1], 0),
    ]:
        _, (tok, te, _, _) = models[family]
        c = encode(tok, te, prompt, skip)
        out["clip"].append(
            {"model": family, "prompt": prompt, "skipped_layers": skip, "shape": list(c.shape), "values": f32(c)}
        )

    # One UNet forward per family on torch.randn inputs.
    out["unet"] = []
    for family, t in [("sd1", 500.0), ("sd2", 667.25)]:
        _, (_, _, unet, _) = models[family]
        x = randn((2, 4, 8, 8), 5)
        ctx = randn((2, 77, 32), 6)
        y = unet(x, torch.tensor(t), encoder_hidden_states=ctx).sample
        with candle_geglu():
            y_tanh = unet(x, torch.tensor(t), encoder_hidden_states=ctx).sample
        out["unet"].append(
            {"model": family, "x_seed": 5, "context_seed": 6, "timestep": t, "values": f32(y),
             "values_tanh_geglu": f32(y_tanh)}
        )

    # VAE decode of torch.randn latents, and encode of a synthetic image.
    _, (_, _, _, vae) = models["sd1"]
    lat = randn((1, 4, 8, 8), 7)
    image, pixels = decode(vae, lat)
    out["vae_decode"] = {"latents_seed": 7, "image": f32(image), "pixels": pixels.flatten().tolist()}
    img = synthetic_image(64, 48)
    x = img.permute(2, 0, 1).unsqueeze(0).float() / 255.0 * 2.0 - 1.0
    mean = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    out["vae_encode"] = {"width": 64, "height": 48, "shape": list(mean.shape), "latents": f32(mean)}

    runs = [
        # (family, scheduler, prediction, steps, cfg, rescale, start, end, seed, prompt, negative, img2img)
        ("sd1", "euler", "epsilon", 4, 7.5, 0.0, 0.0, 1.0, 42, PROMPTS[0], "", False),
        ("sd1", "dpmpp_2m", "epsilon", 4, 7.5, 0.0, 0.0, 1.0, 42, PROMPTS[0], "", False),
        ("sd1", "euler_a", "epsilon", 4, [7.5, 6.0, 5.0, 4.0], 0.0, 0.0, 1.0, 7, PROMPTS[1], "blue", False),
        ("sd1", "ddim", "epsilon", 5, 7.5, 0.0, 0.4, 1.0, 3, PROMPTS[0], "", True),
        ("sd2", "dpmpp_2m", "epsilon", 4, 5.0, 0.0, 0.0, 1.0, 11, PROMPTS[1], "", False),
        ("sd2v", "euler", "v_prediction", 4, 7.5, 0.7, 0.0, 1.0, 42, PROMPTS[0], "a dog", False),
        ("sd2v", "dpmpp_2m", "v_prediction", 4, 7.5, 0.0, 0.0, 1.0, 42, PROMPTS[3], "", False),
    ]
    out["runs"] = record_runs(models, runs)
    return out


def record_runs(models, runs):
    out = []
    for family, name, pred, steps, cfg, rescale, start, end, seed, prompt, negative, img2img in runs:
        model_dir, (tok, te, unet, vae) = models[family]
        pos = encode(tok, te, prompt)
        neg = encode(tok, te, negative)
        noise = randn((1, 4, 8, 8), seed)
        latents = None
        if img2img:
            img = synthetic_image(64, 64)
            x = img.permute(2, 0, 1).unsqueeze(0).float() / 255.0 * 2.0 - 1.0
            latents = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
        x = invokeai_denoise_any(model_dir, unet, name, pred, pos, neg, noise, latents, steps, cfg, rescale,
                                 start, end, seed)
        _, pixels = decode(vae, x)
        with candle_geglu():
            x_tanh = invokeai_denoise_any(model_dir, unet, name, pred, pos, neg, noise, latents, steps, cfg,
                                          rescale, start, end, seed)
        _, pixels_tanh = decode(vae, x_tanh)
        out.append(
            {
                "model": family,
                "scheduler": name,
                "steps": steps,
                "cfg_scale": cfg,
                "cfg_rescale_multiplier": rescale,
                "denoising_start": start,
                "denoising_end": end,
                "seed": seed,
                "prompt": prompt,
                "negative": negative,
                "img2img": img2img,
                "latents": f32(x),
                "pixels": pixels.flatten().tolist(),
                "latents_tanh_geglu": f32(x_tanh),
                "pixels_tanh_geglu": pixels_tanh.flatten().tolist(),
            }
        )
    return out


def invokeai_denoise_any(model_dir, unet, name, pred, pos, neg, noise, latents, steps, cfg, rescale, start, end,
                         seed):
    """InvokeAI's loop; when the conditionings differ in length, the [negative, positive] batch is zero-padded
    with a cross-attention mask hiding the padding (InvokeAI's _concat_conditionings_for_batch)."""
    if pos.shape == neg.shape:
        return invokeai_denoise(model_dir, unet, name, pred, pos, neg, noise, latents, steps, cfg, rescale, start,
                                end, seed)
    length = max(pos.shape[1], neg.shape[1])

    def pad(c):
        mask = torch.ones((1, length))
        if c.shape[1] < length:
            mask[:, c.shape[1]:] = 0
            c = torch.cat([c, torch.zeros((1, length - c.shape[1], c.shape[2]))], dim=1)
        return c, mask

    (pp, pm), (nn_, nm) = pad(pos), pad(neg)
    mask = torch.cat([nm, pm])
    original = unet.forward

    def masked(sample, timestep, encoder_hidden_states, **kw):
        return original(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                        encoder_attention_mask=mask, **kw)

    unet.forward = masked
    try:
        return invokeai_denoise(model_dir, unet, name, pred, pp, nn_, noise, latents, steps, cfg, rescale, start,
                                end, seed)
    finally:
        unet.forward = original


if __name__ == "__main__":
    main()
