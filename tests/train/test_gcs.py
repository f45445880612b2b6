"""A gs:// workdir end to end, against a local GCS emulator (tests/gcs.py).

Training, evaluation onto another mesh with an export, a warm start and a
teacher read from the bucket, and the bad-input messages (no bucket, no
credentials). SIGTERM / SIGKILL and resume on a bucket are in
test_preemption.py.
"""

import io
import json
import os

import jax
import numpy as np
import pytest

from mmjax import evaluate, paths
from mmjax.train import build, checkpoint, faults, loop
from mmjax.train import teacher as teacher_lib
from mmjax.train import warm_start

from tests import gcs
from tests.train.conftest import tiny_config

pytestmark = pytest.mark.slow  # trains through an emulated bucket


@pytest.fixture(scope="module")
def bucket():
  with gcs.emulator() as env:
    yield env


def _config(**overrides):
  c = tiny_config(**overrides)
  c.eval.reports = True  # the plots go to the bucket too
  return c


@pytest.fixture(scope="module")
def gs_run(bucket, tmp_path_factory):
  del bucket
  cwd = os.getcwd()
  os.chdir(tmp_path_factory.mktemp("cwd"))  # where a local "gs:" folder would appear
  try:
    workdir = f"gs://{gcs.BUCKET}/runs/tiny"
    result = loop.train_and_evaluate(_config(), workdir)
    stray = os.path.exists("gs:")
  finally:
    os.chdir(cwd)
  return workdir, result, stray


def _restored_params(workdir, step):
  mngr = checkpoint.manager(workdir, read_only=True)
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))["state"]["params"]


def test_training_writes_the_whole_run_to_the_bucket(gs_run):
  workdir, result, stray = gs_run
  assert not stray, "a gs:// path was written as a local folder"
  names = set(paths.listdir(workdir))
  for name in ("metrics.jsonl", "eval.json", "config.json", "checkpoints", "tokenizer",
               "curves.png", "recall_curves.png", "retrieval_grid.png", "tensorboard"):
    assert name in names, (name, sorted(names))
  assert not any(n.startswith(".write_probe") or ".tmp" in n for n in names)
  assert checkpoint.manager(workdir, read_only=True).all_steps() == [3, 6]
  rows = [json.loads(l) for l in paths.read_text(paths.join(workdir, "metrics.jsonl"))
          .splitlines()]
  assert [r["step"] for r in rows if "train/loss" in r] == [2, 4, 6]
  saved = json.loads(paths.read_text(paths.join(workdir, "eval.json")))
  assert saved["step"] == 6
  assert saved["text_to_image_R@1"] == pytest.approx(result["text_to_image_R@1"])


def test_evaluate_restores_onto_another_mesh_and_exports_to_the_bucket(gs_run):
  workdir, result, _ = gs_run
  config = _config(**{"mesh.data": 2, "mesh.fsdp": 4})
  export = f"gs://{gcs.BUCKET}/exports/tiny.npz"
  got = evaluate.evaluate_workdir(config, workdir, export=export)
  assert got["step"] == 6
  for key in ("image_to_text_R@1", "text_to_image_R@5", "text_to_image_mean_rank"):
    assert got[key] == pytest.approx(result[key], abs=1e-6), key
  emb = np.load(io.BytesIO(paths.read_bytes(export)))
  assert emb["image_emb"].shape == (20, 8)
  assert emb["text_emb"].shape[0] == emb["text_to_image"].shape[0] == len(emb["captions"])
  np.testing.assert_allclose(np.linalg.norm(emb["image_emb"], axis=-1), 1.0, atol=1e-5)


def test_a_warm_start_and_a_teacher_read_the_bucket(gs_run):
  workdir, _, _ = gs_run
  want = _restored_params(workdir, 6)
  got = warm_start.load_params(workdir)
  jax.tree.map(np.testing.assert_array_equal, got, jax.tree.map(np.asarray, want))

  config = tiny_config()
  config.distill.teacher = workdir
  terms = build.check(config)
  mesh = build.mesh(config)
  tok = build.tokenizer(config, workdir)
  teacher = teacher_lib.load(config, terms, mesh, tok)
  assert teacher.step == 6
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, teacher.params),
               jax.tree.map(np.asarray, want))
  # A student pinned to step 3 reads step 3, not the latest.
  pinned = teacher_lib.load(config, terms, mesh, tok, step=3)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, pinned.params),
               jax.tree.map(np.asarray, _restored_params(workdir, 3)))
  with pytest.raises(teacher_lib.TeacherError, match="step 9 .* that step is gone"):
    teacher_lib.load(config, terms, mesh, tok, step=9)


def test_a_missing_bucket_fails_at_start_with_the_fix(bucket):
  del bucket
  with pytest.raises(paths.StorageError,
                     match=r"bucket gs://no-such-bucket does not exist .* create it"):
    faults.check_workdir("gs://no-such-bucket/runs/x")


def test_missing_credentials_fail_at_start_with_the_fix(bucket, monkeypatch, tmp_path):
  del bucket
  monkeypatch.delenv("STORAGE_EMULATOR_HOST")  # a real bucket, as on a pod
  monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
  with pytest.raises(paths.StorageError,
                     match="no usable Google Cloud credentials.*gcloud auth"):
    faults.check_workdir("gs://some-bucket/runs/x")
