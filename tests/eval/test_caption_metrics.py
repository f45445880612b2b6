"""Tests for mmjax/eval/caption_metrics.py.

The expected values are computed here from the metrics' definitions, written
independently of pycocoevalcap's code, on hand-made captions. The Java paths
(PTB tokenizer, METEOR) run only where `java` is installed, and are marked slow.
"""

import collections
import functools
import math

import pytest

from mmjax.eval import caption_metrics

needs_java = pytest.mark.skipif(not caption_metrics.java_available(),
                                reason="no java on PATH (PTB tokenizer, METEOR)")

# Four images, three references each; the first reference doubles as a correct
# prediction. Distinct enough that CIDEr-D's IDF (over these references) is
# informative.
REFS = {
    1: ["a man riding a wave on a surfboard", "a surfer rides a large wave",
        "man on a surfboard riding an ocean wave"],
    2: ["two dogs playing with a frisbee in the park", "dogs chase a red frisbee",
        "a couple of dogs run after a frisbee on the grass"],
    3: ["a kitchen with a stove and a refrigerator", "a clean kitchen with white cabinets",
        "the kitchen has a stove a fridge and a sink"],
    4: ["a giraffe standing next to a tree", "a tall giraffe eats leaves from a tree",
        "the giraffe reaches up into the branches"],
}


def _ngrams(words, n):
  return collections.Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def corpus_bleu(hyps, refs_list, n_max):
  """Corpus BLEU-n_max: clipped n-gram matches and candidate n-gram counts summed
  over sentences, geometric mean of the precisions, times the brevity penalty
  against the sum of each sentence's closest reference length (shorter on ties)."""
  matches, totals = [0] * n_max, [0] * n_max
  hyp_len = ref_len = 0
  for hyp, refs in zip(hyps, refs_list):
    h, rs = hyp.split(), [r.split() for r in refs]
    hyp_len += len(h)
    ref_len += min((abs(len(r) - len(h)), len(r)) for r in rs)[1]
    for n in range(1, n_max + 1):
      counts = _ngrams(h, n)
      most = collections.Counter()
      for r in rs:
        most |= _ngrams(r, n)  # | keeps the larger count of each n-gram
      matches[n - 1] += sum(min(c, most[g]) for g, c in counts.items())
      totals[n - 1] += max(0, len(h) - n + 1)
  log_p = sum(math.log(m / t) for m, t in zip(matches, totals)) / n_max
  bp = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
  return bp * math.exp(log_p)


def lcs_length(a, b):
  """Longest common subsequence of two token lists, by recursion on the heads."""
  @functools.lru_cache(maxsize=None)
  def go(i, j):
    if i == len(a) or j == len(b):
      return 0
    if a[i] == b[j]:
      return 1 + go(i + 1, j + 1)
    return max(go(i + 1, j), go(i, j + 1))
  return go(0, 0)


def rouge_l(hyp, refs, beta=1.2):
  """ROUGE-L as the COCO code defines it: the best precision and the best
  recall over the references, combined in an F-measure weighting recall by beta."""
  h = hyp.split()
  p = max(lcs_length(h, r.split()) / len(h) for r in refs)
  r = max(lcs_length(h, r.split()) / len(r.split()) for r in refs)
  return 0.0 if p == 0 or r == 0 else (1 + beta**2) * p * r / (r + beta**2 * p)


def test_identical_captions_score_perfectly():
  preds = {i: refs[0] for i, refs in REFS.items()}
  same = {i: [refs[0]] * 3 for i, refs in REFS.items()}
  out = caption_metrics.score(preds, same)
  for n in range(1, 5):
    assert out[f"BLEU-{n}"] == pytest.approx(1.0, abs=1e-6)
  assert out["ROUGE-L"] == pytest.approx(1.0)
  # Cosine 1 at every n-gram order, no length penalty: 10 x the mean of 1s.
  assert out["CIDEr-D"] == pytest.approx(10.0)
  assert out["num_images"] == 4 and out["num_empty_predictions"] == 0
  assert set(out) == set(caption_metrics.METRIC_NAMES) | {"num_images",
                                                          "num_empty_predictions"}


def test_bleu_matches_clipped_precision_with_brevity_penalty():
  refs = {7: ["the cat is on the mat", "there is a cat on the mat"],
          8: ["a dog runs in the park", "the dog is running through a park"]}
  # 12 words against 6 + 7 of the closest references (brevity penalty); "the"
  # twice in 7 counts once per reference occurrence; some match at every n.
  preds = {7: "the the cat on mat", 8: "a dog is running through a park"}
  out = caption_metrics.score(preds, refs)
  hyps, ref_lists = [preds[7], preds[8]], [refs[7], refs[8]]
  for n in range(1, 5):
    assert out[f"BLEU-{n}"] == pytest.approx(corpus_bleu(hyps, ref_lists, n), rel=1e-6)
  # And one by hand: 5 of 6 words, 3 of 5 bigrams, no brevity penalty.
  one = caption_metrics.score({0: "the cat sat on the mat"}, {0: refs[7]})
  assert one["BLEU-1"] == pytest.approx(5 / 6, rel=1e-6)
  assert one["BLEU-2"] == pytest.approx(math.sqrt(5 / 6 * 3 / 5), rel=1e-6)


def test_rouge_l_matches_lcs_f_measure():
  refs = {1: ["the cat was sitting on a mat", "a cat on the mat"],
          2: ["people walk along the beach at sunset"]}
  preds = {1: "a cat sat on the red mat", 2: "two people walking on a beach"}
  out = caption_metrics.score(preds, refs)
  want = (rouge_l(preds[1], refs[1]) + rouge_l(preds[2], refs[2])) / 2
  assert out["ROUGE-L"] == pytest.approx(want)
  # By hand for the first: LCS with "a cat on the mat" is 5, with the other 3
  # ("cat on mat"): P = max(5/7, 3/7), R = max(5/5, 3/7).
  p, r = 5 / 7, 1.0
  assert rouge_l(preds[1], refs[1]) == pytest.approx(2.44 * p * r / (r + 1.44 * p))


def test_cider_d_ranks_correct_above_partial_above_wrong():
  correct = {i: refs[0] for i, refs in REFS.items()}
  partial = {**correct, 1: "a man on a wave", 2: "dogs in the park"}
  wrong = {1: REFS[3][0], 2: REFS[4][0], 3: REFS[1][0], 4: REFS[2][0]}  # shuffled
  scores = [caption_metrics.score(p, REFS)["CIDEr-D"] for p in (correct, partial, wrong)]
  assert scores[0] > scores[1] > scores[2] >= 0.0
  assert scores[2] < 0.5  # only "a" and "the" shared, and those weigh little


def test_cider_d_of_one_image_is_zero():
  # The IDF is log(#images / document frequency): with one image every n-gram
  # gets weight 0. Documented, so that nobody reads it as a bug in their model.
  out = caption_metrics.score({1: REFS[1][0]}, {1: REFS[1]})
  assert out["CIDEr-D"] == 0.0 and out["BLEU-4"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("text, tokens", [
    # Each expected value is what pycocoevalcap's PTB path returns.
    ("A man riding a wave on top of a surfboard.", "a man riding a wave on top of a surfboard"),
    ("Two dogs don't play; they're \"sleeping\"!", "two dogs do n't play they 're sleeping"),
    ("A man's dog, running (fast) in the park.",
     "a man 's dog running -lrb- fast -rrb- in the park"),
    ("It's 5 o'clock -- time for tea?", "it 's 5 o'clock time for tea"),
    ("the boys' toys, 1,000 of them at 3:30...", "the boys toys 1,000 of them at 3:30"),
    ("A black-and-white photo of the U.S. flag & a $10 bill",
     "a black-and-white photo of the u.s. flag & a $ 10 bill"),
    ("Mr. Smith's dog\twith  tabs\r\nand lines", "mr. smith 's dog with tabs and lines"),
    ("I'd've said: “quoted” ‘single’ a dog’s", "i 'd 've said quoted single a dog 's"),
    ("Can't won't cannot", "ca n't wo n't can not"),
    ("...", ""),
])
def test_simple_tokenize_matches_ptb_conventions(text, tokens):
  assert caption_metrics.simple_tokenize(text) == tokens


def test_empty_predictions_are_scored_and_counted():
  preds = {i: refs[0] for i, refs in REFS.items()}
  preds[2], preds[3] = "", " ?! "  # the second has no word once tokenized
  out = caption_metrics.score(preds, REFS)
  assert out["num_empty_predictions"] == 2 and out["num_images"] == 4
  full = caption_metrics.score({i: refs[0] for i, refs in REFS.items()}, REFS)
  assert 0.0 < out["CIDEr-D"] < full["CIDEr-D"]


def test_mismatched_ids_name_them():
  preds = {1: "a", 2: "b", 5: "c"}
  refs = {1: ["a"], 2: ["b"], 3: ["c"]}
  with pytest.raises(ValueError, match=r"no references \(5\).*no prediction \(3\)"):
    caption_metrics.score(preds, refs)
  with pytest.raises(ValueError, match="differ only in type"):
    caption_metrics.score({"1": "a"}, {1: ["a"]})


def test_bad_inputs_say_what_to_fix():
  with pytest.raises(ValueError, match="image id 2 has no reference captions"):
    caption_metrics.score({1: "a cat", 2: "a dog"}, {1: ["a cat"], 2: []})
  with pytest.raises(ValueError, match="image id 2 has no reference captions with a word"):
    caption_metrics.score({1: "a cat", 2: "a dog"}, {1: ["a cat"], 2: ["..."]})
  with pytest.raises(ValueError, match="nothing to score"):
    caption_metrics.score({}, {})
  with pytest.raises(TypeError, match="one string; give a list"):
    caption_metrics.score({1: "a cat"}, {1: "a cat"})
  with pytest.raises(TypeError, match="must be strings"):
    caption_metrics.score({1: None}, {1: ["a cat"]})
  with pytest.raises(ValueError, match="tokenizer="):
    caption_metrics.score({1: "a cat"}, {1: ["a cat"]}, tokenizer="nltk")


def test_java_paths_without_java_say_how_to_do_without(monkeypatch):
  monkeypatch.setattr(caption_metrics.shutil, "which", lambda name: None)
  for kwargs in ({"tokenizer": "ptb"}, {"meteor": True}):
    with pytest.raises(RuntimeError, match="install Java.*tokenizer='simple', meteor=False"):
      caption_metrics.score({1: "a cat"}, {1: ["a cat"]}, **kwargs)


@pytest.mark.slow
@needs_java
def test_ptb_path_agrees_with_simple_on_coco_style_captions():
  refs = {
      1: ["A man's riding a wave, on a surfboard.", "A surfer (in black) rides a wave!"],
      2: ["Two dogs don't share the Frisbee.", "Dogs chase a \"red\" frisbee -- fast."],
      3: ["A kitchen: stove, fridge & sink.", "It's a clean kitchen, isn't it?"],
  }
  # A \r in a prediction must not shift the captions after it onto other images.
  preds = {1: "a man riding\r a wave", 2: "Two dogs with a frisbee.", 3: "A kitchen's stove."}
  ptb = caption_metrics.score(preds, refs, tokenizer="ptb")
  simple = caption_metrics.score(preds, refs)
  assert ptb == pytest.approx(simple, abs=1e-12)
  assert ptb["BLEU-1"] > 0.5


@pytest.mark.slow
@needs_java
def test_meteor_with_java():
  # METEOR's Java process loads its paraphrase table (~6 s): one call only.
  ids = sorted(REFS)
  preds = {i: REFS[i][0] for i in ids}
  preds.update({3: REFS[4][1], 4: REFS[3][1]})  # two right, two swapped
  out = caption_metrics.score(preds, REFS, meteor=True)
  # Measured: all four right score 1.0, all four swapped 0.07; half and half 0.34.
  assert 0.25 < out["METEOR"] < 0.6
  assert out["BLEU-1"] == caption_metrics.score(preds, REFS)["BLEU-1"]
