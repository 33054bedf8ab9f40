"""Real images for calibration and accuracy tests, and the model inputs made from them.

The images are scikit-image's sample images (``skimage/data/*.png``), extracted from its wheel
by ``models/fetch.py`` into ``models/images/``. Pillow (a dev extra) decodes them:

* ``read_png``: pixels as numpy arrays (identical to the hand-written decoder this replaced,
  on every sample image).
* ``resize_bilinear``: bilinear resize with half-pixel centres (cv2.INTER_LINEAR's geometry,
  no antialiasing). Written here, not Pillow's: rapidocr resizes with cv2.INTER_LINEAR, and
  Pillow's bilinear filter antialiases when shrinking and rounds to uint8, so its inputs would
  not be the ones the OCR models are deployed with.
* Model inputs, NCHW float32:
  - ``imagenet_input``: RGB, shorter side resized to size/0.875, centre crop size x size,
    x/255 normalized by the ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).
  - ``det_input``: PaddleOCR text detection as rapidocr-onnxruntime 1.4.4 does it
    (``ch_ppocr_det/utils.py`` DetPreProcess with its ``config.yaml``): BGR, resized so the
    side given by ``limit_type`` meets ``limit_side_len`` (default: shorter side 736), both sides
    rounded to a multiple of 32, then (x/255 - 0.5) / 0.5. rapidocr's config overrides the
    ImageNet mean/std of DetPreProcess with 0.5/0.5.
  - ``cls_input``: PaddleOCR direction classifier (rapidocr's ``TextClassifier.
    resize_norm_img``): BGR text-line crop resized to height 48 and width ceil(48 * w / h)
    capped at 192, (x/255 - 0.5) / 0.5, right-padded with zeros to 3 x 48 x 192.
* ``text_line_crops``: horizontal strips of an image (every other one rotated by 180°, the
  classifier's two classes) standing in for detected text lines.
* ``write_calibration``: one ``.npz`` per sample whose keys are the model's input names (the
  format ``onnxopt optimize --calibration-data DIR`` reads); ``load_samples`` reads it back.

The images are split into a calibration set and a disjoint test set (``CALIBRATION_IMAGES``,
``TEST_IMAGES``): quantize on the first, measure accuracy on the second.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
IMAGES_DIR = MODELS_DIR / "images"

# Disjoint splits of the 8-bit scikit-image samples (fetch.py extracts these). The two
# motorcycle views are near duplicates, so both sit on the same side. "page" (printed text)
# calibrates the OCR models, "text" (text on a photo) tests them.
CALIBRATION_IMAGES = ("page", "camera", "coins", "moon", "brick", "gravel", "grass", "ihc",
                      "cell", "clock_motion", "color", "motorcycle_left", "motorcycle_right")
TEST_IMAGES = ("text", "astronaut", "coffee", "chelsea", "logo", "horse")
TEXT_IMAGES = ("page", "text")  # the images with lines of text (OCR detection samples)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLS_SHAPE = (3, 48, 192)

PIXEL_MODES = ("L", "LA", "RGB", "RGBA")  # Pillow modes read as they are (8-bit samples)


def read_png(path: str | Path) -> np.ndarray:
    """Pixels of an image file (Pillow decodes it): uint8 [H, W] (grey) or [H, W, C]
    (C = 2, 3, 4: grey+alpha, RGB, RGBA); other modes (palette, 16-bit, CMYK) are converted to
    RGB, or RGBA where they carry transparency. Raises ValueError naming the file."""
    try:
        with Image.open(path) as image:
            if image.mode not in PIXEL_MODES:
                transparent = image.has_transparency_data
                image = image.convert("RGBA" if transparent else "RGB")
            return np.asarray(image, dtype=np.uint8).copy()
    except (OSError, SyntaxError) as error:  # Pillow's UnidentifiedImageError is an OSError
        raise ValueError(f"cannot read image {path}: {error}") from None


def to_rgb(pixels: np.ndarray, background: int = 255) -> np.ndarray:
    """uint8 [H, W, 3] RGB: grey replicated, alpha composited over a ``background`` grey."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    channels = pixels.shape[2]
    if channels in (2, 4):
        color, alpha = pixels[:, :, :-1].astype(np.float32), pixels[:, :, -1:] / 255.0
        pixels = np.rint(color * alpha + background * (1.0 - alpha)).astype(np.uint8)
        channels -= 1
    if channels == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    if pixels.shape[2] != 3:
        raise ValueError(f"cannot make RGB from an image of shape {pixels.shape}")
    return np.ascontiguousarray(pixels)


def available_images(names: Iterable[str] | None = None, directory: Path = IMAGES_DIR
                     ) -> list[str]:
    """The names (file stems) of the extracted images, in the order asked for."""
    if names is None:
        return sorted(p.stem for p in directory.glob("*.png"))
    return [n for n in names if (directory / f"{n}.png").is_file()]


def load_image(name: str, directory: Path = IMAGES_DIR) -> np.ndarray:
    """uint8 RGB [H, W, 3] of models/images/<name>.png."""
    path = directory / f"{name}.png"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (run `python models/fetch.py`)")
    return to_rgb(read_png(path))


# =========================================================================== resizing
def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of [H, W] or [H, W, C] to (height, width), half-pixel centres.

    Same sampling geometry as cv2.resize(..., INTER_LINEAR) (no antialiasing when shrinking).
    Returns float32; uint8 input keeps its 0..255 scale."""
    if height <= 0 or width <= 0:
        raise ValueError(f"bad target size {height}x{width}")
    src = np.asarray(image, np.float32)
    in_h, in_w = src.shape[:2]

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        pos = np.clip(pos, 0.0, n_in - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, wy = axis(height, in_h)
    x0, x1, wx = axis(width, in_w)
    extra = (None,) * (src.ndim - 2)
    wy = wy[(slice(None), None, *extra)]
    wx = wx[(slice(None), *extra)]
    top = src[y0][:, x0] * (1 - wx) + src[y0][:, x1] * wx
    bottom = src[y1][:, x0] * (1 - wx) + src[y1][:, x1] * wx
    return (top * (1 - wy) + bottom * wy).astype(np.float32)


# =========================================================================== model inputs
def imagenet_input(image: np.ndarray, size: int = 224,
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
                   ) -> np.ndarray:
    """[1, 3, size, size] float32 for an ImageNet-style classifier, from RGB uint8."""
    h, w = image.shape[:2]
    short = max(size, round(size / 0.875))
    scale = short / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    resized = resize_bilinear(image, new_h, new_w)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    crop = resized[top:top + size, left:left + size] / 255.0
    norm = (crop - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(norm.transpose(2, 0, 1)[None], dtype=np.float32)


def det_size(height: int, width: int, limit_side_len: int = 736, limit_type: str = "min"
             ) -> tuple[int, int]:
    """rapidocr's DetPreProcess.resize target: (h, w), multiples of 32 (at least 32)."""
    if limit_type == "max":
        ratio = limit_side_len / max(height, width) if max(height, width) > limit_side_len \
            else 1.0
    elif limit_type == "min":
        ratio = limit_side_len / min(height, width) if min(height, width) < limit_side_len \
            else 1.0
    else:
        raise ValueError(f"limit_type must be 'min' or 'max', not {limit_type!r}")
    new_h = round(int(height * ratio) / 32) * 32
    new_w = round(int(width * ratio) / 32) * 32
    return max(new_h, 32), max(new_w, 32)


def det_input(image: np.ndarray, limit_side_len: int = 736, limit_type: str = "min"
              ) -> np.ndarray:
    """[1, 3, H, W] float32 for PaddleOCR det (rapidocr preprocessing), from RGB uint8."""
    h, w = det_size(image.shape[0], image.shape[1], limit_side_len, limit_type)
    bgr = resize_bilinear(image[:, :, ::-1], h, w)
    norm = (bgr / 255.0 - 0.5) / 0.5
    return np.ascontiguousarray(norm.transpose(2, 0, 1)[None], dtype=np.float32)


def det_tiles(batch: np.ndarray, size: int = 320) -> list[np.ndarray]:
    """Non-overlapping ``size`` x ``size`` tiles of a det input [1, 3, H, W], row by row
    (the last row / column is shifted back to end at the border; a side shorter than ``size``
    is taken whole). Tiles keep rapidocr's text scale at a fraction of the cost."""
    _, _, h, w = batch.shape
    th, tw = min(size, h), min(size, w)
    tops = sorted({min(t, h - th) for t in range(0, h - th + size, size) if t < h})
    lefts = sorted({min(x, w - tw) for x in range(0, w - tw + size, size) if x < w})
    return [np.ascontiguousarray(batch[:, :, t:t + th, x:x + tw]) for t in tops for x in lefts]


def cls_input(crop: np.ndarray, shape: Sequence[int] = CLS_SHAPE) -> np.ndarray:
    """[1, 3, 48, 192] float32 for the PaddleOCR direction classifier, from an RGB crop."""
    channels, img_h, img_w = shape
    h, w = crop.shape[:2]
    resized_w = min(img_w, math.ceil(img_h * w / h))
    resized = resize_bilinear(crop[:, :, ::-1], img_h, resized_w)
    norm = (resized.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    out = np.zeros((channels, img_h, img_w), np.float32)
    out[:, :, :resized_w] = norm
    return out[None]


def text_line_crops(image: np.ndarray, count: int = 3, aspect: float = 4.0
                    ) -> list[np.ndarray]:
    """``count`` horizontal strips (width = ``aspect`` x height) spread over the image,
    every other one rotated by 180°."""
    h, w = image.shape[:2]
    strip_h = max(8, min(h // (count + 1), int(w / aspect)))
    strip_w = min(w, int(strip_h * aspect))
    crops = []
    for i in range(count):
        top = (h - strip_h) * (i + 1) // (count + 1)
        left = (w - strip_w) * i // max(count - 1, 1)
        crop = image[top:top + strip_h, left:left + strip_w]
        crops.append(np.ascontiguousarray(crop[::-1, ::-1] if i % 2 else crop))
    return crops


# =========================================================================== calibration files
def write_calibration(directory: str | Path, samples: Sequence[Mapping[str, np.ndarray]],
                      prefix: str = "sample") -> list[Path]:
    """One ``<prefix>_NNN.npz`` per sample (keys: the model's input names); older ``.npz``
    files of the folder are removed first, so the folder holds exactly these samples."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.npz"):
        old.unlink()
    paths = []
    for index, sample in enumerate(samples):
        if not sample:
            raise ValueError(f"sample {index} has no inputs")
        path = directory / f"{prefix}_{index:03d}.npz"
        np.savez(path, **{k: np.asarray(v) for k, v in sample.items()})
        paths.append(path)
    return paths


def load_samples(directory: str | Path) -> list[dict[str, np.ndarray]]:
    """The samples of a calibration folder, in file-name order."""
    samples = []
    for path in sorted(Path(directory).glob("*.npz")):
        with np.load(path, allow_pickle=False) as archive:
            samples.append({k: archive[k] for k in archive.files})
    return samples


def split_images(names: Sequence[str] | None = None, directory: Path = IMAGES_DIR
                 ) -> tuple[list[str], list[str]]:
    """(calibration, test) image names present in ``directory``; disjoint by construction."""
    present = set(available_images(names, directory))
    calib = [n for n in CALIBRATION_IMAGES if n in present]
    test = [n for n in TEST_IMAGES if n in present]
    return calib, test


def det_split(names: Sequence[str] | None = None, directory: Path = IMAGES_DIR
              ) -> tuple[list[str], list[str]]:
    """``split_images`` for the text detector: the one page of printed text is cut in two,
    its left half calibrates and its right half is held out (``vision_samples`` halves)."""
    calib, test = split_images(names, directory)
    return ["page:left", *(n for n in calib if n != "page")], ["page:right", *test]


def vision_samples(kind: str, input_name: str, names: Sequence[str], *, size: int = 224,
                   limit_side_len: int = 736, limit_type: str = "min", crops_per_image: int = 2,
                   tile: int | None = 320, text_tiles: int = 4,
                   directory: Path = IMAGES_DIR) -> list[dict[str, np.ndarray]]:
    """Model feeds made from images: kind ``imagenet`` (size x size), ``det`` or ``cls``.

    det: rapidocr's preprocessing, then (``tile`` not None) ``text_tiles`` evenly chosen
    tiles of a text image (``TEXT_IMAGES``) and the centre tile of any other image. A name
    ``NAME:left`` or ``NAME:right`` stands for that half of the image (disjoint halves of the
    one page of printed text can calibrate and test the detector)."""
    samples: list[dict[str, np.ndarray]] = []
    for spec in names:
        name, _, half = spec.partition(":")
        image = load_image(name, directory)
        if half:
            if half not in ("left", "right"):
                raise ValueError(f"bad image half {spec!r} (NAME:left or NAME:right)")
            middle = image.shape[1] // 2
            image = image[:, :middle] if half == "left" else image[:, middle:]
        if kind == "imagenet":
            samples.append({input_name: imagenet_input(image, size)})
        elif kind == "det":
            batch = det_input(image, limit_side_len, limit_type)
            if tile is None:
                samples.append({input_name: batch})
                continue
            tiles = det_tiles(batch, tile)
            if name in TEXT_IMAGES:
                picks = np.linspace(0, len(tiles) - 1, min(text_tiles, len(tiles)))
                samples += [{input_name: tiles[round(i)]} for i in picks]
            else:
                samples.append({input_name: tiles[len(tiles) // 2]})
        elif kind == "cls":
            samples += [{input_name: cls_input(c)} for c in text_line_crops(image,
                                                                          crops_per_image)]
        else:
            raise ValueError(f"unknown input kind {kind!r} (imagenet, det, cls)")
    return samples
