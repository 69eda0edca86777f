"""Decoding on the GPU and the heads on CUDA. The CPU-side rules run everywhere; the rest
needs a CUDA device and is skipped without one (CI has none)."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from featx import store
from featx.core.errors import FeatxError
from featx.extraction import extract
from featx.extraction.gpu_decode import gpu_ready
from support.imagegen import jpeg_bytes, make_folder, photo

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg_bytes(photo(1), exif=exif.tobytes())


def test_only_plain_jpegs_go_to_the_gpu():
    assert gpu_ready(jpeg_bytes(photo(0)))
    assert gpu_ready(jpeg_bytes(photo(0).convert("L")))
    assert gpu_ready(jpeg_bytes(photo(0), progressive=True))
    assert not gpu_ready(jpeg_bytes(photo(0).convert("CMYK")))
    assert not gpu_ready(rotated_jpeg())  # nvJPEG ignores EXIF orientation
    assert not gpu_ready(png_bytes(photo(0)))
    assert not gpu_ready(b"\xff\xd8\xff" + b"\x00" * 20)  # a JPEG signature, then junk
    assert not gpu_ready(b"")


def test_gpu_decoding_without_cuda_is_refused_clearly(tmp_path, monkeypatch, lite0_small):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    make_folder(tmp_path / "img", {"a": 1, "b": 1})
    with pytest.raises(FeatxError, match="decode='gpu': decoding on the GPU needs a CUDA device"):
        extract(str(tmp_path / "img"), lite0_small, tmp_path / "cache", device="cpu", decode="gpu")


@cuda
def test_gpu_decoding_gives_the_cpu_features_within_precision(tmp_path, lite0):
    root = make_folder(tmp_path / "img", {"a": 6, "b": 6})
    big = photo(99, size=(900, 700))  # large enough for the CPU's DCT scaling
    (root / "a" / "big.jpg").write_bytes(jpeg_bytes(big))
    (root / "a" / "rotated.jpg").write_bytes(rotated_jpeg())  # takes the CPU path
    (root / "b" / "cmyk.jpg").write_bytes(jpeg_bytes(photo(5).convert("CMYK")))
    (root / "b" / "plain.png").write_bytes(png_bytes(photo(6)))
    (root / "b" / "broken.jpg").write_bytes(jpeg_bytes(photo(7))[:200])
    cpu = extract(str(root), lite0, tmp_path / "cache", device="cuda", decode="cpu")
    gpu = extract(str(root), lite0, tmp_path / "cache", device="cuda", decode="gpu")
    assert gpu.path != cpu.path  # the decoder is part of the store's identity
    assert store.info(gpu.path)["provenance"]["backbone"]["preprocessing"]["decode"] == "nvjpeg"
    Xc, yc, kc, _ = store.load(cpu.path)
    Xg, yg, kg, _ = store.load(gpu.path)
    assert list(kc) == list(kg) and np.array_equal(yc, yg)
    assert gpu.skipped == cpu.skipped == 1
    cos = dict(zip(kc, np.sum(Xc * Xg, 1) / np.linalg.norm(Xc, axis=1) / np.linalg.norm(Xg, axis=1)))
    cpu_path = ("a/rotated.jpg", "b/cmyk.jpg", "b/plain.png")
    assert all(cos[k] > 0.9999 for k in cpu_path), cos  # decoded on the CPU either way
    # nvJPEG's chroma upsampling differs from libjpeg's; these tiny pictures are enlarged
    # 3.5x, which shows it most (real photos: see benchmarks/RESULTS.md)
    gpu_path = [v for k, v in cos.items() if k not in cpu_path]
    assert min(gpu_path) > 0.9 and np.mean(gpu_path) > 0.97, cos


@cuda
def test_heads_on_cuda_agree_with_the_cpu():
    from featx.heads.knn import CosineKNN
    from featx.heads.logreg import TorchLogisticRegression

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 2000)
    X = rng.normal(size=(2000, 64)) + rng.normal(size=(5, 64))[y]
    a = TorchLogisticRegression(C=0.1, device="cpu").fit(X, y)
    b = TorchLogisticRegression(C=0.1, device="cuda").fit(X, y)
    assert np.abs(a.predict_proba(X) - b.predict_proba(X)).max() < 5e-3
    k1, k2 = CosineKNN(10, device="cpu").fit(X, y), CosineKNN(10, device="cuda").fit(X, y)
    assert np.mean(k1.predict(X) == k2.predict(X)) > 0.999


def test_auto_decodes_on_the_cpu_without_cuda(tmp_path, lite0_small):
    make_folder(tmp_path / "img", {"a": 2})
    r = extract(str(tmp_path / "img"), lite0_small, tmp_path / "cache", device="cpu", workers=0)
    assert store.info(r.path)["provenance"]["backbone"]["preprocessing"]["decode"] == "jpeg-dct-scaled"


def test_the_gpu_batch_is_the_largest_power_of_two_in_an_eighth_of_its_memory():
    from featx.extraction.loader import batch_for_memory

    gib = 1 << 30
    assert batch_for_memory(40e6, 141 * gib) == 256  # lite0 on an H200: ~40 MB per image at 224 px
    assert batch_for_memory(1e6, 141 * gib) == 1024  # at most 1024
    assert batch_for_memory(400e6, 16 * gib) == 64  # at least 64
    assert batch_for_memory(40e6, 80 * gib) == 256 and batch_for_memory(40e6, 40 * gib) == 128


@pytest.mark.slow
def test_the_compiled_network_is_built_once_and_loaded_after(tmp_path, monkeypatch):
    """AOTInductor on the CPU (the GPU's runtime; it compiles for any device): features of
    eager fp32's, any batch fill, and a second call loads the package without compiling."""
    from featx.backbones import load_backbone
    from featx.extraction import compiled

    torch.manual_seed(0)
    bb = load_backbone("efficientnet_lite0", image_size=32, pretrained=False)
    cpu = torch.device("cpu")
    first = compiled.compiled_embed(bb, "fp32", cpu, 4, tmp_path)
    assert compiled.package_path(tmp_path, bb, "fp32", cpu, 4).is_file()
    monkeypatch.setattr(compiled, "_build", lambda *a: pytest.fail("compiled again"))
    again = compiled.compiled_embed(bb, "fp32", cpu, 4, tmp_path)
    x = torch.randn(3, 3, 32, 32)  # not a whole batch: padded
    with torch.inference_mode():
        want = bb.embed(x)["embedding"]
        assert torch.allclose(first(x)["embedding"], want, atol=1e-4)
        assert torch.equal(first(x)["embedding"], again(x)["embedding"])


@cuda
def test_by_default_cuda_decodes_on_the_gpu_and_runs_the_compiled_network(tmp_path, lite0):
    root = make_folder(tmp_path / "img", {"a": 5, "b": 5})
    r = extract(str(root), lite0, tmp_path / "cache", device="cuda")
    prov = store.info(r.path)["provenance"]
    assert prov["backbone"]["preprocessing"]["decode"] == "nvjpeg" and prov["runtime"] == "aotinductor"
    eager = extract(str(root), lite0, tmp_path / "cache", device="cuda", precision="fp32", decode="gpu",
                    batch_size=4)  # batch 4: another package; fp32 under aotinductor too
    a, b = store.load(r.path)[0], store.load(eager.path)[0]
    cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99
