"""configs.base(): entries that look alike stay independent."""

from mmjax import config_changes, configs


def test_switching_one_evaluator_on_leaves_the_others_off():
  c = configs.base()
  c.eval.evaluators.zeroshot.every = -1
  assert {k: v.every for k, v in c.eval.evaluators.items()} == {
      "retrieval": 0, "zeroshot": -1, "itm": None, "heldout": None, "fusion": None,
      "errors": None}


def test_old_configs_read_in_the_new_layout():
  old = {"model": {"image": {"kind": "cnn", "widths": [8]}, "text": {"width": 16}},
         "eval": {"evaluators": {"retrieval": 0, "itm": None}}}
  new = config_changes.upgrade(old)
  assert new["model"]["towers"] == {"image": {"kind": "cnn", "widths": [8]},
                                    "text": {"kind": "transformer", "width": 16}}
  assert new["eval"]["evaluators"] == {
      "retrieval": {"kind": "retrieval", "every": 0, "pair": ["image", "text"]},
      "itm": {"kind": "itm", "every": None}}
  assert "image" in old["model"]  # the caller's dict is not changed


def test_a_config_equals_its_json_round_trip_at_every_depth():
  """Pairs are tuples of tuples in a config and lists of lists in config.json."""
  import json  # pylint: disable=g-import-not-at-top
  c = configs.base()
  c.model.pair_scales = (("image", "text"), ("audio", "text"))
  saved = json.loads(json.dumps(c.to_dict()))
  assert saved["model"]["pair_scales"] == [["image", "text"], ["audio", "text"]]
  assert config_changes.diff(saved, c.to_dict()) == []
  c.model.pair_scales = (("image", "text"), ("text", "audio"))
  assert config_changes.diff(saved, c.to_dict()) == [
      "  model.pair_scales: [['image', 'text'], ['audio', 'text']] -> "
      "[['image', 'text'], ['text', 'audio']]"]
