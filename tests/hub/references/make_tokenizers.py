"""Writes tests/hub/data/tokenizers/: tiny vocabularies, test strings, and the
ids and pixels the original tokenizers and image pipelines give for them.

Run with the reference venv (torch, transformers, open_clip, tensorflow-cpu):
  .venv-bench/bin/python tests/hub/references/make_tokenizers.py

Everything is built offline and deterministically from text written here:
  c4.model      sentencepiece unigram in the id layout of big_vision's c4_en /
                mc4 (T5's): <pad> 0, </s> 1, <unk> 2, no <bos>, NFKC.
  gemma.model   sentencepiece BPE in Gemma's layout: <pad> 0, <eos> 1, <bos> 2,
                <unk> 3, <mask> 4, byte fallback, no normalisation, no dummy
                prefix, digits split.
  clip_bpe.txt.gz  CLIP merges in open_clip's format (a header line, then
                merges) trained with `tokenizers` on the same text; hf_clip/
                holds the same vocabulary as vocab.json + merges.txt.
  strings.json  100 test strings.
  ids.npz       per reference: int32 [100, length] ids.
  images.npz    odd-sized uint8 images (`image_i`) and, per reference,
                float32 [size, size, 3] outputs (`<ref>_i`).

References: big_vision's ops (tf.strings.lower + the sentencepiece library,
as its tokenize / tok ops; tf.image.resize + cast + value_range), transformers'
SiglipTokenizer, Siglip2Tokenizer (from a GemmaTokenizerFast saved as the
SigLIP 2 conversion does), CLIPTokenizer, Siglip/CLIP image processors (both
backends), open_clip's SimpleTokenizer, HFTokenizer (its SigLIP path) and
image_transform.
"""

import gzip
import io
import json
import os
import random
import sys
import tempfile
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..", "..", "..")))

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
from open_clip import transform
from open_clip.tokenizer import HFTokenizer, SimpleTokenizer
from PIL import Image
import sentencepiece as spm
import tensorflow as tf
import tokenizers
from tokenizers import models, pre_tokenizers, trainers
import transformers
from transformers import (CLIPTokenizer, GemmaTokenizerFast, Siglip2Tokenizer, SiglipTokenizer,
                          T5TokenizerFast)

from mmjax.data import clip_bpe
# pylint: enable=g-import-not-at-top,wrong-import-position

OUT = os.path.join(HERE, "..", "data", "tokenizers")
SIZE = 24  # image side of the preprocessing references
IMAGE_SHAPES = ((17, 29), (61, 45), (40, 40), (100, 33), (31, 80), (24, 24))
SIGLIP_LEN, CLIP_LEN = 64, 77

WORDS = """a an the photo picture image of with and on in under near over by at two three
several many cat dog bird horse cow sheep person man woman child people group street city road
car bus train bike boat plane tree flower field park beach river lake mountain sky cloud sunset
house room kitchen table chair window door book phone computer cup coffee food pizza cake red
blue green yellow white black brown small large old new bright dark running sitting standing
eating playing holding looking walking close up view front back top side sign text reads""".split()
EXTRA = """café naïve Zürich São Paulo façade résumé piñata über straße Ελλάδα москва
東京 北京 서울 ロック 😀 🐱 🚲 don't it's we're I'm they'll""".split()


def corpus(n: int = 4000) -> list:
  """Captions of the kind the released models read, some cased, accented or CJK."""
  rng = random.Random(0)
  out = []
  for _ in range(n):
    words = [rng.choice(WORDS + EXTRA if rng.random() < 0.2 else WORDS)
             for _ in range(rng.randint(3, 12))]
    s = " ".join(words)
    r = rng.random()
    s = s.capitalize() if r < 0.3 else s.upper() if r < 0.45 else s.title() if r < 0.55 else s
    if rng.random() < 0.4:
      s += rng.choice([".", "!", "?", ",", ";", ":", "...", " -", " (2)"])
    if rng.random() < 0.2:
      s += " " + str(rng.randint(0, 2024))
    out.append(s)
  return out


def strings() -> list:
  """100 test strings: case, punctuation, accents, emoji, CJK, long, whitespace."""
  fixed = [
      "a photo of a cat", "A Photo Of A Cat", "A PHOTO OF A CAT", "a photo of a cat.",
      "two dogs playing in the park!", "Is this a bird? Yes, it is.", "red, green; blue: yellow",
      "(a small house) [on a hill] {at night}", "a_photo_of_a_cat", "cat-dog hybrid",
      "it's a dog", "IT'S A DOG", "we're here, they'll go, I'm in", "don’t “quote” me",
      "‘single’ ‚low‘ quotes", "café au lait", "CAFÉ AU LAIT", "Zürich in winter",
      "ÉCOLE NORMALE", "naïve façade résumé", "São Paulo skyline", "piñata at a party",
      "Ελλάδα ΑΘΗΝΑ photo", "москва ночью", "ΣΟΦΙΑ and İstanbul", "Straße in Köln",
      "東京の夜景", "北京 城市 天空", "서울 거리 사진", "ロックバンドの写真", "a cat 😀",
      "🐱🐱🐱", "a bike 🚲 on a road", "family 👨‍👩‍👧 photo", "flag 🇫🇷 waving",
      "1234567890", "3 cats and 12 dogs", "$100 for 2.5 kg", "#hashtag @user", "50% off!!!",
      "email me at a.b@c.de", "http://example.com/a?b=c", "C++ and C# code",
      "  leading spaces", "trailing spaces   ", "multiple    inner     spaces",
      "tabs\tand\nnewlines\r\nmixed", "non\u00a0breaking\u2009thin space",
      "\u3000ideographic space",
      "ﬁne ﬂowers", "ｆｕｌｌ ｗｉｄｔｈ ＴＥＸＴ", "ｶﾀｶﾅ halfwidth", "&amp; and &lt;b&gt;",
      "fish &amp;amp; chips", "&#233;t&#xE9; &eacute;t&eacute;", "caf\u0065\u0301 combining",
      "e\u0301 \u00e9 same", "zero\u200bwidth", "bell\x07char", "esc \x1b[31mred\x1b[0m text",
      "soft\u00adhyphen", "ellipsis… dash — en – dash", "«guillemets» „low“", "°C ± µm ×÷",
      "ℌ𝔢𝔩𝔩𝔬 math letters", "Ⅷ roman ⅷ", "ｲﾛﾊ ＡＢＣ１２３", "x²+y³", "½ cup ¼ tsp",
      "!!!", "...", "???!!!", "-", "a", "A", "I", "x " * 3,
      "<start_of_text>", "under_score_and-dash", "o'clock rock'n'roll",
      "", "   ",
  ]
  rng = random.Random(1)
  long = [
      " ".join(rng.choice(WORDS) for _ in range(120)),
      " ".join(rng.choice(WORDS + EXTRA) for _ in range(90)).upper(),
      "word " * 100,
      "supercalifragilisticexpialidocious " * 12,
      "日本語のテキスト" * 20,
      "😀" * 70,
      ", ".join(str(i) for i in range(60)),
      "A" * 300,
  ]
  cap = corpus(200)[150:]
  out = fixed + long
  out += cap[:100 - len(out)]
  assert len(out) == 100, len(out)
  return out


# ---- vocabularies -----------------------------------------------------------


def train_sentencepiece(texts, **kwargs) -> bytes:
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model,
                                 character_coverage=1.0, num_threads=1, minloglevel=2,
                                 hard_vocab_limit=False, **kwargs)
  return model.getvalue()


def c4_layout(texts) -> bytes:
  return train_sentencepiece(texts, vocab_size=400, model_type="unigram", pad_id=0, eos_id=1,
                             unk_id=2, bos_id=-1)


def gemma_layout(texts) -> bytes:
  return train_sentencepiece(
      texts, vocab_size=700, model_type="bpe", pad_id=0, eos_id=1, bos_id=2, unk_id=3,
      pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
      user_defined_symbols=["<mask>"], byte_fallback=True, normalization_rule_name="identity",
      add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=True,
      allow_whitespace_only_pieces=True)


def clip_merges(texts) -> list:
  """Merges of a byte-level BPE with "</w>" word ends, CLIP's pre-tokeniser."""
  tok = tokenizers.Tokenizer(models.BPE(end_of_word_suffix="</w>"))
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(clip_bpe.PATTERN), behavior="removed", invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  trainer = trainers.BpeTrainer(vocab_size=1000, end_of_word_suffix="</w>", show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator([t.lower() for t in texts], trainer)
  merges = json.loads(tok.to_str())["model"]["merges"]
  return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def write_vocabularies(texts) -> dict:
  files = {"c4": os.path.join(OUT, "c4.model"), "gemma": os.path.join(OUT, "gemma.model"),
           "clip": os.path.join(OUT, "clip_bpe.txt.gz"), "hf_clip": os.path.join(OUT, "hf_clip")}
  with open(files["c4"], "wb") as f:
    f.write(c4_layout(texts))
  with open(files["gemma"], "wb") as f:
    f.write(gemma_layout(texts))
  merges = clip_merges(texts)
  text = "\n".join(["#version: 0.2 (mmjax test vocabulary)"] + [" ".join(m) for m in merges])
  with open(files["clip"], "wb") as f:  # no trailing newline: open_clip reads every line
    f.write(gzip.compress(text.encode("utf-8"), mtime=0))
  os.makedirs(files["hf_clip"], exist_ok=True)
  vocab = clip_bpe.vocab_from_merges(merges)
  vocab = {k.replace("<start_of_text>", "<|startoftext|>").replace(
      "<end_of_text>", "<|endoftext|>"): v for k, v in vocab.items()}
  with open(os.path.join(files["hf_clip"], "vocab.json"), "w", encoding="utf-8") as f:
    json.dump(vocab, f, ensure_ascii=False)
  with open(os.path.join(files["hf_clip"], "merges.txt"), "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
  return files


# ---- token references -------------------------------------------------------


def pad_sticky(ids, length, eos, pad, head=()):
  ids = list(head) + list(ids)
  ids = ids[:length - 1] + [eos]
  return ids + [pad] * (length - len(ids))


def big_vision_ids(texts, model_file, eos, pad):
  """big_vision's tokenize / tok ops: tf.strings.lower, sentencepiece, sticky EOS."""
  sp = spm.SentencePieceProcessor(model_file=model_file)
  lowered = [t.decode("utf-8") for t in tf.strings.lower(tf.constant(texts)).numpy()]
  return [pad_sticky(sp.encode_as_ids(t), SIGLIP_LEN, eos, pad) for t in lowered]


def hf_call(tok, texts, length):
  return tok(texts, padding="max_length", truncation=True, max_length=length)["input_ids"]


def token_references(texts, files) -> dict:
  refs = {}
  refs["siglip"] = big_vision_ids(texts, files["c4"], eos=1, pad=1)
  refs["siglip2"] = big_vision_ids(texts, files["gemma"], eos=1, pad=0)
  refs["hf_siglip"] = hf_call(SiglipTokenizer(vocab_file=files["c4"]), texts, SIGLIP_LEN)
  with tempfile.TemporaryDirectory() as tmp:
    raw = os.path.join(tmp, "gemma_raw")
    os.makedirs(raw)
    with open(files["gemma"], "rb") as src, open(os.path.join(raw, "tokenizer.model"), "wb") as dst:
      dst.write(src.read())
    # As transformers' SigLIP 2 conversion saves it, then loads as Siglip2Processor does.
    gemma = GemmaTokenizerFast.from_pretrained(raw, add_bos_token=False, add_eos_token=True,
                                               padding_side="right")
    gemma.save_pretrained(os.path.join(tmp, "siglip2"))
    siglip2 = Siglip2Tokenizer.from_pretrained(os.path.join(tmp, "siglip2"))
    assert siglip2.padding_side == "right", siglip2.padding_side
    refs["hf_siglip2"] = hf_call(siglip2, texts, SIGLIP_LEN)
    # open_clip's SigLIP ports: SigLipTokenizer's settings, saved to a directory
    # that HFTokenizer (what open_clip.get_tokenizer builds for them) loads.
    c4_raw = os.path.join(tmp, "c4_raw")
    os.makedirs(c4_raw)
    with open(files["c4"], "rb") as src, open(os.path.join(c4_raw, "spiece.model"), "wb") as dst:
      dst.write(src.read())
    t5 = T5TokenizerFast.from_pretrained(c4_raw, extra_ids=0, legacy=False)
    t5.pad_token_id, t5.eos_token_id = 1, 1
    t5.save_pretrained(os.path.join(tmp, "oc_siglip"))
    gemma.pad_token_id, gemma.eos_token_id = 0, 1
    gemma.save_pretrained(os.path.join(tmp, "oc_siglip2"))
    for name in ("oc_siglip", "oc_siglip2"):
      tok = HFTokenizer(os.path.join(tmp, name), context_length=SIGLIP_LEN, clean="canonicalize")
      refs[{"oc_siglip": "open_clip_siglip", "oc_siglip2": "open_clip_siglip2"}[name]] = (
          tok(texts).numpy().tolist())
  refs["clip"] = SimpleTokenizer(bpe_path=files["clip"])(texts, context_length=CLIP_LEN)
  refs["clip"] = refs["clip"].numpy().tolist()
  hf_clip = CLIPTokenizer.from_pretrained(files["hf_clip"])
  refs["hf_clip"] = hf_call(hf_clip, texts, CLIP_LEN)
  return {k: np.asarray(v, np.int32) for k, v in refs.items()}


# ---- image references -------------------------------------------------------


def images() -> list:
  """Odd-sized uint8 images: gradients, edges and noise (resampling shows on all)."""
  rng = np.random.default_rng(0)
  out = []
  for i, (h, w) in enumerate(IMAGE_SHAPES):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1),
                     255 * ((x + y) % 7 < 3)], -1)
    noise = rng.normal(0, 40, (h, w, 3))
    img = np.clip(base + noise, 0, 255)
    if i == 2:
      img[::2] = 255 - img[::2]  # stripes at the pixel pitch
    out.append(img.astype(np.uint8))
  return out


def image_references(imgs) -> dict:
  refs = {}
  # big_vision: resize(size)|value_range(-1, 1).
  for i, img in enumerate(imgs):
    x = tf.image.resize(tf.constant(img), (SIZE, SIZE), method="bilinear", antialias=False)
    x = tf.cast(tf.clip_by_value(x, 0, 255), tf.uint8)
    refs[f"big_vision_{i}"] = (-1 + tf.cast(x, tf.float32) / 255.0 * 2).numpy()
  half = dict(image_mean=[0.5] * 3, image_std=[0.5] * 3)
  processors = {
      "hf_siglip": transformers.SiglipImageProcessor(size={"height": SIZE, "width": SIZE}, **half),
      "hf_siglip_pil": transformers.SiglipImageProcessorPil(
          size={"height": SIZE, "width": SIZE}, **half),
      "hf_clip": transformers.CLIPImageProcessor(
          size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}),
      "hf_clip_pil": transformers.CLIPImageProcessorPil(
          size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}),
  }
  for name, proc in processors.items():
    for i, img in enumerate(imgs):
      out = proc(images=[img], return_tensors="np")["pixel_values"][0]
      refs[f"{name}_{i}"] = np.transpose(np.asarray(out, np.float32), (1, 2, 0))
  transforms = {
      "open_clip": transform.image_transform(SIZE, is_train=False),
      "open_clip_siglip": transform.image_transform(
          SIZE, is_train=False, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic",
          resize_mode="squash"),
  }
  for name, tr in transforms.items():
    for i, img in enumerate(imgs):
      out = tr(Image.fromarray(img)).numpy()
      refs[f"{name}_{i}"] = np.transpose(out, (1, 2, 0)).astype(np.float32)
  return refs


def main():
  os.makedirs(OUT, exist_ok=True)
  texts = strings()
  files = write_vocabularies(corpus())
  with open(os.path.join(OUT, "strings.json"), "w", encoding="utf-8") as f:
    json.dump(texts, f, ensure_ascii=False, indent=0)
  np.savez_compressed(os.path.join(OUT, "ids.npz"), **token_references(texts, files))
  imgs = images()
  arrays = {f"image_{i}": img for i, img in enumerate(imgs)}
  arrays.update(image_references(imgs))
  np.savez_compressed(os.path.join(OUT, "images.npz"), size=np.int32(SIZE), **arrays)
  total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
  print(f"wrote {OUT} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
  main()
