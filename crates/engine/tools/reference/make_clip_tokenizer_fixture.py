"""Token ids of transformers' CLIPTokenizer built from the bundled OpenAI CLIP BPE data
(crates/engine/data/bpe_simple_vocab_16e6.txt.gz), for tests/fixtures/clip_tokenizer.json.

The vocabulary is built as OpenAI CLIP's SimpleTokenizer builds it; transformers then tokenizes with its own
implementation, so the fixture checks our tokenizer and our reading of the data file against it. Offline.

    /work/venv-ref/bin/python crates/engine/tools/reference/make_clip_tokenizer_fixture.py
"""
import gzip
import json
import os
import tempfile

from transformers import CLIPTokenizer


def bytes_to_unicode():
    # OpenAI CLIP's (GPT-2's) reversible byte -> unicode table.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(n) for n in cs]))

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "data", "bpe_simple_vocab_16e6.txt.gz")
OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "clip_tokenizer.json")

PROMPTS = [
    "a photo of an astronaut riding a horse on mars",
    "A Painting of a CAT, sitting on the red sofa; 4k, highly detailed!!!",
    "portrait of a woman, (masterpiece:1.2), best quality, ultra-detailed, 8k uhd, dslr",
    "café déjà vu — naïve Ünïcödé text ✨ 🐱 日本語",
    "don't won't it's we're they've I'm you'll he'd",
    "   multiple   spaces\tand\nnewlines   ",
    "numbers 1234567890 and 3.14159, $100 & 50% off",
    "<|startoftext|> special tokens <|endoftext|> inside",
    "",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]


def main():
    with gzip.open(DATA, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(l.split()) for l in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
        with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
        tok = CLIPTokenizer(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt"))
        cases = [{"prompt": p, "ids": tok(p)["input_ids"]} for p in PROMPTS]
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump({"vocab_size": len(vocab), "cases": cases}, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
