"""Finds model files: a path the user gives, known folders, or a download checked by sha256."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Optional

_LOGGER = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent

# Where each known file comes from; its sha256 is in data/SHA256SUMS (models/SHA256SUMS
# links there, so `sha256sum -c` works in a checkout).
SOURCES: Dict[str, str] = {
    "stories15M.bin": "https://huggingface.co/karpathy/tinyllamas/resolve/main/stories15M.bin",
    "tokenizer.bin": "https://github.com/karpathy/llama2.c/raw/master/tokenizer.bin",
}


def known_sha256() -> Dict[str, str]:
    """name -> sha256 of each known model file, from the package's SHA256SUMS."""
    lines = (Path(__file__).parent / "data" / "SHA256SUMS").read_text().splitlines()
    return {name: digest for digest, name in (line.split() for line in lines if line.strip())}


DEFAULT_MODEL = "stories15M.bin"
DEFAULT_TOKENIZER = "tokenizer.bin"


class ModelNotFound(FileNotFoundError):
    """No file by that name in any folder searched."""


def search_dirs() -> List[Path]:
    """Folders searched for a bare file name, in order."""
    dirs = [Path(d) for d in os.environ.get("STORYBOT_MODELS", "").split(os.pathsep) if d]
    dirs += [Path.cwd() / "models", REPO / "models", REPO.parent / "shared" / "models"]
    try:
        dirs.append(cache_dir())
    except RuntimeError:  # no home: a systemd DynamicUser= service without nss-systemd
        pass
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
    hint = "; `storybot fetch-models` downloads it" if path.name in SOURCES else ""
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

    if name not in SOURCES and (url is None or expected_sha256 is None):
        raise KeyError(f"{name} is not a known model file; give its url and sha256")
    url = url or SOURCES[name]
    expected = expected_sha256 or known_sha256()[name]
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
