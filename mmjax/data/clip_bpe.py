"""CLIP's byte-level BPE tokenizer (OpenAI CLIP, open_clip, HF CLIPTokenizer).

Vocabulary: either open_clip's / OpenAI's merges file
(`bpe_simple_vocab_16e6.txt.gz`: a header line, then "a b" merges, of which
the first 48,894 are used) or a Hugging Face directory (`vocab.json` +
`merges.txt`). From a merges file the ids are laid out as the originals do:
the 256 byte symbols, the same with "</w>", one id per merge, then
<start_of_text> and <end_of_text> (49406 and 49407 for the released vocabulary).

Text goes through `clean` (what the originals do before BPE; see below), the
CLIP pre-tokenising regex (contractions, letter runs, single digits, runs of
other symbols; whitespace dropped), the GPT-2 byte-to-symbol map, and BPE with
"</w>" on each word's last symbol. The `tokenizers` package does the regex
split and the merges (it is what HF's CLIPTokenizer runs on), so no `regex`
dependency is needed.

Cleaning. The originals call `ftfy.fix_text`, then `html.unescape` twice,
strip, collapse whitespace and lower-case. ftfy is not a dependency of mmjax:
`fix_text_lite` redoes the parts of ftfy's defaults that change ordinary text
(HTML entities, NFC, curly quotes, Latin ligatures, full-width forms, control
characters and terminal escapes, C1 controls as Windows-1252) and leaves out
its mojibake repair (`fix_encoding`: "cafÃ©" stays as is, where ftfy makes it
"café"). Text that was never mis-decoded tokenizes identically. HF's
CLIPTokenizer does neither ftfy nor unescaping (only NFC, whitespace, lower
case), so on "&amp;" or curly quotes it differs from open_clip, and we follow
open_clip.
"""

import gzip
import html
import json
import re
import unicodedata
from typing import Sequence

import tokenizers
from tokenizers import models, pre_tokenizers

# The released vocabulary uses 48,894 merges of the file's 262,145 lines.
NUM_MERGES = 49152 - 256 - 2
SOT_NAMES = ("<start_of_text>", "<|startoftext|>")  # open_clip, HF spellings
EOT_NAMES = ("<end_of_text>", "<|endoftext|>")
END_OF_WORD = "</w>"
# CLIP's pre-tokeniser: the originals compile it case-insensitively (only the
# contractions care, and only when the text was not lower-cased).
PATTERN = r"""(?i)'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def byte_table() -> dict:
  """{byte: its printable stand-in}, in vocabulary order (GPT-2's byte map).

  Printable Latin-1 bytes stand for themselves; the other 68 bytes are moved
  to chr(256 + n) in byte order, so no symbol is whitespace or a control.
  """
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
               *range(ord("\xae"), ord("\xff") + 1)]
  moved = [b for b in range(256) if b not in printable]
  return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(moved)}}


def merges_from_gz(data: bytes) -> list:
  """bpe_simple_vocab_16e6.txt.gz bytes -> [(left, right)] as open_clip reads them."""
  lines = gzip.decompress(data).decode("utf-8").split("\n")[1:NUM_MERGES + 1]
  return [tuple(line.split()) for line in lines if line.strip()]


def vocab_from_merges(merges: Sequence) -> dict:
  """open_clip's id layout: bytes, bytes + "</w>", merges, sot, eot."""
  symbols = list(byte_table().values())
  names = symbols + [s + END_OF_WORD for s in symbols] + ["".join(m) for m in merges]
  names += [SOT_NAMES[0], EOT_NAMES[0]]
  return {name: i for i, name in enumerate(names)}


def read_hf(vocab_json: bytes, merges_txt: bytes) -> tuple:
  """HF vocab.json + merges.txt bytes -> (vocab, merges)."""
  vocab = json.loads(vocab_json.decode("utf-8"))
  merges = [tuple(line.split()) for line in merges_txt.decode("utf-8").split("\n")
            if line.strip() and not line.startswith("#version")]
  return vocab, merges


# ---- cleaning -------------------------------------------------------------

_QUOTES = {0x02BC: "'", **dict.fromkeys(range(0x2018, 0x201C), "'"),
           **dict.fromkeys(range(0x201C, 0x2020), '"')}
_LIGATURES = {c: s for c, s in zip(
    map(ord, "ĲĳŉǱǲǳǄǅǆǇǈǉǊǋǌﬀﬁﬂﬃﬄﬅﬆ"),
    ["IJ", "ij", "\u02bcn", "DZ", "Dz", "dz", "D\u017d", "D\u017e", "d\u017e", "LJ", "Lj",
     "lj", "NJ", "Nj", "nj", "ff", "fi", "fl", "ffi", "ffl", "\u017ft", "st"])}
_WIDTH = {0x3000: " ", **{i: unicodedata.normalize("NFKC", chr(i)) for i in range(0xFF01, 0xFFF0)
                          if unicodedata.normalize("NFKC", chr(i)) != chr(i)}}
_CONTROL = dict.fromkeys([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F,
                          *range(0x206A, 0x2070), 0xFEFF, *range(0xFFF9, 0xFFFD)])
_TABLE = str.maketrans({**_LIGATURES, **_WIDTH, **_QUOTES})
_C1 = re.compile("[\x80-\x9f]")
_ANSI = re.compile("\x1b\\[((?:\\d|;)*)([a-zA-Z])")
_ENTITY = re.compile(r"&#?[0-9A-Za-z]{1,24};")
_ENTITIES = {"&" + name: char for name, char in html.entities.html5.items()
             if name.endswith(";")}


def _c1(match) -> str:
  # Browsers read stray C1 controls as Windows-1252; its 5 holes stay as is.
  try:
    return match.group(0).encode("latin-1").decode("cp1252")
  except UnicodeDecodeError:
    return match.group(0)


def _entity(match) -> str:
  text = match.group(0)
  if text in _ENTITIES:
    return _ENTITIES[text]
  if text.startswith("&#"):
    out = html.unescape(text)
    return text if ";" in out else out
  return text


def _fix_line(line: str) -> str:
  unescape = "<" not in line  # ftfy leaves entities alone in text with tags
  while True:
    before = line
    if unescape:
      line = _ENTITY.sub(_entity, line)
    line = _C1.sub(_c1, line).translate(_TABLE)
    line = line.replace("\r\n", "\n").replace("\r", "\n")
    line = line.replace("\u2028", "\n").replace("\u2029", "\n")
    # Terminal escapes go before the control characters, whose ESC they start with.
    line = unicodedata.normalize("NFC", _ANSI.sub("", line).translate(_CONTROL))
    if line == before:
      return line


def fix_text_lite(text: str) -> str:
  """ftfy.fix_text's default fixes for text that is not mojibake, line by line."""
  lines = text.split("\n")
  return "".join(_fix_line(line + "\n") for line in lines[:-1]) + _fix_line(lines[-1])


def basic_clean(text: str) -> str:
  """The originals' basic_clean: ftfy (lite), html.unescape twice, strip."""
  return html.unescape(html.unescape(fix_text_lite(text))).strip()


def whitespace_clean(text: str) -> str:
  return " ".join(text.split())


# ---- the tokenizer --------------------------------------------------------


class ClipBpe:
  """Byte-level BPE over a CLIP vocabulary: cleaned text -> ids, no sot/eot.

  vocab: {symbol: id} with both special tokens; merges: [(left, right)] in
  priority order.
  """

  def __init__(self, vocab: dict, merges: Sequence):
    sot = [vocab[n] for n in SOT_NAMES if n in vocab]
    eot = [vocab[n] for n in EOT_NAMES if n in vocab]
    if not sot or not eot:
      raise ValueError(f"the CLIP vocabulary has no start/end of text token "
                       f"(one of {SOT_NAMES} and {EOT_NAMES}); is it a CLIP vocabulary?")
    self.sot_id, self.eot_id = sot[0], eot[0]
    self.vocab_size = len(vocab)
    self._symbol_to_byte = {s: b for b, s in byte_table().items()}
    self._id_to_symbol = {i: s for s, i in vocab.items()}
    model = models.BPE(vocab=dict(vocab), merges=[tuple(m) for m in merges],
                       end_of_word_suffix=END_OF_WORD, continuing_subword_prefix="")
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    # The originals map a literal special token in the text to its id.
    tok.add_special_tokens([n for n in SOT_NAMES + EOT_NAMES if n in vocab])
    self._tok = tok

  def encode(self, texts: Sequence[str]) -> list:
    """Cleaned texts -> lists of ids (no sot/eot, no truncation)."""
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Sequence[int]) -> str:
    """ids (no specials) -> text; word ends become spaces, as the originals decode."""
    symbols = "".join(self._id_to_symbol.get(int(i), "") for i in ids)
    data = bytes(self._symbol_to_byte[s] for s in symbols if s in self._symbol_to_byte)
    return data.decode("utf-8", errors="replace").replace(END_OF_WORD, " ").strip()
