#!/usr/bin/env python3
"""Produce `crates/engine/tests/fixtures/sdxl.json`: the SDXL parity reference of `tests/sdxl_parity.rs`.

The tiny SDXL model comes from the Rust generator (`write_tiny` writes it to `<dir>/sdxl`, the same bytes the Rust
test writes), loaded here with diffusers' `StableDiffusionXLPipeline.from_pretrained` (which checks the layout),
transformers and compel, and driven with InvokeAI's semantics (spec generation.md §10.2-§10.3):

    INVOKEAI_ER_SDE=/tmp/er_sde_scheduler.py /work/venv-ref/bin/python crates/engine/tools/reference/make_sdxl_fixtures.py

(`INVOKEAI_ER_SDE` as for make_fixtures.py, whose scheduler table this script imports.)

Run it from the repository (it calls `cargo run -p atelier-engine --example write_tiny`, seed 1234). Recorded
(float32 values with 9 significant digits):

- `tokens`: tokenizer_2's plain ids and compel's 77-token windows (`!` padding).
- `encoder_2`: text_encoder_2 (CLIPTextModelWithProjection) on compel's windows, with clip skip 0 and 1
  (InvokeAI pops the last layers): hidden_states[-2] (penultimate, not normalized) and text_embeds (pooled).
- `prompts`: InvokeAI's `sdxl_compel_prompt` (run_clip_compel for both encoders with
  PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED, zero_on_empty, pooled from compel's get_pooled_embeddings, the
  shorter conditioning zero-padded, cat on the last axis).
- `unet`: one UNet forward with added conditions (text_embeds, time_ids) on torch.randn inputs.
- `runs`: InvokeAI's denoise loop (add_noise on zeros, scale_model_input, one [negative, positive] batch for
  the embeddings, text_embeds and time_ids, CFG, step) for 4 steps, final latents.
"""

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
from compel import Compel, ReturnedEmbeddingsType, SplitLongTextMode
from diffusers import StableDiffusionXLPipeline

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import SCHEDULER_MAP, f32, invokeai_slice  # noqa: E402

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", ".."))
OUT = os.path.join(REPO, "crates", "engine", "tests", "fixtures", "sdxl.json")
SEED = 1234

LONG = "a red cat sitting on the blue house. " * 3 + "a dog in the forest, painting a tree with the red cat; " * 3


def randn(shape, seed):
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))


def skipped(te, clip_skip):
    """InvokeAI's apply_clip_skip: the last layers popped from (a copy of) the encoder."""
    if not clip_skip:
        return te
    te = copy.deepcopy(te)
    inner = getattr(te, "text_model", te)
    inner.encoder.layers = inner.encoder.layers[:-clip_skip]
    return te


def run_clip_compel(tok, te, prompt, get_pooled, clip_skip):
    """InvokeAI's SDXLPromptInvocationBase.run_clip_compel (zero_on_empty=True)."""
    if prompt == "":
        c = torch.zeros((1, te.config.max_position_embeddings, te.config.hidden_size))
        pooled = torch.zeros((1, te.config.hidden_size)) if get_pooled else None
        return c, pooled
    te = skipped(te, clip_skip)
    compel = Compel(
        tokenizer=tok,
        text_encoder=te,
        truncate_long_prompts=False,
        returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
        requires_pooled=get_pooled,
        split_long_text_mode=SplitLongTextMode.SENTENCES,
        device="cpu",
    )
    conjunction = Compel.parse_prompt_string(prompt)
    c, _ = compel.build_conditioning_tensor_for_conjunction(conjunction)
    pooled = compel.conditioning_provider.get_pooled_embeddings([prompt]) if get_pooled else None
    return c, pooled


def sdxl_compel_prompt(pipe, prompt, style, skip_1=0, skip_2=0):
    """InvokeAI's sdxl_compel_prompt without the time ids."""
    c1, _ = run_clip_compel(pipe.tokenizer, pipe.text_encoder, prompt, False, skip_1)
    text_2 = prompt if style.strip() == "" else style
    c2, pooled = run_clip_compel(pipe.tokenizer_2, pipe.text_encoder_2, text_2, True, skip_2)
    if c1.shape[1] < c2.shape[1]:
        c1 = torch.cat([c1, torch.zeros((c1.shape[0], c2.shape[1] - c1.shape[1], c1.shape[2]))], dim=1)
    elif c1.shape[1] > c2.shape[1]:
        c2 = torch.cat([c2, torch.zeros((c2.shape[0], c1.shape[1] - c2.shape[1], c2.shape[2]))], dim=1)
    return torch.cat([c1, c2], dim=-1), pooled


def token_windows(tok, te, prompt):
    compel = Compel(tokenizer=tok, text_encoder=te, truncate_long_prompts=False,
                    split_long_text_mode=SplitLongTextMode.SENTENCES, device="cpu")
    ids, _, _ = compel.conditioning_provider.get_token_ids_and_expand_weights([prompt], [1.0], device="cpu")
    ids = ids.tolist()
    return [ids[i : i + 77] for i in range(0, len(ids), 77)]


def scheduler_for(pipe, name):
    """InvokeAI's get_scheduler with the model's own scheduler configuration."""
    scheduler_class, extra = SCHEDULER_MAP[name]
    base = pipe.scheduler.config
    config = {**base, **extra, "_backup": base}
    return scheduler_class.from_config(config)


def invokeai_denoise(pipe, name, pos, neg, added, noise, steps, cfg, seed):
    unet = pipe.unet
    scheduler = scheduler_for(pipe, name)
    timesteps, start, end = invokeai_slice(scheduler, steps, 0.0, 1.0)
    latents = torch.zeros_like(noise)
    x = scheduler.add_noise(latents, noise, timesteps[start : start + 1])
    kwargs = {}
    params = inspect.signature(scheduler.step).parameters
    if "generator" in params:
        kwargs["generator"] = torch.Generator("cpu").manual_seed(seed ^ 0xFFFFFFFF)
    if "eta" in params:
        kwargs["eta"] = 0.0
    mask = None
    if pos.shape != neg.shape:
        # InvokeAI's _concat_conditionings_for_batch: zero padding with a cross-attention mask.
        length = max(pos.shape[1], neg.shape[1])

        def pad(c):
            m = torch.ones((1, length))
            if c.shape[1] < length:
                m[:, c.shape[1]:] = 0
                c = torch.cat([c, torch.zeros((1, length - c.shape[1], c.shape[2]))], dim=1)
            return c, m

        (pos, pm), (neg, nm) = pad(pos), pad(neg)
        mask = torch.cat([nm, pm])
    for t in timesteps[start:end]:
        x_in = scheduler.scale_model_input(x, t)
        out = unet(torch.cat([x_in, x_in]), t, encoder_hidden_states=torch.cat([neg, pos]),
                   encoder_attention_mask=mask, added_cond_kwargs=added).sample
        uncond, cond = out.chunk(2)
        guided = uncond + cfg * (cond - uncond)
        x = scheduler.step(guided, t, x, **kwargs).prev_sample
    return x


def main():
    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp(prefix="atelier-tiny-sdxl-")
    subprocess.run(
        ["cargo", "run", "-q", "-p", "atelier-engine", "--example", "write_tiny", "--", tmp, str(SEED)],
        cwd=REPO,
        check=True,
    )
    model_dir = os.path.join(tmp, "sdxl")
    pipe = StableDiffusionXLPipeline.from_pretrained(model_dir)
    for m in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        m.eval()
    out = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "seed": SEED,
        "tokens": [],
        "encoder_2": [],
        "prompts": [],
        "runs": [],
    }
    tok2, te2 = pipe.tokenizer_2, pipe.text_encoder_2
    with torch.no_grad():
        # diffusers' own pipeline runs on the model (a smoke test of the layout; its semantics are not InvokeAI's).
        image = pipe("a photo of a cat", num_inference_steps=2, height=64, width=64, output_type="np").images
        assert image.shape == (1, 64, 64, 3), image.shape

        for prompt in ["a photo of a cat", "A  Painting of the RED house,\twith a tree!", "", LONG]:
            out["tokens"].append({"prompt": prompt, "ids": tok2(prompt).input_ids,
                                  "windows": token_windows(tok2, te2, prompt)})

        for prompt, skip in [("a photo of a cat", 0), ("a photo of a cat", 1), (LONG, 0), ("a (red)1.3 cat", 1)]:
            windows = token_windows(tok2, te2, prompt)
            o = skipped(te2, skip)(torch.tensor(windows), output_hidden_states=True)
            out["encoder_2"].append({
                "prompt": prompt, "skipped_layers": skip, "windows": windows,
                "penultimate_shape": list(o.hidden_states[-2].shape), "penultimate": f32(o.hidden_states[-2]),
                "pooled_shape": list(o.text_embeds.shape), "pooled": f32(o.text_embeds),
            })

        for prompt, style, s1, s2 in [
            ("a (red)1.3 cat", "", 0, 0),
            ("", "", 0, 0),
            ("a photo of a cat", "a painting+", 0, 0),
            ("a (red)1.3 cat", "  ", 1, 1),
            (LONG, "", 0, 0),
            ("a cat", LONG, 0, 1),
        ]:
            c, pooled = sdxl_compel_prompt(pipe, prompt, style, s1, s2)
            out["prompts"].append({
                "prompt": prompt, "style": style, "skipped_layers_1": s1, "skipped_layers_2": s2,
                "shape": list(c.shape), "embeds": f32(c), "pooled_shape": list(pooled.shape), "pooled": f32(pooled),
            })

        # One UNet forward with added conditions.
        x = randn((2, 4, 8, 8), 5)
        ctx = randn((2, 77, 96), 6)
        text_embeds = randn((2, 64), 8)
        time_ids = [[64.0, 64.0, 0.0, 0.0, 64.0, 64.0], [1024.0, 768.0, 16.0, 8.0, 1024.0, 1024.0]]
        y = pipe.unet(x, torch.tensor(500.0), encoder_hidden_states=ctx,
                      added_cond_kwargs={"text_embeds": text_embeds, "time_ids": torch.tensor(time_ids)}).sample
        out["unet"] = {"x_seed": 5, "context_seed": 6, "text_embeds_seed": 8, "timestep": 500.0,
                       "time_ids": time_ids, "values": f32(y)}

        runs = [
            # (scheduler, steps, cfg, seed, prompt, negative, positive time ids, negative time ids)
            ("euler", 4, 7.5, 42, "a (red)1.3 cat", "", [64, 64, 0, 0, 64, 64], [64, 64, 0, 0, 64, 64]),
            ("dpmpp_2m", 4, 5.0, 7, "a photo of a cat", "blue", [1024, 1024, 0, 0, 1024, 1024],
             [512, 512, 8, 4, 1024, 1024]),
            ("euler", 4, 6.0, 3, LONG, "a dog", [64, 64, 0, 0, 64, 64], [64, 64, 0, 0, 64, 64]),
        ]
        for name, steps, cfg, seed, prompt, negative, pos_ids, neg_ids in runs:
            pos, pos_pooled = sdxl_compel_prompt(pipe, prompt, "")
            neg, neg_pooled = sdxl_compel_prompt(pipe, negative, "")
            added = {
                "text_embeds": torch.cat([neg_pooled, pos_pooled]),
                "time_ids": torch.tensor([neg_ids, pos_ids], dtype=torch.float32),
            }
            noise = randn((1, 4, 8, 8), seed)
            x = invokeai_denoise(pipe, name, pos, neg, added, noise, steps, cfg, seed)
            image = pipe.vae.decode(x / pipe.vae.config.scaling_factor).sample
            pixels = ((image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1) * 255).round().to(torch.uint8)
            out["runs"].append({
                "scheduler": name, "steps": steps, "cfg_scale": cfg, "seed": seed, "prompt": prompt,
                "negative": negative, "positive_time_ids": pos_ids, "negative_time_ids": neg_ids,
                "latents": f32(x), "pixels": pixels.flatten().tolist(),
            })

    with open(OUT, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {os.path.relpath(OUT, REPO)} ({os.path.getsize(OUT)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
