#!/usr/bin/env python3
"""Produce `crates/engine/tests/fixtures/sdxl_lora.json`: SDXL LoRA merging parity reference (`tests/sdxl_lora_parity.rs`).

The tiny SDXL model and its LoRAs come from the Rust generator:

    INVOKEAI_ER_SDE=/tmp/er_sde_scheduler.py /work/venv-ref/bin/python crates/engine/tools/reference/make_sdxl_lora_fixtures.py

(`INVOKEAI_ER_SDE` as for make_fixtures.py, whose helpers make_sdxl_fixtures.py imports.) Needs `peft` (diffusers'
LoRA loading).

Runs `cargo run -p atelier-engine --example write_tiny -- <tmp>` (seed 1234), which writes `<tmp>/sdxl` and the same
rank-4 LoRA (te1, te2 and UNet layers) twice: `sdxl-lora.safetensors` with kohya `lora_te1_`/`lora_te2_` keys and
LDM-named UNet keys (`lora_unet_input_blocks_4_1_...`), as SDXL kohya LoRAs are named, and
`sdxl-lora-diffusers-names.safetensors` with flattened diffusers UNet names.

The reference is diffusers: `StableDiffusionXLPipeline.load_lora_weights` of the diffusers-named file, fused at
LoRA scale 0.8 (diffusers maps LDM block numbers with the model's layers_per_block, which is 1 in the tiny model,
while InvokeAI always uses real SDXL's fixed map, so the LDM-named file is not given to diffusers). As a cross-check,
a second copy of the model is patched from the LDM-named file the way InvokeAI does for an SDXL LoRA
(convert_sdxl_keys_to_diffusers_format's fixed map, then the flattened key resolved greedily against the
submodules, W += weight * alpha/rank * up@down, `lora_te1_` -> text_encoder, `lora_te2_` -> text_encoder_2), and
its outputs must agree with diffusers' to 1e-5 (relative).

Recorded (float32, 9 significant digits), with the LoRA at weight 0.8:
- `prompts`: InvokeAI's sdxl_compel_prompt (embeds, pooled) on the patched encoders.
- `unet`: one patched UNet forward with added conditions, the inputs of sdxl.json's `unet` case.
"""

import json
import os
import subprocess
import sys
import tempfile

import diffusers
import torch
import transformers
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import f32  # noqa: E402
from make_sdxl_fixtures import randn, sdxl_compel_prompt  # noqa: E402

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", ".."))
OUT = os.path.join(REPO, "crates", "engine", "tests", "fixtures", "sdxl_lora.json")
SEED = 1234
WEIGHT = 0.8
PROMPTS = [("a (red)1.3 cat", ""), ("a photo of a cat", "a painting+")]


def sdxl_unet_map():
    """kohya's SDXL LDM -> diffusers prefix table (as InvokeAI's convert_sdxl_keys_to_diffusers_format uses it)."""
    layer = []
    for i in range(3):
        for j in range(2):
            layer.append((f"input_blocks.{3 * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            layer.append((f"input_blocks.{3 * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
        for j in range(3):
            layer.append((f"output_blocks.{3 * i + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            layer.append((f"output_blocks.{3 * i + j}.1.", f"up_blocks.{i}.attentions.{j}."))
        layer.append((f"input_blocks.{3 * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
        layer.append((f"output_blocks.{3 * i + 2}.2.", f"up_blocks.{i}.upsamplers.0."))
    layer.append(("middle_block.1.", "mid_block.attentions.0."))
    for j in range(2):
        layer.append((f"middle_block.{2 * j}.", f"mid_block.resnets.{j}."))
    resnet = [("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("out_layers.0.", "norm2."),
              ("out_layers.3.", "conv2."), ("emb_layers.1.", "time_emb_proj."), ("skip_connection.", "conv_shortcut.")]
    table = []
    for sd, hf in layer:
        if "resnets" in hf:
            table += [(sd + a, hf + b) for a, b in resnet]
        else:
            table.append((sd, hf))
    for j in range(2):
        table.append((f"time_embed.{j * 2}.", f"time_embedding.linear_{j + 1}."))
        table.append((f"label_emb.0.{j * 2}.", f"add_embedding.linear_{j + 1}."))
    table += [("input_blocks.0.0.", "conv_in."), ("out.0.", "conv_norm_out."), ("out.2.", "conv_out.")]
    return {sd.rstrip(".").replace(".", "_"): hf.rstrip(".").replace(".", "_") for sd, hf in table}


def convert_ldm_key(stem, table):
    """A flattened LDM UNet key (after lora_unet_) in diffusers naming: the longest matching prefix in the table."""
    best = None
    for sd in table:
        if stem == sd or stem.startswith(sd + "_"):
            if best is None or len(sd) > len(best):
                best = sd
    assert best is not None, stem
    return table[best] + stem[len(best):]


def get_submodule_flattened(model, key):
    """InvokeAI's resolution of a flattened (kohya) layer key."""
    module = model
    parts = key.split("_")
    name = parts.pop(0)
    while parts:
        try:
            module = module.get_submodule(name)
            name = parts.pop(0)
        except Exception:
            name += "_" + parts.pop(0)
    return module.get_submodule(name)


def invokeai_patch(pipe, state, weight):
    table = sdxl_unet_map()
    grouped = {}
    for key, value in state.items():
        stem, leaf = key.split(".", 1)
        grouped.setdefault(stem, {})[leaf] = value
    counts = {"unet": 0, "text_encoder": 0, "text_encoder_2": 0}
    for stem, values in grouped.items():
        if stem.startswith("lora_unet_"):
            model, key, part = pipe.unet, convert_ldm_key(stem[len("lora_unet_"):], table), "unet"
        elif stem.startswith("lora_te1_"):
            model, key, part = pipe.text_encoder, stem[len("lora_te1_"):], "text_encoder"
        elif stem.startswith("lora_te2_"):
            model, key, part = pipe.text_encoder_2, stem[len("lora_te2_"):], "text_encoder_2"
        else:
            raise ValueError(stem)
        if key.startswith("text_model_") and not hasattr(model, "text_model"):
            key = key[len("text_model_"):]
        module = get_submodule_flattened(model, key)
        up = values["lora_up.weight"].float()
        down = values["lora_down.weight"].float()
        scale = float(values["alpha"]) / down.shape[0] if "alpha" in values else 1.0
        delta = (up.flatten(1) @ down.flatten(1)).reshape(module.weight.shape)
        with torch.no_grad():
            module.weight += weight * scale * delta
        counts[part] += 1
    return counts


def outputs(pipe):
    prompts = []
    for prompt, style in PROMPTS:
        c, pooled = sdxl_compel_prompt(pipe, prompt, style)
        prompts.append({"prompt": prompt, "style": style, "shape": list(c.shape), "embeds": f32(c),
                        "pooled_shape": list(pooled.shape), "pooled": f32(pooled)})
    x = randn((2, 4, 8, 8), 5)
    ctx = randn((2, 77, 96), 6)
    text_embeds = randn((2, 64), 8)
    time_ids = [[64.0, 64.0, 0.0, 0.0, 64.0, 64.0], [1024.0, 768.0, 16.0, 8.0, 1024.0, 1024.0]]
    y = pipe.unet(x, torch.tensor(500.0), encoder_hidden_states=ctx,
                  added_cond_kwargs={"text_embeds": text_embeds, "time_ids": torch.tensor(time_ids)}).sample
    unet = {"x_seed": 5, "context_seed": 6, "text_embeds_seed": 8, "timestep": 500.0, "time_ids": time_ids,
            "values": f32(y)}
    return prompts, unet, [p["embeds"] for p in prompts] + [p["pooled"] for p in prompts] + [unet["values"]]


def rel(a, b):
    scale = max(max(abs(v) for v in b), 1e-12)
    return max(abs(x - y) for x, y in zip(a, b)) / scale


def main():
    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp(prefix="atelier-tiny-sdxl-lora-")
    subprocess.run(
        ["cargo", "run", "-q", "-p", "atelier-engine", "--example", "write_tiny", "--", tmp, str(SEED)],
        cwd=REPO,
        check=True,
    )
    model_dir = os.path.join(tmp, "sdxl")
    with torch.no_grad():
        plain = StableDiffusionXLPipeline.from_pretrained(model_dir)
        _, _, plain_values = outputs(plain)

        # diffusers: the diffusers-named kohya file, fused at scale 0.8.
        pipe = StableDiffusionXLPipeline.from_pretrained(model_dir)
        pipe.load_lora_weights(os.path.join(tmp, "sdxl-lora-diffusers-names.safetensors"), adapter_name="tiny")
        pipe.fuse_lora(components=["unet", "text_encoder", "text_encoder_2"], lora_scale=WEIGHT)
        prompts, unet, values = outputs(pipe)

        # InvokeAI's rule on the LDM-named file.
        inv = StableDiffusionXLPipeline.from_pretrained(model_dir)
        counts = invokeai_patch(inv, load_file(os.path.join(tmp, "sdxl-lora.safetensors")), WEIGHT)
        _, _, inv_values = outputs(inv)

    for ours, theirs in zip(inv_values, values):
        err = rel(ours, theirs)
        assert err < 1e-5, f"InvokeAI's rule on the LDM-named file vs diffusers: {err}"
    for patched, base in zip(values, plain_values):
        assert rel(patched, base) > 1e-3, "the LoRA changed nothing"
    out = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "seed": SEED,
        "weight": WEIGHT,
        "layers": counts,
        "prompts": prompts,
        "unet": unet,
    }
    with open(OUT, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {os.path.relpath(OUT, REPO)} ({os.path.getsize(OUT)} bytes); layers {counts}", file=sys.stderr)


if __name__ == "__main__":
    main()
