"""configs.base(): entries that look alike stay independent."""

from mmjax import config_changes, configs


def test_switching_one_evaluator_on_leaves_the_others_off():
  c = configs.base()
  c.eval.evaluators.zeroshot.every = -1
  assert {k: v.every for k, v in c.eval.evaluators.items()} == {
      "retrieval": 0, "zeroshot": -1, "itm": None, "heldout": None}


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
