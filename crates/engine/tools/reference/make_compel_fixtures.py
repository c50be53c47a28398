#!/usr/bin/env python3
"""Produce `crates/engine/tests/fixtures/compel.json`: the reference for compel's prompt syntax and weighting.

compel is used as InvokeAI's `compel` node configures it (truncate_long_prompts=False,
SplitLongTextMode.SENTENCES, the default DownweightMode.MASK and attention bases 1.1 / 0.9), on the tiny SD 1.x
and SD 2.x text encoders the Rust generator writes (seed 1234, the models of `make_pipeline_fixtures.py`):

    /work/venv-ref/bin/pip install torch diffusers transformers compel
    CARGO_TARGET_DIR=/tmp/target /work/venv-ref/bin/python crates/engine/tools/reference/make_compel_fixtures.py

It runs `cargo run -p atelier-engine --example write_tiny -- <tmp> 1234` itself, so run it from the repository.
Recorded:

- `parse`: for a corpus of prompts (hand-written edge cases, random strings over a syntax-heavy alphabet and
  random `(items).op(options)tail` strings, drawn from fixed seeds), the structure `Compel.parse_prompt_string`
  returns — conjunction weights, prompts as lists of [text, weight] fragments, `.swap()` pairs and blends — or
  `"error"` when compel raises (or, for a `.swap()` nested in another, fails later when building the
  conditioning). Random strings with more than 3 parentheses are left out: pyparsing's parser is exponential in
  the nesting depth.
- `encode`: compel's conditioning (`build_conditioning_tensor_for_conjunction`, what InvokeAI stores) for a set
  of weighted prompts, float32 values with 9 significant digits.
"""

import copy
import json
import os
import random
import subprocess
import tempfile

import compel as compel_pkg
import torch
import transformers
from compel import Compel
from compel.prompt_parser import Blend, CrossAttentionControlSubstitute, FlattenedPrompt
from transformers import CLIPTextModel, CLIPTokenizer

from compel import SplitLongTextMode

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", ".."))
OUT = os.path.join(REPO, "crates", "engine", "tests", "fixtures", "compel.json")
SEED = 1234

LONG = (
    "a red cat sitting on the blue house. " * 3
    + "(a dog in the forest)1.2, painting a tree with the (red cat)0.7; " * 3
    + "the end++"
)

# (model, prompt, clip skip)
ENCODE = [
    ("sd1", "a cat on a mat", 0),
    ("sd1", "a cat+ on a mat", 0),
    ("sd1", "(a red hat)1.3 dog", 0),
    ("sd1", "a cat--", 0),
    ("sd1", "(big)0.5 dog", 0),
    ("sd1", "a ((red)1.2 hat)0.8 on a (cat)0 mat", 0),
    ("sd1", "a \\(cat\\) on a \\\"mat\\\"", 0),
    ("sd1", LONG, 0),
    ("sd1", '("a cat on a mat", "a dog+").and()', 0),
    ("sd1", '("a red cat", "a blue dog").and(0.5, 1.5)', 0),
    ("sd1", '("a cat", "a dog").blend(0.7, 0.3)', 0),
    ("sd1", '("a cat", "' + LONG + '").blend(1, 2, no_normalize)', 0),
    ("sd1", "a cat.swap(dog) on a mat", 0),
    ("sd1", "(a red hat)1.3 dog, (cat)0.6", 1),
    ("sd2", "a cat+ on a (mat)0.5", 0),
    ("sd2", "a cat! (on)- a mat!!", 0),
    ("sd2", '("a cat", "a dog").blend(0.25, 0.75)', 0),
]

CORPUS = [
    "",
    "   ",
    "a cat on a mat",
    "a cat+ on a mat",
    "(a red hat)1.3 dog",
    "a cat--",
    "(big)0.5 dog",
    "a ((cat)+ hat)1.5 x",
    "a \\(cat\\) x",
    '("a", "b").and()',
    '("a cat", "a dog").blend(0.7, 0.3)',
    "a,b.c  d",
    "(unclosed",
    "close)",
    "a cat+++, dog",
    '"quoted thing"+ x',
    "a + b",
    "a - b",
    "x-ray cat",
    "cat+-",
    "()",
    "(cat)",
    "cat.swap(dog)",
    "a (b)- c",
    "(a)0 b",
    "(a)-0.5 b",
    'a "b',
    '("a", "b").and(0.5, 1.5)',
    '("a", "b").blend(1, 2, no_normalize)',
    "cat 1.5",
    "(cat)1.5e2",
    "a.and()",
    "foo(bar)",
    "a  (b)  c",
    "a) (b",
    'x ("a","b").and()',
    '("a", "b").and() x',
    "(a, b).blend(0.5,0.5)",
    '("a", "b").blend(1,1) x',
    '("a","b").blend(1)',
    "(a + b)",
    "( a )1.2",
    "(a)+ b",
    "(a) + b",
    "a+b",
    "a++ b",
    "(a)1.5.and()",
    '"a"1.2',
    'a "b c" d',
    '"a" "b"',
    '(a "b c")1.2',
    "a\\(b",
    "(a\\)b)1.1",
    "\\(a\\)+",
    "a.blend()",
    '("a").blend()',
    "(a).and()",
    '("a b", c d).and()',
    "((a)).and()",
    "(x)1.1 (y)1.1",
    "withLora(foo, 0.5) cat",
    "cat useLora(x)",
    "a,,b",
    "1.5",
    "-a",
    "a-",
    "-",
    "+",
    "(-)",
    "(a)--- b",
    "a (b",
    "(a)1.2(b)0.8",
    '("a b" c)+',
    "(a, b)1.1",
    "(a. b)",
    "a.b+",
    "a\\+ b",
    "a\\- b",
    '\\"x\\"',
    '("a", "b").and(1)',
    '("a").and() ',
    "(a).attend(1.3) b",
    "a.attend(+) b",
    "(a b).swap(c d, t_start=0.1) e",
    '"a \\"b\\" c"+ d',
    '"a\\" b',
    '"tab\\there"',
    "a cat.swap(dog)+ x",
    '("a", "b").blend(0.5, s_start=1)',
    '("a", "b").blend(x, 1)',
    "(a)1. (b).5",
    "a\tb  c\n d",
    "UPPER Case+ words",
    "émile+ (naïve)0.8",
    "a cat, (a dog)1.2, a bird",
    '("", "b").blend(1, 1)',
    "((a)1.1 b)0.9 c",
    "(((a)+)+)+",
    "a =b",
    "a \\= b",
    "x (y) (z)-",
]

ALPHABET = [
    "a", "cat", " ", " ", "(", ")", "+", "-", "1.2", "0.5", ",", ".", '"', "\\(", "\\)", '\\"', ".and()",
    ".blend(1,1)", ".swap(dog)", "withLora(x,0.5)", '"b c"', "++", "--", "\t", "=", "\\", "!", "2",
]


OPERATOR_ITEMS = [
    '"a b"', "a", "(a)1.2", '"a+ b"', '"x.swap(y)"', '""', '"(a"', "a b", '"a, b"', '"(c)0.5 d"', "cat+", '"a\\"b"',
    "(a b)", '"withLora(z) q"', " a ", '"a.and()"',
]
OPERATOR_OPTIONS = ["1", "0.5", "no_normalize", "x", "s=1", "-1", ".5", "2", "1.", " 3 ", "a_b", "k=v"]
OPERATORS = [".blend", ".and", ".add", ".attend", ".swap", " .blend", ".blend "]
OPERATOR_TAILS = ["", "", " x", " ", "+", ")", " withLora(q)", "withLora(q,1)", " (y)1.1"]


def random_operators(n):
    """`(items).op(options)tail` strings: conjunctions, blends and their failure modes."""
    rng = random.Random(SEED + 1)
    out = []
    for _ in range(n):
        items = rng.choice([", ", ",", " , "]).join(rng.choice(OPERATOR_ITEMS) for _ in range(rng.randint(1, 3)))
        options = ", ".join(rng.choice(OPERATOR_OPTIONS) for _ in range(rng.randint(0, 3)))
        head = rng.choice(["", "", " ", "withLora(a) ", "x "])
        out.append(f"{head}({items}){rng.choice(OPERATORS)}({options}){rng.choice(OPERATOR_TAILS)}")
    return out


def random_corpus(n):
    rng = random.Random(SEED)
    out = []
    while len(out) < n:
        s = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 9)))
        if s.count("(") <= 3:
            out.append(s)
    return out


def f32(values):
    """Float32 values as JSON numbers with 9 significant digits (enough to round-trip a float32)."""
    return [float(f"{float(v):.9g}") for v in torch.as_tensor(values, dtype=torch.float32).flatten().tolist()]


def compel_for(tok, te, clip_skip):
    """InvokeAI's compel node (as in make_pipeline_fixtures.py): clip skip pops the last layers of a copy."""
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


class NestedSwap(Exception):
    """compel parses a `.swap()` inside a `.swap()` but fails on it when building the conditioning."""


def describe_fragments(fragments):
    if any(isinstance(f, CrossAttentionControlSubstitute) for f in fragments):
        raise NestedSwap()
    return [[f.text, f.weight] for f in fragments]


def describe_flat(p):
    parts = []
    for x in p.children:
        if isinstance(x, CrossAttentionControlSubstitute):
            parts.append({"swap": [describe_fragments(x.original), describe_fragments(x.edited)]})
        else:
            parts.append([x.text, x.weight])
    return parts


def describe(prompt):
    try:
        c = Compel.parse_prompt_string(prompt)
    except Exception:  # noqa: BLE001 - compel raises assorted types; all of them are errors for the Rust side
        return "error"
    try:
        return describe_conjunction(c)
    except NestedSwap:
        return "error"


def describe_conjunction(c):
    items = []
    for p in c.prompts:
        if isinstance(p, Blend):
            items.append(
                {"blend": [describe_flat(x) for x in p.prompts], "weights": p.weights, "normalize": p.normalize_weights}
            )
        elif isinstance(p, FlattenedPrompt):
            items.append({"prompt": describe_flat(p)})
        else:
            raise TypeError(type(p))
    return {"items": items, "weights": c.weights}


def load(model_dir):
    te, info = CLIPTextModel.from_pretrained(os.path.join(model_dir, "text_encoder"), output_loading_info=True)
    assert not info["missing_keys"], info
    te.eval()
    return CLIPTokenizer.from_pretrained(os.path.join(model_dir, "tokenizer")), te


def main():
    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp(prefix="atelier-tiny-")
    subprocess.run(
        ["cargo", "run", "-q", "-p", "atelier-engine", "--example", "write_tiny", "--", tmp, str(SEED)],
        cwd=REPO,
        check=True,
    )
    out = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "compel": getattr(compel_pkg, "__version__", "2.x"),
        "seed": SEED,
        "parse": [],
        "encode": [],
    }
    for prompt in CORPUS + random_corpus(300) + random_operators(200):
        out["parse"].append({"prompt": prompt, "result": describe(prompt)})
    models = {name: load(os.path.join(tmp, name)) for name in ["sd1", "sd2"]}
    with torch.no_grad():
        for model, prompt, skip in ENCODE:
            tok, te = models[model]
            compel = compel_for(tok, te, skip)
            c, _ = compel.build_conditioning_tensor_for_conjunction(Compel.parse_prompt_string(prompt))
            out["encode"].append(
                {"model": model, "prompt": prompt, "skipped_layers": skip, "shape": list(c.shape), "values": f32(c)}
            )
    with open(OUT, "w") as fh:
        json.dump(out, fh, separators=(",", ":"))
        fh.write("\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
