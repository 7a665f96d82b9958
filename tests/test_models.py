"""Model files: the known checksums and the checked download (from a file:// address)."""
import hashlib

import pytest

from robot import models

from conftest import SHARED


def test_the_known_checksums_are_those_of_the_shared_model_files():
    known = models.known_sha256()
    assert set(known) == set(models.SOURCES)
    for name, digest in known.items():
        assert hashlib.sha256((SHARED / "models" / name).read_bytes()).hexdigest() == digest


def test_a_download_lands_only_when_its_checksum_matches(tmp_path):
    src = SHARED / "models" / "tokenizer.bin"
    got = models.download("tokenizer.bin", tmp_path / "ok", url=src.as_uri())
    assert got.read_bytes() == src.read_bytes()

    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(b"not a tokenizer")
    with pytest.raises(ValueError, match="sha256"):
        models.download("tokenizer.bin", tmp_path / "bad", url=wrong.as_uri())
    assert list((tmp_path / "bad").iterdir()) == []  # neither the file nor a temporary


def test_an_unknown_file_needs_its_address_and_checksum(tmp_path):
    with pytest.raises(KeyError):
        models.download("stories42M.bin", tmp_path)


def test_files_are_found_without_a_home_directory(monkeypatch):
    """A systemd DynamicUser= service may have no home (no nss-systemd): the model is
    still found in the folders that do exist, instead of Path.home() ending the daemon."""
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(models.Path, "home", staticmethod(no_home))
    monkeypatch.setenv("STORYBOT_MODELS", str(SHARED / "models"))
    assert models.find("tokenizer.bin") == SHARED / "models" / "tokenizer.bin"
