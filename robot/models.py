"""Finds model files: a path the user gives, known folders, or a download checked by sha256."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Optional

_LOGGER = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent

# name -> (sha256, upstream address); the checksums are also in models/SHA256SUMS
KNOWN: Dict[str, tuple] = {
    "stories15M.bin": (
        "cd590644d963867a2b6e5a1107f51fad663c41d79c149fbecbbb1f95fa81f49a",
        "https://huggingface.co/karpathy/tinyllamas/resolve/main/stories15M.bin",
    ),
    "tokenizer.bin": (
        "50a52ef822ee9e83de5ce9d0be0a025a773d019437f58b5ff9dcafb063ece361",
        "https://github.com/karpathy/llama2.c/raw/master/tokenizer.bin",
    ),
}

DEFAULT_MODEL = "stories15M.bin"
DEFAULT_TOKENIZER = "tokenizer.bin"


class ModelNotFound(FileNotFoundError):
    """No file by that name in any folder searched."""


def search_dirs() -> List[Path]:
    """Folders searched for a bare file name, in order."""
    dirs = [Path(d) for d in os.environ.get("STORYBOT_MODELS", "").split(os.pathsep) if d]
    dirs += [Path.cwd() / "models", REPO / "models", REPO.parent / "shared" / "models",
             cache_dir()]
    return dirs


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "storybot" / "models"


def find(name_or_path: "str | os.PathLike[str]") -> Path:
    """An existing file as given, or a bare name looked up in search_dirs()."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.exists():
        raise ModelNotFound(f"{path} is not a file")
    if path.name != str(name_or_path):
        raise ModelNotFound(f"no file at {path}")
    for d in search_dirs():
        if (d / path.name).is_file():
            return d / path.name
    hint = "; `storybot fetch-models` downloads it" if path.name in KNOWN else ""
    searched = ", ".join(str(d) for d in search_dirs())
    raise ModelNotFound(f"{path.name} is not in any of: {searched}{hint}")


def sha256(path: "str | os.PathLike[str]") -> str:
    import hashlib  # here, not at the top: it loads libcrypto, a few MB the board can spare

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(name: str, dest: Optional[Path] = None, url: Optional[str] = None,
             expected_sha256: Optional[str] = None) -> Path:
    """Downloads a known file into dest (the cache by default) and checks its sha256.

    The file appears under its name only once its checksum matches; a bad download
    is deleted and raises ValueError.
    """
    import shutil
    import tempfile
    import urllib.request

    if name not in KNOWN and (url is None or expected_sha256 is None):
        raise KeyError(f"{name} is not a known model file; give its url and sha256")
    known_sha, known_url = KNOWN.get(name, (None, None))
    url = url or known_url
    expected = expected_sha256 or known_sha
    dest = Path(dest) if dest else cache_dir()
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / name
    if target.is_file() and sha256(target) == expected:
        return target
    _LOGGER.info("downloading %s from %s", name, url)
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            shutil.copyfileobj(resp, out, 1 << 20)
        got = sha256(tmp)
        if got != expected:
            raise ValueError(f"{name} from {url} has sha256 {got}, expected {expected}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
