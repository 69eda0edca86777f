import io

import numpy as np
import pytest
from PIL import Image

from featx.data.images import ImageDecodeError, decode_rgb
from support.imagegen import jpeg_bytes, photo


def _png(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", **kw)
    return buf.getvalue()


def test_every_mode_becomes_rgb():
    base = photo(1)
    cases = {
        "gray": _png(base.convert("L")),
        "rgba": _png(base.convert("RGBA")),
        "cmyk": jpeg_bytes(base.convert("CMYK")),
        "gray16": _png(Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 257))),
    }
    want = np.asarray(base, dtype=float)
    gray = np.asarray(base.convert("L"), dtype=float)[..., None]
    expected = {"gray": gray, "rgba": want, "cmyk": want, "gray16": gray}
    tolerance = {"gray": 0, "rgba": 0, "cmyk": 6, "gray16": 0.5}
    for name, data in cases.items():
        im = decode_rgb(data)
        assert im.mode == "RGB" and im.size == base.size, name
        error = np.abs(np.asarray(im, dtype=float) - expected[name]).mean()
        assert error <= tolerance[name], (name, error)


def test_palette_with_transparency():
    base = photo(1)
    pal = base.convert("P")
    index = int(np.bincount(np.asarray(pal).ravel()).argmax())  # a palette entry in use
    out = np.asarray(decode_rgb(_png(pal, transparency=index)), dtype=float)
    clear = np.asarray(pal) == index
    assert 0 < clear.sum() < clear.size
    assert (out[clear] == 255).all()  # transparent pixels: the white background
    assert (out[~clear] == np.asarray(pal.convert("RGB"), dtype=float)[~clear]).all()  # the palette's colours


def test_sixteen_bit_range_is_scaled_not_clipped():
    arr = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    out = np.asarray(decode_rgb(_png(Image.fromarray(arr))))[..., 0]
    assert out.min() == 0 and out.max() == 255
    assert len(np.unique(out)) > 200  # a full gradient, not a wall of 255s


def test_transparent_pixels_become_background_white():
    rgba = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    assert np.asarray(decode_rgb(_png(rgba))).min() == 255


def test_exif_orientation_is_applied():
    upright = photo(2, size=(80, 40))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera writes
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    im = decode_rgb(jpeg_bytes(stored, exif=exif.tobytes()))
    assert im.size == upright.size
    diff = np.abs(np.asarray(im, dtype=int) - np.asarray(upright, dtype=int)).mean()
    assert diff < 4, diff


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"just some text, not a picture\n", "not a recognised image"),
        (jpeg_bytes(photo(3))[:200], "cannot decode"),
    ],
)
def test_undecodable_bytes_raise_one_line_reason(data, reason):
    with pytest.raises(ImageDecodeError) as err:
        decode_rgb(data)
    assert reason in str(err.value)
    assert "\n" not in str(err.value)


def test_large_jpegs_decode_at_reduced_size_that_still_covers_the_resize():
    from featx.data.preprocess import Preprocessing

    big = jpeg_bytes(photo(7, size=(1600, 1200)))
    full, reduced = decode_rgb(big), decode_rgb(big, min_side=256)
    # libjpeg's 1/4 scale: at least 256 pixels on the short side
    assert full.size == (1600, 1200) and reduced.size == (400, 300)
    small = jpeg_bytes(photo(8, size=(500, 375)))
    assert decode_rgb(small, min_side=256).size == (500, 375)  # halving would fall below 256: decoded whole
    png = io.BytesIO()
    photo(9, size=(1600, 1200)).save(png, format="PNG")
    assert decode_rgb(png.getvalue(), min_side=256).size == (1600, 1200)  # only JPEGs scale in the decoder
    pre = Preprocessing()
    a, b = pre.to_uint8(full).float(), pre.decode(big).float()
    assert a.shape == b.shape == (3, 224, 224)
    assert (a - b).abs().mean() < 1.0  # under one grey level on average


def test_normalize_is_the_weights_mean_and_std_in_one_reused_buffer():
    import torch

    from featx.data.preprocess import Preprocessing

    pre = Preprocessing()
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)
    want = (x.float() / 255 - mean) / std
    buffer = torch.full((4, 3, 16, 16), float("nan"))
    got = pre.normalize(x, out=buffer)
    assert got.data_ptr() == buffer.data_ptr() and torch.allclose(got, want, atol=1e-6, rtol=0)
    assert pre.normalize(x, dtype=torch.bfloat16).dtype == torch.bfloat16
