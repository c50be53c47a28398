#!/usr/bin/env python3
"""Produce `crates/engine/tests/fixtures/textual_inversion.json`: the reference for textual-inversion embeddings
in prompts (`tests/textual_inversion.rs`).

The tiny SD 1.x, SD 2.x and SDXL text encoders come from the Rust generator (`write_tiny`, seed 1234, the models
of `make_compel_fixtures.py` and `make_sdxl_fixtures.py`). Random embeddings are applied the way InvokeAI's
`ModelPatcher.apply_ti` applies them (to copies of the tokenizer and text encoder: `tokenizer.add_tokens` of
`<name>`, `<name-!pad-1>`, ..., `resize_token_embeddings` with `pad_to_multiple_of=8`, the new rows set to the
vectors; SDXL's `clip_l` vectors where their width fits the encoder, else `clip_g`), with a textual-inversion
manager that behaves as InvokeAI's `TextualInversionManager` (each first token followed by its pad tokens, the
result cut to 75 tokens when any embedding has more than one vector), then compel as InvokeAI's `compel` and
`sdxl_compel_prompt` nodes configure it. Which embeddings a text uses is InvokeAI's `generate_ti_list`: the
`<name>` triggers it writes, in order, among the embeddings available.

    CARGO_TARGET_DIR=/tmp/target /work/venv-ref/bin/python crates/engine/tools/reference/make_ti_fixtures.py

Run it from the repository. Recorded: the embeddings (name, file layout, tensors) and, per case, the
conditioning (and SDXL's pooled embedding), float32 values with 9 significant digits.
"""

import copy
import json
import os
import re
import subprocess
import tempfile

import compel as compel_pkg
import torch
import transformers
from compel import Compel, ReturnedEmbeddingsType, SplitLongTextMode
from compel.embeddings_provider import BaseTextualInversionManager
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", ".."))
OUT = os.path.join(REPO, "crates", "engine", "tests", "fixtures", "textual_inversion.json")
SEED = 1234

LONG = "a red cat sitting on the blue house. " * 10


def f32(values):
    return [float(f"{float(v):.9g}") for v in torch.as_tensor(values, dtype=torch.float32).flatten().tolist()]


class Manager(BaseTextualInversionManager):
    """Behaves as InvokeAI's TextualInversionManager."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.pad_tokens = {}

    def expand_textual_inversion_token_ids_if_necessary(self, token_ids):
        if not self.pad_tokens:
            return token_ids
        expanded = []
        for t in token_ids:
            expanded.append(t)
            expanded.extend(self.pad_tokens.get(t, []))
        return expanded[: self.tokenizer.model_max_length - 2]


def ti_list(text, available):
    """generate_ti_list: the triggers the text writes, in order, that name an available embedding."""
    out = []
    for trigger in re.findall(r"<[a-zA-Z0-9., _-]+>", text):
        name = trigger[1:-1]
        if name in available:
            out.append((name, available[name]))
    return out


def vectors_for(ti, width):
    """InvokeAI's _get_ti_embedding."""
    if "clip_l" in ti and ti["clip_l"].shape[1] == width:
        return ti["clip_l"]
    return ti["clip_g"] if "clip_g" in ti else ti["vectors"]


def apply_ti(tok, te, tis):
    """ModelPatcher.apply_ti on copies; returns (tokenizer, text encoder, manager)."""
    tok = copy.deepcopy(tok)
    te = copy.deepcopy(te)
    manager = Manager(tok)
    if not tis:
        return tok, te, manager
    init = te.resize_token_embeddings(None, pad_to_multiple_of=8).num_embeddings
    trigger = lambda name, i: f"<{name}>" if i == 0 else f"<{name}-!pad-{i}>"  # noqa: E731
    width = te.get_input_embeddings().weight.shape[1]
    added = 0
    for name, ti in tis:
        for i in range(vectors_for(ti, width).shape[0]):
            added += tok.add_tokens(trigger(name, i))
    te.resize_token_embeddings(init + added, pad_to_multiple_of=8)
    table = te.get_input_embeddings().weight.data
    for name, ti in tis:
        v = vectors_for(ti, width)
        ids = []
        for i in range(v.shape[0]):
            token_id = tok.convert_tokens_to_ids(trigger(name, i))
            assert token_id != tok.unk_token_id
            assert table[token_id].shape == v[i].shape, (name, table.shape, v.shape)
            table[token_id] = v[i]
            ids.append(token_id)
        if len(ids) > 1:
            manager.pad_tokens[ids[0]] = ids[1:]
    return tok, te, manager


def skipped(te, clip_skip):
    if not clip_skip:
        return te
    te = copy.deepcopy(te)
    inner = getattr(te, "text_model", te)
    inner.encoder.layers = inner.encoder.layers[:-clip_skip]
    return te


def compel_sd(tok, te, prompt, skip, available):
    """InvokeAI's compel node with its TI list."""
    tok, te, manager = apply_ti(tok, skipped(te, skip), ti_list(prompt, available))
    compel = Compel(
        tokenizer=tok,
        text_encoder=te,
        textual_inversion_manager=manager,
        truncate_long_prompts=False,
        split_long_text_mode=SplitLongTextMode.SENTENCES,
        device="cpu",
    )
    c, _ = compel.build_conditioning_tensor_for_conjunction(Compel.parse_prompt_string(prompt))
    return c


def run_clip_compel(tok, te, prompt, get_pooled, available):
    """SDXLPromptInvocationBase.run_clip_compel (zero_on_empty, no clip skip)."""
    if prompt == "":
        c = torch.zeros((1, te.config.max_position_embeddings, te.config.hidden_size))
        return c, torch.zeros((1, te.config.hidden_size)) if get_pooled else None
    tok, te, manager = apply_ti(tok, te, ti_list(prompt, available))
    compel = Compel(
        tokenizer=tok,
        text_encoder=te,
        textual_inversion_manager=manager,
        truncate_long_prompts=False,
        returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
        requires_pooled=get_pooled,
        split_long_text_mode=SplitLongTextMode.SENTENCES,
        device="cpu",
    )
    c, _ = compel.build_conditioning_tensor_for_conjunction(Compel.parse_prompt_string(prompt))
    pooled = compel.conditioning_provider.get_pooled_embeddings([prompt]) if get_pooled else None
    return c, pooled


def sdxl_compel_prompt(m, prompt, style, available):
    c1, _ = run_clip_compel(m["tok"], m["te"], prompt, False, available)
    text_2 = prompt if style.strip() == "" else style
    c2, pooled = run_clip_compel(m["tok2"], m["te2"], text_2, True, available)
    length = max(c1.shape[1], c2.shape[1])
    pad = lambda c: torch.cat([c, torch.zeros((1, length - c.shape[1], c.shape[2]))], dim=1)  # noqa: E731
    return torch.cat([pad(c1), pad(c2)], dim=-1), pooled


def main():
    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp(prefix="atelier-tiny-")
    subprocess.run(
        ["cargo", "run", "-q", "-p", "atelier-engine", "--example", "write_tiny", "--", tmp, str(SEED)],
        cwd=REPO,
        check=True,
    )

    def load(name, sub="", cls=CLIPTextModel):
        te, info = cls.from_pretrained(os.path.join(tmp, name, "text_encoder" + sub), output_loading_info=True)
        assert not info["missing_keys"], info
        te.eval()
        return CLIPTokenizer.from_pretrained(os.path.join(tmp, name, "tokenizer" + sub)), te

    sd1, sd2 = load("sd1"), load("sd2")
    (tok, te), (tok2, te2) = load("sdxl"), load("sdxl", "_2", CLIPTextModelWithProjection)
    sdxl = {"tok": tok, "te": te, "tok2": tok2, "te2": te2}

    gen = torch.Generator("cpu").manual_seed(SEED)
    scale = float(sd1[1].get_input_embeddings().weight.detach().std())
    randn = lambda n, w: torch.randn((n, w), generator=gen) * scale  # noqa: E731
    w1, w2 = te.config.hidden_size, te2.config.hidden_size
    width = sd1[1].config.hidden_size
    assert sd2[1].config.hidden_size == width
    # name -> (file layout, tensors); the layout says how the Rust test writes the file.
    embeddings = {
        "ti-one": ("diffusers", {"<ti-one>": randn(1, width)[0]}),
        "ti.three": ("emb_params", {"emb_params": randn(3, width)}),
        "Big Cat": ("string_to_param", {"string_to_param.*": randn(2, width)}),
        "xl-ti": ("sdxl", {"clip_l": randn(2, w1), "clip_g": randn(3, w2)}),
    }

    def as_ti(tensors):
        if "clip_g" in tensors:
            return {"clip_g": tensors["clip_g"], "clip_l": tensors["clip_l"]}
        v = next(iter(tensors.values()))
        return {"vectors": v.unsqueeze(0) if v.dim() == 1 else v}

    sd_available = {n: as_ti(t) for n, (_, t) in embeddings.items() if n != "xl-ti"}
    xl_available = {"xl-ti": as_ti(embeddings["xl-ti"][1])}

    out = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "compel": getattr(compel_pkg, "__version__", "2.x"),
        "seed": SEED,
        "embeddings": [
            {"name": n, "layout": layout, "tensors": {k: {"shape": list(v.shape), "values": f32(v)} for k, v in t.items()}}
            for n, (layout, t) in embeddings.items()
        ],
        "cases": [],
    }
    sd_cases = [
        ("sd1", "a photo of <ti-one> on a mat", 0),
        ("sd1", "<ti.three> cat+ on a (mat)0.5", 0),
        ("sd1", "(<ti.three>)1.3 and (a <ti-one> dog)0.7", 0),
        ("sd1", '("<ti-one> cat", "a <ti.three> dog").blend(0.7, 0.3)', 0),
        ("sd1", "a <Big Cat> and <ti-one><ti-one>, <ti.three>", 0),
        ("sd1", LONG + "<ti.three> at the end", 0),
        ("sd1", LONG + "<ti-one> at the end", 0),
        ("sd1", "a cat on <unknown> mat <ti-one", 0),
        ("sd1", "<ti-one> cat, <ti.three>", 1),
        ("sd2", "<ti.three>! cat (on)- a <ti-one> mat", 0),
    ]
    with torch.no_grad():
        for model, prompt, skip in sd_cases:
            tok_, te_ = sd1 if model == "sd1" else sd2
            c = compel_sd(tok_, te_, prompt, skip, sd_available)
            out["cases"].append({"model": model, "prompt": prompt, "style": "", "skipped_layers": skip,
                                 "shape": list(c.shape), "values": f32(c), "pooled": None})
        for prompt, style in [
            ("a <xl-ti> photo", ""),
            ("a <xl-ti> photo", "oil (<xl-ti>)+ painting"),
            ("a cat", "<xl-ti> style"),
        ]:
            c, pooled = sdxl_compel_prompt(sdxl, prompt, style, xl_available)
            out["cases"].append({"model": "sdxl", "prompt": prompt, "style": style, "skipped_layers": 0,
                                 "shape": list(c.shape), "values": f32(c), "pooled": f32(pooled)})
    with open(OUT, "w") as fh:
        json.dump(out, fh, separators=(",", ":"))
        fh.write("\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
