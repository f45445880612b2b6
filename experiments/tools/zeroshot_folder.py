"""Zero-shot classification of a folder of images with a released model.

  python experiments/tools/zeroshot_folder.py SOURCE --images DIR [reader options]

DIR holds one sub-folder per class, named by the class ("golden retriever",
"tabby_cat": underscores read as spaces), as torchvision's ImageFolder lays
out ImageNet-style sets. SOURCE is anything `mmjax.hub.load` reads (a Hugging
Face directory, a big_vision .npz with --variant, an open_clip file with
--model_name, or an mmjax workdir); the images are preprocessed and the prompts
tokenised the family's way. Each class is the mean of CLIP's prompt templates
(a small ensemble below, or --templates FILE with one per line). Prints top-1 /
top-5 and balanced accuracy, and writes the per-class accuracy as JSON.
"""

import argparse
import json
import os

import numpy as np
from PIL import Image

from mmjax import hub
from mmjax.eval import zeroshot

TEMPLATES = ("a photo of a {}.", "a bad photo of a {}.", "a photo of the large {}.",
             "a photo of the small {}.", "a close-up photo of a {}.", "itap of a {}.",
             "a good photo of a {}.", "a rendering of a {}.")
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def image_folder(root: str) -> tuple[list[str], list[str], np.ndarray]:
  """(class names, image paths, labels [N]) of an ImageFolder-style directory."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"--images {root} is not a directory of class folders.")
  classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  if len(classes) < 2:
    raise ValueError(f"{root} has {len(classes)} class folders; zero-shot needs at least 2.")
  files, labels = [], []
  for label, name in enumerate(classes):
    for f in sorted(os.listdir(os.path.join(root, name))):
      if f.lower().endswith(EXTENSIONS):
        files.append(os.path.join(root, name, f))
        labels.append(label)
  return [c.replace("_", " ") for c in classes], files, np.asarray(labels)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("source")
  parser.add_argument("--images", required=True)
  parser.add_argument("--templates", help="a file with one prompt template ('{}' slot) per line")
  parser.add_argument("--out", default="zeroshot.json")
  parser.add_argument("--batch_size", type=int, default=32)
  for flag in ("tokenizer", "variant", "model_name", "model_config"):
    parser.add_argument(f"--{flag}")
  for flag in ("res", "text_len"):
    parser.add_argument(f"--{flag}", type=int)
  args = parser.parse_args()
  options = {k: getattr(args, k) for k in ("tokenizer", "variant", "model_name",
                                           "model_config", "res", "text_len")
             if getattr(args, k) is not None}
  model = hub.load(args.source, batch_size=args.batch_size, **options)
  templates = TEMPLATES
  if args.templates:
    with open(args.templates) as f:
      templates = [line.strip() for line in f if line.strip()]
  classes, files, labels = image_folder(args.images)
  class_emb = zeroshot.class_embeddings(model.encode_text, model.tokenizer, classes, templates,
                                        model.context_length, args.batch_size)
  image_emb = []
  for start in range(0, len(files), args.batch_size):
    images = [np.asarray(Image.open(f).convert("RGB")) for f in files[start:start + args.batch_size]]
    image_emb.append(model.encode_image(model.preprocess_image(images)))
  result = zeroshot.classify(np.concatenate(image_emb), class_emb, labels, class_names=classes)
  print(f"{len(files)} images, {len(classes)} classes: " +
        ", ".join(f"{k} {result[k]:.4f}" for k in ("top1", "top5") if k in result) +
        f", balanced {result['mean_per_class']:.4f}")
  with open(args.out, "w") as f:
    json.dump({k: v for k, v in result.items() if k != "confusion"}, f, indent=1)


if __name__ == "__main__":
  main()
