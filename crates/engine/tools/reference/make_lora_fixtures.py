#!/usr/bin/env python3
"""Produce `crates/engine/tests/fixtures/lora.json`: LoRA merging parity reference.

The tiny models and their kohya-named LoRAs come from the Rust generator:

    INVOKEAI_ER_SDE=/tmp/er_sde_scheduler.py /work/venv-ref/bin/python crates/engine/tools/reference/make_lora_fixtures.py

(`INVOKEAI_ER_SDE` because the shared helpers of `make_fixtures.py` need it at import; see that script.)

runs `cargo run --release -p atelier-engine --example write_tiny -- <tmp>` (seed 1234), loads sd1 and sd2 with
diffusers/transformers, and patches the UNet and the text encoder the way InvokeAI's LayerPatcher does for a
plain LoRA layer: the flattened kohya key (after `lora_unet_` / `lora_te_`) is resolved against the model's
submodules greedily (an underscore is a dot when the part so far names a submodule), and the module's weight
becomes W + weight * (alpha / rank) * (up.flatten(1) @ down.flatten(1)).reshape(W.shape), in float32.
No peft is needed. Recorded (float32 values with 9 significant digits), for LoRA weight 0.8:

- `clip`: compel's conditioning tensor for "a photo of a cat" (patched text encoder).
- `unet`: one patched UNet forward on torch.randn inputs (x seed 5, context seed 6), with diffusers' exact GEGLU
  (`values`) and with the tanh-approximated gate candle uses (`values_tanh_geglu`).
"""

import json
import os
import subprocess
import sys
import tempfile

import diffusers
import torch
import transformers
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import f32  # noqa: E402
from make_pipeline_fixtures import candle_geglu, encode, load, randn  # noqa: E402

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", ".."))
OUT = os.path.join(REPO, "crates", "engine", "tests", "fixtures", "lora.json")
SEED = 1234
WEIGHT = 0.8
PROMPT = "a photo of a cat"


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


def patch(model, state, prefix, weight):
    grouped = {}
    for key, value in state.items():
        stem, leaf = key.split(".", 1)
        grouped.setdefault(stem, {})[leaf] = value
    applied = 0
    for stem, values in grouped.items():
        if not stem.startswith(prefix):
            continue
        key = stem[len(prefix):]
        # transformers 4.x (InvokeAI's) nests CLIPTextModel's encoder under `text_model`, 5.x does not.
        if key.startswith("text_model_") and not hasattr(model, "text_model"):
            key = key[len("text_model_"):]
        module = get_submodule_flattened(model, key)
        up = values["lora_up.weight"].float()
        down = values["lora_down.weight"].float()
        rank = down.shape[0]
        scale = float(values["alpha"]) / rank if "alpha" in values else 1.0
        delta = (up.flatten(1) @ down.flatten(1)).reshape(module.weight.shape)
        with torch.no_grad():
            module.weight += weight * scale * delta
        applied += 1
    assert applied > 0, prefix
    return applied


def main():
    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp(prefix="atelier-tiny-")
    subprocess.run(
        ["cargo", "run", "-q", "--release", "-p", "atelier-engine", "--example", "write_tiny", "--", tmp, str(SEED)],
        cwd=REPO,
        check=True,
    )
    out = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "seed": SEED,
        "weight": WEIGHT,
        "cases": [],
    }
    with torch.no_grad():
        for family, t in [("sd1", 500.0), ("sd2", 667.25)]:
            tok, te, unet, _ = load(os.path.join(tmp, family))
            state = load_file(os.path.join(tmp, f"{family}-lora.safetensors"))
            n_te = patch(te, state, "lora_te_", WEIGHT)
            n_unet = patch(unet, state, "lora_unet_", WEIGHT)
            c = encode(tok, te, PROMPT, 0)
            x = randn((2, 4, 8, 8), 5)
            ctx = randn((2, 77, 32), 6)
            y = unet(x, torch.tensor(t), encoder_hidden_states=ctx).sample
            with candle_geglu():
                y_tanh = unet(x, torch.tensor(t), encoder_hidden_states=ctx).sample
            out["cases"].append(
                {
                    "model": family,
                    "text_encoder_layers": n_te,
                    "unet_layers": n_unet,
                    "prompt": PROMPT,
                    "clip_shape": list(c.shape),
                    "clip": f32(c),
                    "x_seed": 5,
                    "context_seed": 6,
                    "timestep": t,
                    "unet": f32(y),
                    "unet_tanh_geglu": f32(y_tanh),
                }
            )
    with open(OUT, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
