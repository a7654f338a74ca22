"""The example models: built from the project's own files, and right."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import torchport
from torchport.archive import read_package


def test_mlp_is_the_seeded_32_128_128_8_network(mlp_package: Path) -> None:
    from torchport.examples.mlp.model import build

    torch.manual_seed(0)
    module = build().eval()
    shapes = [tuple(p.shape) for p in module.parameters()]
    assert shapes == [(128, 32), (128,), (128, 128), (128,), (8, 128), (8,)]
    x = np.random.default_rng(3).standard_normal((5, 32)).astype(np.float32)
    with torch.inference_mode():
        want = module(torch.from_numpy(x)).numpy()
    with torchport.load(mlp_package) as m:
        np.testing.assert_array_equal(m.predict({"input": x})["output"], want)


def test_digits_reaches_95_percent_on_held_out_digits(digits_package: Path) -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    _, x_test, _, y_test = train_test_split(
        x, data.target, test_size=0.2, random_state=0, stratify=data.target
    )
    with torchport.load(digits_package) as m:
        out = m.predict({"input": x_test})
    assert out["label"].dtype == np.int64
    assert (out["label"] == y_test).mean() >= 0.95
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(out["label"], out["probabilities"].argmax(axis=1))


def test_digits_signature_matches_the_design(digits_package: Path) -> None:
    sig = read_package(digits_package).manifest.signature
    assert [(s.name, s.datatype.value, s.shape) for s in sig.inputs] == [
        ("input", "FP32", [-1, 1, 8, 8])
    ]
    assert [(s.name, s.datatype.value, s.shape) for s in sig.outputs] == [
        ("probabilities", "FP32", [-1, 10]),
        ("label", "INT64", [-1]),
    ]


TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "torchport",
    "Ünïcödé, émojis 🚀 and numbers 12345 survive tokenisation.",
    "a long one " * 120,  # past 256 tokens: truncated as sentence-transformers does
]


@pytest.fixture(scope="module")
def reference_embeddings() -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    from torchport.examples.builders import minilm_source

    model = SentenceTransformer(str(minilm_source()), device="cpu")
    return np.asarray(model.encode(TEXTS, normalize_embeddings=True))


@pytest.mark.slow
def test_minilm_embeddings_match_sentence_transformers(
    minilm_package: Path, reference_embeddings: np.ndarray
) -> None:
    with torchport.load(minilm_package) as m:
        out = m.predict({"text": TEXTS})["embedding"]
        single = m.predict({"text": [TEXTS[1]]})["embedding"]
    assert out.shape == (len(TEXTS), 384)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    cosine = (out * reference_embeddings).sum(axis=1)
    assert cosine.min() >= 0.9999, cosine
    # Padding to the longest text in a batch does not change a text's embedding.
    assert float((single[0] * out[1]).sum()) >= 0.9999


@pytest.mark.slow
def test_minilm_refuses_non_utf8_text(minilm_package: Path) -> None:
    from torchport.errors import InvalidInput

    with torchport.load(minilm_package) as m, pytest.raises(InvalidInput, match="not UTF-8"):
        m.predict({"text": np.array([b"\xff\xfe"], dtype=object)})
