"""mmjax: contrastive image-text alignment in JAX/Flax."""

import setuptools

setuptools.setup(
    name="mmjax",
    version="0.1.0",
    description="Contrastive image-text alignment (CLIP, SigLIP, KL, MSE) in JAX/Flax, "
    "sharded from one CPU to a TPU pod.",
    packages=setuptools.find_packages(include=["mmjax", "mmjax.*"]),
    python_requires=">=3.10",
    # Ranges; the exact tested versions are pinned in requirements/lock.txt.
    install_requires=[
        "jax>=0.7.0",
        "flax>=0.11.0",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11.20",
        "tensorflow-datasets>=4.9.9",
        # tensorflow-datasets imports it to build datasets but declares it only
        # for Python < 3.9 (tensorflow/datasets#11212).
        "importlib_resources",
        "grain>=0.2.12",
        "sentencepiece>=0.2.0",
        "ml_collections>=1.1.0",
        "numpy>=1.26",
        "absl-py>=2.1",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "pillow>=10.0",
        "tensorboardX>=2.6.2",
        # Pretrained BERT text towers (mmjax.models.bert, mmjax.data.wordpiece):
        # HF weights read into NumPy, and the WordPiece they were trained with.
        "safetensors>=0.4",
        "tokenizers>=0.15",
        # Audio datasets (mmjax.data.audio_io): libsndfile decodes WAV, FLAC,
        # OGG and MP3, libsoxr resamples; both wheels bundle their C library.
        "soundfile>=0.12",
        "soxr>=0.3",
        # gs:// workdirs: etils.epath (orbax's path library) reaches GCS through
        # fsspec's gcsfs; arrays go through tensorstore's own gcs driver.
        "etils[epath]>=1.7",
        "gcsfs>=2024.6",
        # Caption metrics (mmjax.eval.caption_metrics): BLEU, ROUGE-L, CIDEr-D, METEOR.
        "pycocoevalcap>=1.2",
    ],
    extras_require={
        # gcp-storage-emulator: a local GCS server on 127.0.0.1 for the gs:// tests.
        "test": ["pytest>=8.0", "pytest-xdist>=3.5", "gcp-storage-emulator>=2024.8"],
        # The PyTorch references, never needed to run mmjax: the open_clip side
        # of experiments/benchmarks/train_step.py, the sentence-transformers
        # cross-check of the MiniLM converter, and the released-model readers'
        # references (transformers' SigLIP / SigLIP 2 / CLIP, open_clip with
        # timm for its SigLIP configs; TensorFlow for big_vision's text and
        # image ops), which also write tests/hub/data. These pins are a
        # torch/torchvision pair that load together on CPU. Install it with the
        # test extra ("bench,test") to run the live comparisons (-m bench).
        # librosa (with soundfile, soxr and music21's recorded clip) is the
        # reference of mmjax.data.audio's features.
        "bench": ["torch==2.14.1", "torchvision==0.29.1", "open-clip-torch",
                  "sentence-transformers", "transformers", "timm", "tensorflow-cpu",
                  "librosa", "soundfile", "soxr", "music21"],
    },
)
