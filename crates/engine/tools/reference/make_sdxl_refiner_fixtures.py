#!/usr/bin/env python3
"""Produce `crates/engine/tests/fixtures/sdxl_refiner.json`: the SDXL refiner parity reference of
`tests/sdxl_refiner_parity.rs`.

The tiny refiner comes from the Rust generator (`write_tiny` writes it to `<dir>/sdxl-refiner`), loaded here with
diffusers' `StableDiffusionXLImg2ImgPipeline.from_pretrained` (no text_encoder, `requires_aesthetics_score`), and
driven with InvokeAI's semantics:

    INVOKEAI_ER_SDE=/tmp/er_sde_scheduler.py /work/venv-ref/bin/python \
        crates/engine/tools/reference/make_sdxl_refiner_fixtures.py

Recorded (float32 values with 9 significant digits):

- `prompts`: InvokeAI's `sdxl_refiner_compel_prompt` without the time ids: run_clip_compel on text_encoder_2 with
  the style, PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED, zero_on_empty=False, pooled from compel's
  get_pooled_embeddings.
- `unet`: one UNet forward with text_embeds and 5 time ids on torch.randn inputs.
- `runs`: InvokeAI's denoise loop from `denoising_start` on given latents (add_noise at the first kept timestep,
  one [negative, positive] batch, CFG, step), final latents and decoded pixels.
"""

import inspect
import json
import os
import subprocess
import sys
import tempfile

import diffusers
import torch
import transformers
from compel import Compel, ReturnedEmbeddingsType, SplitLongTextMode
from diffusers import StableDiffusionXLImg2ImgPipeline

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import f32, invokeai_slice  # noqa: E402
from make_sdxl_fixtures import LONG, randn, scheduler_for, skipped  # noqa: E402

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", ".."))
OUT = os.path.join(REPO, "crates", "engine", "tests", "fixtures", "sdxl_refiner.json")
SEED = 1234


def refiner_prompt(pipe, style, clip_skip):
    """InvokeAI's SDXLRefinerCompelPromptInvocation: run_clip_compel(clip2, style, get_pooled, zero_on_empty=False)."""
    te = skipped(pipe.text_encoder_2, clip_skip)
    compel = Compel(
        tokenizer=pipe.tokenizer_2,
        text_encoder=te,
        truncate_long_prompts=False,
        returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
        requires_pooled=True,
        split_long_text_mode=SplitLongTextMode.SENTENCES,
        device="cpu",
    )
    conjunction = Compel.parse_prompt_string(style)
    c, _ = compel.build_conditioning_tensor_for_conjunction(conjunction)
    pooled = compel.conditioning_provider.get_pooled_embeddings([style])
    return c, pooled


def denoise(pipe, name, pos, neg, added, latents, noise, steps, cfg, seed, start_at):
    scheduler = scheduler_for(pipe, name)
    timesteps, start, end = invokeai_slice(scheduler, steps, start_at, 1.0)
    x = scheduler.add_noise(latents, noise, timesteps[start : start + 1])
    kwargs = {}
    params = inspect.signature(scheduler.step).parameters
    if "generator" in params:
        kwargs["generator"] = torch.Generator("cpu").manual_seed(seed ^ 0xFFFFFFFF)
    if "eta" in params:
        kwargs["eta"] = 0.0
    assert pos.shape == neg.shape
    for t in timesteps[start:end]:
        x_in = scheduler.scale_model_input(x, t)
        out = pipe.unet(torch.cat([x_in, x_in]), t, encoder_hidden_states=torch.cat([neg, pos]),
                        added_cond_kwargs=added).sample
        uncond, cond = out.chunk(2)
        x = scheduler.step(uncond + cfg * (cond - uncond), t, x, **kwargs).prev_sample
    return x


def main():
    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp(prefix="atelier-tiny-sdxl-refiner-")
    subprocess.run(
        ["cargo", "run", "-q", "-p", "atelier-engine", "--example", "write_tiny", "--", tmp, str(SEED)],
        cwd=REPO,
        check=True,
    )
    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(os.path.join(tmp, "sdxl-refiner"))
    assert pipe.text_encoder is None and pipe.tokenizer is None
    assert pipe.config.requires_aesthetics_score
    for m in (pipe.unet, pipe.vae, pipe.text_encoder_2):
        m.eval()
    out = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "seed": SEED,
        "prompts": [],
        "runs": [],
    }
    with torch.no_grad():
        # diffusers' own img2img pipeline runs on the model (a smoke test of the layout).
        init = torch.rand((1, 3, 64, 64), generator=torch.Generator("cpu").manual_seed(1))
        image = pipe("a photo of a cat", image=init, num_inference_steps=4, strength=0.5,
                     output_type="np").images
        assert image.shape == (1, 64, 64, 3), image.shape

        for style, skip in [("a (red)1.3 cat", 0), ("", 0), ("a photo of a cat", 1), (LONG, 0)]:
            c, pooled = refiner_prompt(pipe, style, skip)
            out["prompts"].append({
                "style": style, "skipped_layers": skip, "shape": list(c.shape), "embeds": f32(c),
                "pooled_shape": list(pooled.shape), "pooled": f32(pooled),
            })

        x = randn((2, 4, 8, 8), 5)
        ctx = randn((2, 77, 64), 6)
        text_embeds = randn((2, 64), 8)
        time_ids = [[64.0, 64.0, 0.0, 0.0, 6.0], [1024.0, 768.0, 16.0, 8.0, 2.5]]
        y = pipe.unet(x, torch.tensor(500.0), encoder_hidden_states=ctx,
                      added_cond_kwargs={"text_embeds": text_embeds, "time_ids": torch.tensor(time_ids)}).sample
        out["unet"] = {"x_seed": 5, "context_seed": 6, "text_embeds_seed": 8, "timestep": 500.0,
                       "time_ids": time_ids, "values": f32(y)}

        runs = [
            # (scheduler, steps, cfg, seed, latents seed, denoising_start, style, negative, pos ids, neg ids)
            ("euler", 10, 5.0, 42, 9, 0.8, "a (red)1.3 cat", "", [64, 64, 0, 0, 6.0], [64, 64, 0, 0, 2.5]),
            ("dpmpp_2m", 8, 7.5, 7, 10, 0.5, "a photo of a cat", "blue", [1024, 1024, 0, 0, 6.0],
             [1024, 1024, 0, 0, 2.5]),
        ]
        for name, steps, cfg, seed, latents_seed, start_at, style, negative, pos_ids, neg_ids in runs:
            pos, pos_pooled = refiner_prompt(pipe, style, 0)
            neg, neg_pooled = refiner_prompt(pipe, negative, 0)
            added = {
                "text_embeds": torch.cat([neg_pooled, pos_pooled]),
                "time_ids": torch.tensor([neg_ids, pos_ids], dtype=torch.float32),
            }
            latents = randn((1, 4, 8, 8), latents_seed)
            noise = randn((1, 4, 8, 8), seed)
            x = denoise(pipe, name, pos, neg, added, latents, noise, steps, cfg, seed, start_at)
            image = pipe.vae.decode(x / pipe.vae.config.scaling_factor).sample
            pixels = ((image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1) * 255).round().to(torch.uint8)
            out["runs"].append({
                "scheduler": name, "steps": steps, "cfg_scale": cfg, "seed": seed, "latents_seed": latents_seed,
                "denoising_start": start_at, "style": style, "negative": negative,
                "positive_time_ids": pos_ids, "negative_time_ids": neg_ids,
                "latents": f32(x), "pixels": pixels.flatten().tolist(),
            })

    with open(OUT, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {os.path.relpath(OUT, REPO)} ({os.path.getsize(OUT)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
