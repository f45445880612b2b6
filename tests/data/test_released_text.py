"""Tests for mmjax/data/released_text.py and clip_bpe.py: ids equal to the originals'.

The references in tests/hub/data/tokenizers/ were written by
tests/hub/references/make_tokenizers.py (big_vision's ops, transformers,
open_clip) on tiny vocabularies in the released layouts. The `bench` tests
rebuild the references in-process with the real CLIP vocabulary.
"""

import importlib.util
import json
import os
import pickle
import shutil
import types
import unicodedata

import numpy as np
import pytest

from mmjax.data import clip_bpe
from mmjax.data import released_text as rt

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "hub", "data",
                    "tokenizers")
C4, GEMMA = os.path.join(DATA, "c4.model"), os.path.join(DATA, "gemma.model")
CLIP_GZ, HF_CLIP = os.path.join(DATA, "clip_bpe.txt.gz"), os.path.join(DATA, "hf_clip")
# preset -> its vocabulary in the fixtures; each preset's reference ids are ids[preset].
VOCAB = {"siglip": C4, "hf_siglip": C4, "open_clip_siglip": C4, "siglip2": GEMMA,
         "hf_siglip2": GEMMA, "open_clip_siglip2": GEMMA, "clip": CLIP_GZ}


@pytest.fixture(scope="module")
def texts():
  with open(os.path.join(DATA, "strings.json"), encoding="utf-8") as f:
    return json.load(f)


@pytest.fixture(scope="module")
def ids():
  with np.load(os.path.join(DATA, "ids.npz")) as f:
    return dict(f)


@pytest.fixture(scope="module")
def toks():
  return {name: rt.ReleasedTokenizer(rt.preset(name, file=file)) for name, file in VOCAB.items()}


def _assert_rows_equal(got, ref, texts, what):
  bad = [i for i in range(len(texts)) if not np.array_equal(got[i], ref[i])]
  assert not bad, f"{what}: {len(bad)} rows differ, e.g. " + "; ".join(
      f"{texts[i]!r}: {got[i][:10].tolist()} vs {ref[i][:10].tolist()}" for i in bad[:3])


@pytest.mark.parametrize("name", list(VOCAB))
def test_ids_equal_the_originals(name, toks, texts, ids):
  got = toks[name].encode(texts, allow_empty=True)
  assert got.dtype == np.int32 and got.shape == ids[name].shape
  _assert_rows_equal(got, ids[name], texts, name)


def test_clip_from_hf_directory(toks, texts, ids):
  tok = rt.ReleasedTokenizer(rt.preset("clip", file=HF_CLIP))
  got = tok.encode(texts, allow_empty=True)
  # A literal special token in the text is the one id where the vocabulary
  # spells it so (open_clip: "<start_of_text>", HF: "<|startoftext|>").
  keep = [i for i, t in enumerate(texts) if t != "<start_of_text>"]
  assert len(keep) == 99
  _assert_rows_equal(got[keep], ids["clip"][keep], [texts[i] for i in keep],
                     "vocab.json + merges.txt")
  assert tok.fingerprint() != toks["clip"].fingerprint()  # other bytes, same ids
  # HF's CLIPTokenizer pads with EOT and cleans less (no ftfy, no unescaping):
  # equal after its EOT on every text those cleaners leave alone.
  hf = ids["hf_clip"].copy()
  for row in hf:
    row[list(row).index(tok.eos_id) + 1:] = tok.pad_id
  plain = [i for i, t in enumerate(texts)
           if clip_bpe.fix_text_lite(t) == unicodedata.normalize("NFC", t) and "&" not in t]
  assert len(plain) >= 85
  _assert_rows_equal(got[plain], hf[plain], [texts[i] for i in plain], "HF CLIPTokenizer")


def test_recipes(toks):
  for name in rt.PRESETS:
    recipe = rt.preset(name)
    assert json.loads(json.dumps(recipe)) == recipe
    assert {"kind", "file", "length", "pad_id", "eos_id", "bos_id", "lower",
            "clean"} <= set(recipe)
  assert (rt.preset("siglip")["pad_id"], rt.preset("siglip")["eos_id"]) == (1, 1)
  assert (rt.preset("siglip2")["pad_id"], rt.preset("siglip2")["eos_id"]) == (0, 1)
  clip = rt.preset("clip")
  assert (clip["length"], clip["bos_id"], clip["eos_id"], clip["pad_id"]) == (77, 49406, 49407, 0)
  assert rt.preset("siglip", length=16)["length"] == 16
  # A vocabulary given: its own sot/eot ids.
  tok = toks["clip"]
  assert (tok.bos_id, tok.eos_id) == (tok.vocab_size - 2, tok.vocab_size - 1)
  with pytest.raises(ValueError, match="siglip2"):
    rt.preset("siglip3")


def test_siglip_flavours_differ_only_on_case_and_punctuation(toks):
  # big_vision lower-cases ASCII only and keeps punctuation; transformers
  # lower-cases everything and drops ASCII punctuation.
  same = ["a photo of a cat", "two dogs in zürich", "東京の夜景"]
  for a, b, differ in (("siglip", "hf_siglip", ["ÉCOLE NORMALE", "a cat, a dog."]),
                       ("siglip2", "hf_siglip2", ["ÉCOLE NORMALE"])):
    assert np.array_equal(toks[a].encode(same), toks[b].encode(same))
    for text in differ:
      assert not np.array_equal(toks[a].encode([text]), toks[b].encode([text])), (a, text)
  assert rt.prepare("ÉCOLE, Zürich!", rt.preset("siglip2")) == "École, zürich!"
  assert rt.prepare("ÉCOLE, Zürich!", rt.preset("hf_siglip2")) == "école, zürich!"
  assert rt.prepare("ÉCOLE, a_b Zürich!", rt.preset("hf_siglip")) == "école ab zürich"
  assert rt.prepare("ÉCOLE, a_b Zürich!", rt.preset("open_clip_siglip")) == "école a b zürich"


def test_sticky_eos_and_padding(toks):
  long = "a photo of a cat " * 40
  for name, tok in toks.items():
    out = tok.encode([long, "a cat"], length=10)
    assert out.shape == (2, 10)
    head = [] if tok.bos_id is None else [tok.bos_id]
    full = head + tok.ids([long])[0]
    # Too long: the first ids, then EOS in the last slot ("sticky").
    assert out[0].tolist() == full[:9] + [tok.eos_id], name
    row = out[1].tolist()
    short = head + tok.ids(["a cat"])[0] + [tok.eos_id]
    assert row == short + [tok.pad_id] * (10 - len(short)), name
  with pytest.raises(ValueError, match="room"):
    toks["clip"].encode(["a"], length=1)


def test_empty_texts(toks):
  tok = toks["clip"]
  with pytest.raises(ValueError, match="text 1"):
    tok.encode(["a cat", "  \n"])
  with pytest.raises(TypeError):
    tok.encode("a cat")
  row = tok.encode([""], allow_empty=True)[0].tolist()
  assert row[:3] == [tok.bos_id, tok.eos_id, tok.pad_id]


def test_decode(toks):
  texts = ["a photo of a cat", "two dogs playing in the park"]
  for name, tok in toks.items():
    assert tok.decode(tok.encode(texts)) == texts, name
  tok = toks["siglip"]  # stops at the first EOS, whatever follows
  row = tok.encode(["a cat"], length=12)
  row[0, -2:] = 5
  assert tok.decode(row) == ["a cat"]


def test_save_load_round_trip(toks, texts, tmp_path):
  for name in ("siglip2", "clip"):
    tok = toks[name]
    saved = tok.save(str(tmp_path / name))
    assert rt.is_saved(saved) and not rt.is_saved(str(tmp_path))
    with open(os.path.join(saved, rt.RECIPE_FILE)) as f:
      recipe = json.load(f)
    assert not os.path.isabs(recipe["file"])
    moved = str(tmp_path / f"{name}_moved")
    shutil.move(saved, moved)  # the folder keeps its tokenizer wherever it goes
    again = rt.ReleasedTokenizer.load(moved)
    assert again.fingerprint() == tok.fingerprint() and again.path == moved
    assert np.array_equal(again.encode(texts, allow_empty=True),
                          tok.encode(texts, allow_empty=True))
  hf = rt.ReleasedTokenizer(rt.preset("clip", file=HF_CLIP))
  again = rt.ReleasedTokenizer.load(hf.save(str(tmp_path / "hf")))
  assert sorted(os.listdir(tmp_path / "hf")) == ["merges.txt", rt.RECIPE_FILE, "vocab.json"]
  assert again.fingerprint() == hf.fingerprint()
  with pytest.raises(FileNotFoundError, match=rt.RECIPE_FILE):
    rt.ReleasedTokenizer.load(str(tmp_path))


def test_pickles_by_recipe(toks, texts):
  for tok in (toks["hf_siglip"], toks["clip"]):
    data = pickle.dumps(tok)
    assert len(data) < 2000  # the recipe, not the vocabulary
    again = pickle.loads(data)
    assert again.path == tok.path
    assert np.array_equal(again.encode(texts, allow_empty=True),
                          tok.encode(texts, allow_empty=True))


def test_fingerprint(toks):
  prints = {name: tok.fingerprint() for name, tok in toks.items()}
  assert len(set(prints.values())) == len(prints)  # recipe or vocabulary differ
  assert rt.ReleasedTokenizer(rt.preset("siglip", file=C4)).fingerprint() == prints["siglip"]


def test_vocabulary_files(tmp_path):
  hf_dir = tmp_path / "hf_siglip"
  hf_dir.mkdir()
  shutil.copy(C4, hf_dir / "spiece.model")
  tok = rt.ReleasedTokenizer(rt.preset("hf_siglip", file=str(hf_dir)))
  assert tok.vocab_size == 400 and (tok.pad_id, tok.eos_id) == (1, 1)
  with pytest.raises(FileNotFoundError, match="spiece.model"):
    rt.ReleasedTokenizer(rt.preset("siglip", file=str(tmp_path)))
  with pytest.raises(ValueError, match="outside the vocabulary"):
    rt.ReleasedTokenizer(rt.preset("clip", file=CLIP_GZ) | {"eos_id": 49407})


def test_missing_vocabulary_names_the_download(monkeypatch, tmp_path):
  for name, expect in (("siglip", "c4_en"), ("hf_siglip2", "gemma_tokenizer.model"),
                       ("open_clip_siglip", "mc4")):
    with pytest.raises(FileNotFoundError, match=expect) as err:
      rt.ReleasedTokenizer(rt.preset(name))
    assert "--tokenizer" in str(err.value)
  with pytest.raises(FileNotFoundError, match="no vocabulary at"):
    rt.ReleasedTokenizer(rt.preset("siglip", file=str(tmp_path / "nope.model")))
  # CLIP without a file: open_clip's bundled copy if installed, found without importing it.
  found = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda n, *a: None if n == "open_clip" else found(n, *a))
  with pytest.raises(FileNotFoundError, match="bpe_simple_vocab_16e6.txt.gz"):
    rt.ReleasedTokenizer(rt.preset("clip"))
  shutil.copy(CLIP_GZ, tmp_path / rt.CLIP_GZ)
  fake = types.SimpleNamespace(submodule_search_locations=[str(tmp_path)])
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda n, *a: fake if n == "open_clip" else found(n, *a))
  tiny = rt.ReleasedTokenizer(rt.preset("clip", file=CLIP_GZ))  # its own sot/eot ids
  tok = rt.ReleasedTokenizer(rt.preset("clip") | {"bos_id": tiny.bos_id, "eos_id": tiny.eos_id})
  assert tok.recipe["file"] == str(tmp_path / rt.CLIP_GZ)
  assert tok.fingerprint() == tiny.fingerprint()


def test_clip_cleaning():
  fix = clip_bpe.fix_text_lite
  assert fix("don’t “quote”") == "don't \"quote\""
  assert fix("ﬁne ﬂowers") == "fine flowers"
  assert fix("ｆｕｌｌ\u3000ＡＢＣ１") == "full ABC1"
  assert fix("fish &amp;amp; chips &#233;") == "fish & chips é"
  assert fix("<b>&amp;</b>") == "<b>&amp;</b>"  # ftfy: no entities in text with tags
  assert fix("esc \x1b[31mred\x1b[0m bell\x07") == "esc red bell"
  assert fix("cafe\u0301") == "caf\u00e9"
  assert fix("\x93quoted\x94") == '"quoted"'  # C1 controls read as Windows-1252
  assert clip_bpe.basic_clean("  &amp;lt;x&amp;gt;  ") == "<x>"
  assert clip_bpe.whitespace_clean(" a \t b\n\nc ") == "a b c"


@pytest.mark.bench
def test_real_clip_vocabulary_against_open_clip_and_hf(tmp_path):
  """The real 49,408-token vocabulary: open_clip's SimpleTokenizer and HF's
  CLIPTokenizer built from it, on the fixture strings and 2,000 captions."""
  pytest.importorskip("torch")
  tokenizer = pytest.importorskip("open_clip.tokenizer")
  ftfy = pytest.importorskip("ftfy")
  transformers = pytest.importorskip("transformers")
  with open(os.path.join(DATA, "strings.json"), encoding="utf-8") as f:
    texts = json.load(f)
  rng = np.random.default_rng(0)
  words = ("a photo of the cat dog Zürich café 東京 😀 it's don't 3 42 !! , . "
           "BIG Small naïve São ÉCOLE &amp; ﬁne “q” -- under_score").split()
  texts += [" ".join(rng.choice(words, rng.integers(1, 30))) for _ in range(2000)]
  ours = rt.ReleasedTokenizer(rt.preset("clip"))  # the copy open_clip ships
  assert ours.vocab_size == 49408 and (ours.bos_id, ours.eos_id) == (49406, 49407)
  got = ours.encode(texts, allow_empty=True)
  # Only ftfy's mojibake repair is left out; no test text is mojibake.
  assert all(ftfy.fix_text(t) == clip_bpe.fix_text_lite(t) for t in texts)
  ref = tokenizer.SimpleTokenizer()(texts).numpy()
  _assert_rows_equal(got, ref, texts, "open_clip SimpleTokenizer")
  simple = tokenizer.SimpleTokenizer()
  vocab = {k.replace("<start_of_text>", "<|startoftext|>").replace(
      "<end_of_text>", "<|endoftext|>"): v for k, v in simple.encoder.items()}
  merges = [" ".join(m) for m, _ in sorted(simple.bpe_ranks.items(), key=lambda kv: kv[1])]
  # An HF model directory's files, as CLIPTokenizer.from_pretrained reads them.
  with open(tmp_path / "vocab.json", "w", encoding="utf-8") as f:
    json.dump(vocab, f)
  with open(tmp_path / "merges.txt", "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
  hf = transformers.CLIPTokenizer.from_pretrained(str(tmp_path))
  from_dir = rt.ReleasedTokenizer(rt.preset("clip", file=str(tmp_path)))
  keep = [i for i, t in enumerate(texts) if t != "<start_of_text>"]  # see above
  _assert_rows_equal(from_dir.encode(texts, allow_empty=True)[keep], got[keep],
                     [texts[i] for i in keep], "from vocab.json + merges.txt")
  hf_ids = np.asarray(hf(texts, padding="max_length", truncation=True, max_length=77)["input_ids"])
  for row in hf_ids:
    row[list(row).index(49407) + 1:] = 0
  plain = [i for i in keep if "&" not in texts[i]
           and clip_bpe.fix_text_lite(texts[i]) == unicodedata.normalize("NFC", texts[i])]
  assert len(plain) > 500
  _assert_rows_equal(got[plain], hf_ids[plain], [texts[i] for i in plain], "HF CLIPTokenizer")
