#!/usr/bin/env python3
"""Produce `crates/engine/tests/fixtures/lycoris.json`: LyCORIS layer merging parity reference.

    CARGO_TARGET_DIR=... /work/venv-ref/bin/python crates/engine/tools/reference/make_lycoris_fixtures.py

runs `cargo run -p atelier-engine --example write_tiny -- <tmp> 1234` for the tiny SD 1.x model (its UNet and
text encoder weights are all this needs), builds a kohya-named LyCORIS file over some of its modules that mixes
every layer type InvokeAI applies to SD models (plain LoRA, LoRA with unequal up/down ranks, Tucker `lora_mid`,
LoHa plain and Tucker, LoKr in its full/low-rank/Tucker forms, full `diff` with `diff_b`, IA3 on inputs and on
outputs, DoRA on a linear and a 1x1 conv, norm `w_norm`/`b_norm`), and patches the weights the way InvokeAI's
LayerPatcher does when it patches the weights directly: each layer's parameters are added one after the other,
`W += layer.get_parameters({W, b}, weight)`.

The layer math is re-expressed in torch below; each function names the InvokeAI file
(`invokeai/backend/patches/layers/...`) it follows. Each tensor of the file is
`torch.randn(max(n, 16), generator=manual_seed(seed))[:n] * scale`, so the Rust test rebuilds the same file from
the recorded seeds (`atelier_engine::noise::randn`). Recorded, for two passes (the file at weight 0.8; then the
file at 0.8 followed by the file again at -0.5, which exercises IA3 and DoRA reading the already-patched
weight): for every patched parameter, `patched - original` (summed in float64) at every `stride`-th flat index
(as float32 values, 9 significant digits).
"""

import json
import math
import os
import subprocess
import tempfile

import torch
from safetensors.torch import load_file

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", ".."))
OUT = os.path.join(REPO, "crates", "engine", "tests", "fixtures", "lycoris.json")
SEED = 1234
PASSES = [[0.8], [0.8, -0.5]]
MAX_SAMPLES = 160

ATTN = "down_blocks_0_attentions_0_transformer_blocks_0_"
TE = "lora_te_text_model_encoder_layers_0_"
# (layer stem, {leaf: shape or constant}); shapes are tensors drawn from the seeds, numbers are constants.
LAYERS = [
    # LoRA with Tucker mid on a 3x3 conv.
    ("lora_unet_down_blocks_0_resnets_0_conv1",
     {"lora_up.weight": [32, 4, 1, 1], "lora_mid.weight": [4, 4, 3, 3], "lora_down.weight": [4, 32, 1, 1], "alpha": 2.0}),
    # LoHa, Tucker, 3x3 conv.
    ("lora_unet_down_blocks_0_resnets_0_conv2",
     {"hada_w1_a": [4, 32], "hada_w1_b": [4, 32], "hada_t1": [4, 4, 3, 3],
      "hada_w2_a": [4, 32], "hada_w2_b": [4, 32], "hada_t2": [4, 4, 3, 3], "alpha": 2.0}),
    # LoHa, flattened 3x3 conv.
    ("lora_unet_down_blocks_0_downsamplers_0_conv",
     {"hada_w1_a": [32, 4], "hada_w1_b": [4, 288], "hada_w2_a": [32, 4], "hada_w2_b": [4, 288], "alpha": 1.0}),
    # LoHa, linear.
    ("lora_unet_" + ATTN + "attn1_to_q",
     {"hada_w1_a": [32, 4], "hada_w1_b": [4, 32], "hada_w2_a": [32, 4], "hada_w2_b": [4, 32], "alpha": 3.0}),
    # LoKr: full w1, low-rank w2.
    ("lora_unet_" + ATTN + "attn1_to_k",
     {"lokr_w1": [4, 4], "lokr_w2_a": [8, 2], "lokr_w2_b": [2, 8], "alpha": 1.0}),
    # LoKr: low-rank w1, full w2.
    ("lora_unet_" + ATTN + "attn1_to_v",
     {"lokr_w1_a": [4, 2], "lokr_w1_b": [2, 8], "lokr_w2": [8, 4], "alpha": 1.0}),
    # LoKr: Tucker w2 on a 3x3 conv.
    ("lora_unet_mid_block_resnets_0_conv1",
     {"lokr_w1": [8, 8], "lokr_t2": [2, 2, 3, 3], "lokr_w2_a": [2, 8], "lokr_w2_b": [2, 8], "alpha": 1.0}),
    # LoKr: full 4-D w2 (no rank: the alpha is ignored).
    ("lora_unet_mid_block_resnets_0_conv2", {"lokr_w1": [8, 8], "lokr_w2": [8, 8, 3, 3], "alpha": 4.0}),
    # Full, 1x1 conv, with its bias.
    ("lora_unet_down_blocks_0_attentions_0_proj_in", {"diff": [32, 32, 1, 1], "diff_b": [32]}),
    # DoRA, linear and 1x1 conv.
    ("lora_unet_" + ATTN + "attn1_to_out_0",
     {"lora_up.weight": [32, 4], "lora_down.weight": [4, 32], "dora_scale": [1, 32], "alpha": 2.0}),
    ("lora_unet_down_blocks_0_attentions_0_proj_out",
     {"lora_up.weight": [32, 4, 1, 1], "lora_down.weight": [4, 32, 1, 1], "dora_scale": [1, 32, 1, 1]}),
    # IA3 on outputs and on inputs.
    ("lora_unet_" + ATTN + "attn2_to_k", {"weight": [32], "on_input": 0.0}),
    ("lora_unet_" + ATTN + "attn2_to_v", {"weight": [32], "on_input": 1.0}),
    # Plain LoRA, and one whose down has 3x up's rank (kohya's fused q/k/v).
    ("lora_unet_" + ATTN + "attn2_to_q", {"lora_up.weight": [32, 4], "lora_down.weight": [4, 32], "alpha": 2.0}),
    ("lora_unet_" + ATTN + "attn2_to_out_0", {"lora_up.weight": [32, 2], "lora_down.weight": [6, 32], "alpha": 3.0}),
    # Norm on a GroupNorm.
    ("lora_unet_down_blocks_0_attentions_0_norm", {"w_norm": [32], "b_norm": [32]}),
    # Text encoder: LoHa, LoKr, norm.
    (TE + "self_attn_q_proj",
     {"hada_w1_a": [32, 2], "hada_w1_b": [2, 32], "hada_w2_a": [32, 2], "hada_w2_b": [2, 32], "alpha": 1.0}),
    (TE + "mlp_fc1", {"lokr_w1": [8, 4], "lokr_w2_a": [8, 2], "lokr_w2_b": [2, 8], "alpha": 2.0}),
    (TE + "layer_norm1", {"w_norm": [32], "b_norm": [32]}),
]


def draw(shape, seed, scale):
    n = math.prod(shape)
    g = torch.Generator("cpu").manual_seed(seed)
    return (torch.randn(max(n, 16), generator=g)[:n] * scale).reshape(shape)


def lycoris_file():
    """The file's tensors, and how to rebuild them (name, shape, seed, scale, or a constant value)."""
    tensors, recipe, seed = {}, [], SEED + 100
    for stem, leaves in LAYERS:
        for leaf, spec in leaves.items():
            name = f"{stem}.{leaf}"
            if isinstance(spec, float):
                tensors[name] = torch.tensor(spec)
                recipe.append({"name": name, "shape": [], "value": spec})
                continue
            fan = math.prod(spec[1:]) if len(spec) > 1 else 1
            # Sizes that keep every delta of the same order as the weights.
            scale = 0.05 if leaf in ("diff", "diff_b", "w_norm", "b_norm", "weight") else 1.0 / math.sqrt(max(fan, 1))
            if leaf.startswith("hada_"):
                # A Hadamard product of two products: larger factors keep it from vanishing next to W.
                scale = 0.5
            if leaf == "dora_scale":
                scale = 0.2
            t = draw(spec, seed, scale)
            if leaf == "dora_scale":
                t = t + 1.0
            tensors[name] = t
            recipe.append({"name": name, "shape": spec, "seed": seed, "scale": scale,
                           "offset": 1.0 if leaf == "dora_scale" else 0.0})
            seed += 1
    return tensors, recipe


# --- InvokeAI's layer math (invokeai/backend/patches/layers/), re-expressed ---

def lora_base_scale(alpha, rank):
    # lora_layer_base.py: LoRALayerBase.scale()
    return 1.0 if alpha is None or rank is None else alpha / rank


def lora_weight(v):
    # lora_layer.py: LoRALayer.get_weight (mid: einsum; unequal ranks: fuse_weights)
    up, down, mid = v["lora_up.weight"], v["lora_down.weight"], v.get("lora_mid.weight")
    if mid is not None:
        up2 = up.reshape(up.shape[0], up.shape[1])
        down2 = down.reshape(down.shape[0], down.shape[1])
        return torch.einsum("m n w h, i m, n j -> i j w h", mid, up2, down2), down.shape[0]
    if up.shape[1] != down.shape[0]:
        fused = torch.zeros((up.shape[0], down.shape[1]))
        for chunk in down.chunk(int(down.shape[0] / up.shape[1]), dim=0):
            fused = fused + torch.mm(up, chunk)
        return fused, down.shape[0]
    return up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1), down.shape[0]


def loha_weight(v):
    # loha_layer.py: LoHALayer.get_weight; rank = w1_b.shape[0]
    if "hada_t1" not in v:
        w = (v["hada_w1_a"] @ v["hada_w1_b"]) * (v["hada_w2_a"] @ v["hada_w2_b"])
    else:
        r1 = torch.einsum("i j k l, j r, i p -> p r k l", v["hada_t1"], v["hada_w1_b"], v["hada_w1_a"])
        r2 = torch.einsum("i j k l, j r, i p -> p r k l", v["hada_t2"], v["hada_w2_b"], v["hada_w2_a"])
        w = r1 * r2
    return w, v["hada_w1_b"].shape[0]


def lokr_weight(v):
    # lokr_layer.py: LoKRLayer.get_weight and _rank
    w1 = v.get("lokr_w1")
    if w1 is None:
        w1 = v["lokr_w1_a"] @ v["lokr_w1_b"]
    w2 = v.get("lokr_w2")
    if w2 is None:
        if "lokr_t2" not in v:
            w2 = v["lokr_w2_a"] @ v["lokr_w2_b"]
        else:
            w2 = torch.einsum("i j k l, i p, j r -> p r k l", v["lokr_t2"], v["lokr_w2_a"], v["lokr_w2_b"])
    if len(w2.shape) == 4:
        w1 = w1.unsqueeze(2).unsqueeze(2)
    rank = v["lokr_w1_b"].shape[0] if "lokr_w1_b" in v else (v["lokr_w2_b"].shape[0] if "lokr_w2_b" in v else None)
    return torch.kron(w1, w2.contiguous()), rank


def dora_parameters(v, orig, weight):
    # dora_layer.py: DoRALayer.get_weight / get_parameters
    up, down = v["lora_up.weight"], v["lora_down.weight"]
    scale = lora_base_scale(v["alpha"].item() if "alpha" in v else None, down.shape[0])
    delta_v = (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)).reshape(orig.shape) * scale
    out = orig + delta_v
    norm = (out.transpose(0, 1).reshape(out.shape[1], -1).norm(dim=1, keepdim=True)
            .reshape(out.shape[1], *[1] * (out.dim() - 1)).transpose(0, 1))
    out = out * (v["dora_scale"] / norm)
    return {"weight": (out - orig) * weight}


def layer_parameters(v, params, weight):
    """utils.py: any_lora_layer_from_state_dict picks the type; lora_layer_base.py: get_parameters scales by
    weight * scale and reshapes to the parameter's shape."""
    orig = params["weight"]
    alpha = v["alpha"].item() if "alpha" in v else None
    bias = None
    if "dora_scale" in v:
        return dora_parameters(v, orig, weight)
    elif "lora_up.weight" in v:
        w, rank = lora_weight(v)
    elif "hada_w1_a" in v:
        w, rank = loha_weight(v)
    elif "lokr_w1" in v or "lokr_w1_a" in v:
        w, rank = lokr_weight(v)
    elif "diff" in v:
        # full_layer.py: alpha None
        w, rank, alpha, bias = v["diff"], None, None, v.get("diff_b")
    elif "on_input" in v:
        # ia3_layer.py: orig * weight (weight as a column unless on_input)
        f = v["weight"]
        if not v["on_input"]:
            f = f.reshape(-1, 1)
        w, rank, alpha = orig * f, None, None
    elif "w_norm" in v:
        # norm_layer.py
        w, rank, alpha, bias = v["w_norm"], None, None, v.get("b_norm")
    else:
        raise ValueError(v.keys())
    s = lora_base_scale(alpha, rank)
    out = {"weight": (w * (weight * s)).reshape(orig.shape)}
    if bias is not None:
        out["bias"] = (bias * (weight * s)).reshape(params["bias"].shape)
    return out


def module_param_names(stem):
    """The component and the parameter prefix a kohya stem names in the tiny model."""
    if stem.startswith("lora_te_text_model_"):
        flat, component = stem[len("lora_te_text_model_"):], "te"
    else:
        flat, component = stem[len("lora_unet_"):], "unet"
    return component, flat


def main():
    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp(prefix="atelier-tiny-")
    subprocess.run(
        ["cargo", "run", "-q", "-p", "atelier-engine", "--example", "write_tiny", "--", tmp, str(SEED)],
        cwd=REPO,
        check=True,
    )
    base = {
        "unet": load_file(os.path.join(tmp, "sd1", "unet", "diffusion_pytorch_model.safetensors")),
        "te": load_file(os.path.join(tmp, "sd1", "text_encoder", "model.safetensors")),
    }
    # Flattened module name -> dotted parameter prefix, for each component.
    modules = {}
    for comp, sd in base.items():
        for name in sd:
            if name.endswith(".weight"):
                mod = name[: -len(".weight")]
                key = mod[len("text_model."):] if mod.startswith("text_model.") else mod
                modules[(comp, key.replace(".", "_"))] = mod
    tensors, recipe = lycoris_file()
    grouped = {}
    for name, t in tensors.items():
        stem, leaf = name.split(".", 1)
        grouped.setdefault(stem, {})[leaf] = t.float()
    out = {"torch": torch.__version__, "seed": SEED, "tensors": recipe, "passes": []}
    with torch.no_grad():
        for weights in PASSES:
            # Kept in float64 so that the recorded change is the exact sum of the layers' float32 changes (the
            # float32 rounding of W + ΔW after each pass is not part of the reference).
            state = {c: {k: v.double() for k, v in sd.items()} for c, sd in base.items()}
            touched = set()
            for weight in weights:
                for stem, values in grouped.items():
                    comp, flat = module_param_names(stem)
                    mod = modules[(comp, flat)]
                    params = {"weight": state[comp][mod + ".weight"].float()}
                    if mod + ".bias" in state[comp]:
                        params["bias"] = state[comp][mod + ".bias"].float()
                    for pname, delta in layer_parameters(values, params, weight).items():
                        key = f"{mod}.{pname}"
                        state[comp][key] = state[comp][key] + delta.double()
                        touched.add((comp, key))
            expected = []
            for comp, key in sorted(touched):
                delta = (state[comp][key] - base[comp][key].double()).flatten()
                n = delta.numel()
                stride = math.ceil(n / MAX_SAMPLES) | 1
                expected.append({
                    "component": "unet" if comp == "unet" else "text_encoder",
                    "name": key,
                    "shape": list(base[comp][key].shape),
                    "stride": stride,
                    "delta": [float(f"{float(x):.9g}") for x in delta[::stride].tolist()],
                })
            out["passes"].append({"weights": weights, "expected": expected})
    with open(OUT, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
