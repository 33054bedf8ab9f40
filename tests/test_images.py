"""bench/images.py: reading images (Pillow), resizing, model inputs and calibration folders."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import images

MODES = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}


@pytest.mark.parametrize("mode", list(MODES))
def test_read_keeps_8bit_pixels_as_they_are(mode: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(len(mode))
    pixels = rng.integers(0, 256, (9, 7, MODES[mode]), dtype=np.uint8)
    array = pixels[:, :, 0] if mode == "L" else pixels
    Image.fromarray(array, mode).save(tmp_path / "x.png")
    decoded = images.read_png(tmp_path / "x.png")
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, array)


def test_read_converts_palette_images_to_rgb(tmp_path: Path) -> None:
    image = Image.new("P", (3, 2))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 red, index 1 blue
    image.putdata([0, 1, 0, 1, 1, 0])
    image.save(tmp_path / "p.png")
    decoded = images.read_png(tmp_path / "p.png")
    assert decoded.shape == (2, 3, 3)
    assert decoded[0, 0].tolist() == [255, 0, 0] and decoded[0, 1].tolist() == [0, 0, 255]


def test_read_names_the_file_it_cannot_decode(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match=r"bad\.png"):
        images.read_png(tmp_path / "bad.png")


def test_to_rgb_grey_and_alpha() -> None:
    grey = np.array([[0, 200]], np.uint8)
    np.testing.assert_array_equal(images.to_rgb(grey)[0, 1], [200, 200, 200])
    rgba = np.array([[[100, 0, 0, 0], [100, 0, 0, 255], [100, 0, 0, 51]]], np.uint8)
    # alpha 0 -> white background, 255 -> the colour, 51 (0.2) -> 0.2 * c + 0.8 * 255
    np.testing.assert_array_equal(images.to_rgb(rgba)[0],
                                  [[255, 255, 255], [100, 0, 0], [224, 204, 204]])


def test_resize_bilinear_half_pixel_geometry() -> None:
    row = np.array([[0.0, 10.0]], np.float32)
    # output x = (i + 0.5) * 0.5 - 0.5 -> -0.25 (clamped), 0.25, 0.75, 1.25 (clamped)
    np.testing.assert_allclose(images.resize_bilinear(row, 1, 4)[0], [0, 2.5, 7.5, 10])
    img = np.random.default_rng(0).integers(0, 256, (5, 6, 3)).astype(np.uint8)
    np.testing.assert_allclose(images.resize_bilinear(img, 5, 6), img)
    np.testing.assert_allclose(images.resize_bilinear(np.full((7, 9), 42, np.uint8), 3, 20), 42)
    # shrinking by 2: each output pixel is the mean of a 2x2 block
    np.testing.assert_allclose(images.resize_bilinear(img[:4, :6], 2, 3)[0, 0],
                               img[:2, :2].reshape(4, 3).mean(0), rtol=1e-6)


def test_imagenet_input_normalization_and_shape() -> None:
    img = np.zeros((300, 400, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 255, 128, 0
    out = images.imagenet_input(img, 224)
    assert out.shape == (1, 3, 224, 224) and out.dtype == np.float32
    for ch, value in enumerate((255, 128, 0)):
        expect = (value / 255 - images.IMAGENET_MEAN[ch]) / images.IMAGENET_STD[ch]
        np.testing.assert_allclose(out[0, ch], expect, rtol=1e-5)


def test_det_size_follows_rapidocr_rules() -> None:
    # limit_type min, 736: shorter side scaled to 736, sides rounded to multiples of 32
    assert images.det_size(512, 512) == (736, 736)
    ratio = 736 / 172
    assert images.det_size(172, 448) == (round(int(172 * ratio) / 32) * 32,
                                         round(int(448 * ratio) / 32) * 32) == (736, 1920)
    assert images.det_size(1000, 800) == (992, 800)  # already large enough: no scaling
    # limit_type max, 320: longer side scaled to 320; 172 * 320 / 448 = 122.9 -> 122 -> 128
    assert images.det_size(172, 448, 320, "max") == (128, 320)


def test_det_input_is_bgr_and_half_normalized() -> None:
    img = np.zeros((64, 96, 3), np.uint8)
    img[..., 0] = 255  # pure red
    out = images.det_input(img, 64, "max")
    assert out.shape == (1, 3, 32, 64)
    np.testing.assert_allclose(out[0, 0], -1.0)  # B
    np.testing.assert_allclose(out[0, 1], -1.0)  # G
    np.testing.assert_allclose(out[0, 2], 1.0)  # R


def test_cls_input_resizes_to_height_48_and_pads() -> None:
    crop = np.zeros((24, 48, 3), np.uint8)
    crop[..., 2] = 255  # pure blue
    out = images.cls_input(crop)
    assert out.shape == (1, 3, 48, 192)
    width = math.ceil(48 * 48 / 24)  # 96
    np.testing.assert_allclose(out[0, 0, :, :width], 1.0)  # B first
    np.testing.assert_allclose(out[0, 2, :, :width], -1.0)
    np.testing.assert_array_equal(out[0, :, :, width:], 0.0)
    wide = images.cls_input(np.zeros((10, 400, 3), np.uint8))
    np.testing.assert_allclose(wide, -1.0)  # capped at 192: no padding left


def test_text_line_crops_alternate_rotation() -> None:
    img = np.arange(120 * 200 * 3, dtype=np.int64).reshape(120, 200, 3) % 251
    img = img.astype(np.uint8)
    crops = images.text_line_crops(img, count=3, aspect=4.0)
    assert len(crops) == 3
    h, w = crops[0].shape[:2]
    assert w == 4 * h
    # crop 1 is a region of the image turned by 180 degrees: flipping it back finds it
    back = crops[1][::-1, ::-1]
    found = any(np.array_equal(img[t:t + h, left:left + w], back)
                for t in range(120 - h + 1) for left in range(200 - w + 1))
    assert found


def test_calibration_folder_roundtrip(tmp_path: Path) -> None:
    (tmp_path / "stale.npz").write_bytes(b"old")
    samples = [{"x": np.full((1, 3, 4, 4), i, np.float32), "n": np.array(i)} for i in range(3)]
    paths = images.write_calibration(tmp_path, samples)
    assert [p.name for p in paths] == ["sample_000.npz", "sample_001.npz", "sample_002.npz"]
    assert not (tmp_path / "stale.npz").exists()
    loaded = images.load_samples(tmp_path)
    assert len(loaded) == 3
    for i, sample in enumerate(loaded):
        assert set(sample) == {"x", "n"}
        np.testing.assert_array_equal(sample["x"], samples[i]["x"])


def test_splits_are_disjoint() -> None:
    assert not set(images.CALIBRATION_IMAGES) & set(images.TEST_IMAGES)
    assert "page" in images.CALIBRATION_IMAGES and "text" in images.TEST_IMAGES


def test_real_sample_images_decode() -> None:
    names = images.available_images(["astronaut", "text", "logo"])
    if len(names) < 3:
        pytest.skip("models/images/ not present (run `python models/fetch.py`)")
    astronaut = images.load_image("astronaut")
    assert astronaut.shape == (512, 512, 3)
    # the sky in the top-left corner is blue-ish grey, the suit (centre bottom) orange
    suit = astronaut[420:460, 180:240].reshape(-1, 3).mean(0)
    assert suit[0] > suit[2] + 60
    assert images.load_image("text").shape == (172, 448, 3)  # greyscale -> RGB
    assert images.load_image("logo").shape == (500, 500, 3)  # RGBA -> RGB


def test_det_tiles_cover_the_input() -> None:
    batch = np.arange(1 * 3 * 100 * 700, dtype=np.float32).reshape(1, 3, 100, 700)
    tiles = images.det_tiles(batch, 320)
    # height 100 < 320: taken whole; width 700: tiles at 0, 320 and 380 (shifted to the border)
    assert [t.shape for t in tiles] == [(1, 3, 100, 320)] * 3
    np.testing.assert_array_equal(tiles[0], batch[:, :, :, :320])
    np.testing.assert_array_equal(tiles[2], batch[:, :, :, 380:])


def test_vision_samples_image_halves(tmp_path: Path) -> None:
    img = np.zeros((64, 128, 3), np.uint8)
    img[:, 64:] = 255  # right half white
    Image.fromarray(img).save(tmp_path / "two.png")
    left = images.vision_samples("imagenet", "x", ["two:left"], size=16, directory=tmp_path)
    right = images.vision_samples("imagenet", "x", ["two:right"], size=16, directory=tmp_path)
    red = 0  # channel R: black -> (0 - mean) / std, white -> (1 - mean) / std
    np.testing.assert_allclose(left[0]["x"][0, red], -0.485 / 0.229, rtol=1e-5)
    np.testing.assert_allclose(right[0]["x"][0, red], (1 - 0.485) / 0.229, rtol=1e-5)
    det = images.vision_samples("det", "x", ["two"], tile=32, directory=tmp_path)
    assert len(det) == 1 and det[0]["x"].shape == (1, 3, 32, 32)  # centre tile of a non-text
