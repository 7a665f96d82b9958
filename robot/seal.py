"""Pairing: a board and its voice host prove a shared secret, then seal every frame.

The secret is 32 random bytes made once (``storybot pair``) and kept in a file of mode
0600 on both machines. A connection starts with a challenge-response over fresh nonces
(plain Wyoming events, before anything else is read)::

    board -> host   pair-hello      {nonce: Nb}
    host  -> board  pair-challenge  {nonce: Nh, proof: HMAC(K, "host"  | Nb | Nh)}
    board -> host   pair-proof      {proof: HMAC(K, "board" | Nb | Nh)}

Each side checks the other's proof before it sends or reads anything else; a peer that
fails gets one ``error`` event {code: "unpaired"} and the connection is closed. Then
every event travels inside a ``sealed`` event whose payload is the event's own Wyoming
frame, encrypted and authenticated (encrypt-then-MAC)::

    payload = C | HMAC(Kmac, counter | C),   C = frame XOR HMAC(Kenc, counter | block)...

Kenc and Kmac are derived per direction by HKDF from K and both nonces, so a frame is
bound to its session and direction; the counter is each direction's frame count, never
sent, so a replayed, dropped, reordered or spliced frame fails its check, and the
connection is dropped. The cipher is HMAC-SHA256 in counter mode: no primitive beyond
SHA-256, which the board has built in (``_sha2``/``_sha256``). ``hmac`` and ``hashlib``
are not imported because hashlib loads OpenSSL (``_hashlib``), about 3 MiB of the board.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from pathlib import Path

from _operator import _compare_digest as compare_digest  # what hmac.compare_digest is

try:
    from _sha2 import sha256 as _sha256  # CPython 3.12+
except ImportError:
    from _sha256 import sha256 as _sha256  # CPython 3.11

HELLO = "pair-hello"
CHALLENGE = "pair-challenge"
PROOF = "pair-proof"
SEALED = "sealed"

SECRET_BYTES = 32
NONCE_BYTES = 16
TAG_BYTES = 32
_BLOCK = 64


class PairingError(ConnectionError):
    """The peer is not paired with us, or a frame failed its check: drop the link."""


class NotPaired(ValueError):
    """No pairing secret here yet."""


# --- HMAC-SHA256 (RFC 2104) and HKDF (RFC 5869) on the builtin SHA-256 -------------------

class Mac:
    """HMAC-SHA256 with one key; the padded key's hash states are kept for reuse."""

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = _sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = _sha256(bytes(b ^ 0x36 for b in key))
        self._outer = _sha256(bytes(b ^ 0x5C for b in key))

    def digest(self, *parts: bytes) -> bytes:
        inner = self._inner.copy()
        for part in parts:
            inner.update(part)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def hmac_sha256(key: bytes, *parts: bytes) -> bytes:
    return Mac(key).digest(*parts)


def hkdf(secret: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    prk = Mac(salt).digest(secret)
    mac, out, block = Mac(prk), b"", b""
    for i in range(1, -(-length // 32) + 1):
        block = mac.digest(block, info, bytes([i]))
        out += block
    return out[:length]


# --- The secret on disk ---------------------------------------------------------------

def default_path() -> Path:
    """Where the secret is: a systemd credential named "pairing" (LoadCredential=, which
    a service's dynamic user can read), else $STORYBOT_PAIRING, else
    ~/.config/storybot/pairing.key."""
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / "pairing").is_file():
        return Path(credentials) / "pairing"
    if os.environ.get("STORYBOT_PAIRING"):
        return Path(os.environ["STORYBOT_PAIRING"])
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config) / "storybot" / "pairing.key"


def to_code(secret: bytes) -> str:
    """The secret as a code a person can copy: base32 in groups of four."""
    text = base64.b32encode(secret).decode().rstrip("=")
    return "-".join(text[i:i + 4] for i in range(0, len(text), 4))


def from_code(code: str) -> bytes:
    text = "".join(c for c in code.upper() if c.isalnum())
    try:
        secret = base64.b32decode(text + "=" * (-len(text) % 8))
    except ValueError as err:
        raise ValueError(f"not a pairing code: {err}") from None
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a pairing code holds {SECRET_BYTES} bytes, this one {len(secret)}")
    return secret


def new_secret() -> bytes:
    return os.urandom(SECRET_BYTES)


def save(path: Path, secret: bytes) -> None:
    """Write the secret's code to path, readable by its owner only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    part = path.with_name(path.name + ".part")
    part.unlink(missing_ok=True)
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(to_code(secret) + "\n")
    os.replace(part, path)


def load(path: Path | None = None) -> bytes:
    """The secret; NotPaired if there is none, ValueError if the file is unsafe or bad."""
    path = path or default_path()
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except FileNotFoundError:
        raise NotPaired(f"no pairing secret at {path}") from None
    # A systemd credential is 0440, its group the service's own: only others matter there
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    shared = 0o007 if credentials and path.parent == Path(credentials) else 0o077
    if mode & shared:
        raise ValueError(f"{path} is readable by others (mode {mode & 0o777:o}); "
                         f"chmod 600 it, or pair again")
    if not text.strip():
        # the place kept for a secret (a systemd credential's file must exist to start)
        raise NotPaired(f"{path} is empty: not paired yet")
    return from_code(text.strip())


# --- The handshake and the sealed frames ------------------------------------------------

def proof(secret: bytes, role: bytes, board_nonce: bytes, host_nonce: bytes) -> bytes:
    return hmac_sha256(secret, b"storybot pairing v1 ", role, board_nonce, host_nonce)


class Session:
    """The keys of one paired connection, and each direction's frame counter."""

    def __init__(self, secret: bytes, board_nonce: bytes, host_nonce: bytes,
                 is_board: bool) -> None:
        salt = board_nonce + host_nonce
        up = hkdf(secret, salt, b"storybot link v1 board->host", 64)
        down = hkdf(secret, salt, b"storybot link v1 host->board", 64)
        mine, theirs = (up, down) if is_board else (down, up)
        self._send_enc, self._send_mac = Mac(mine[:32]), Mac(mine[32:])
        self._recv_enc, self._recv_mac = Mac(theirs[:32]), Mac(theirs[32:])
        self._sent = self._received = 0

    def seal(self, frame: bytes) -> bytes:
        counter = struct.pack(">Q", self._sent)
        self._sent += 1
        sealed = _xor(frame, self._send_enc, counter)
        return sealed + self._send_mac.digest(counter, sealed)

    def open(self, payload: bytes) -> bytes:
        """The frame inside payload; PairingError if it is not the next frame sealed
        for this session and direction."""
        counter = struct.pack(">Q", self._received)
        sealed, tag = payload[:-TAG_BYTES], payload[-TAG_BYTES:]
        if len(payload) < TAG_BYTES or not compare_digest(
                tag, self._recv_mac.digest(counter, sealed)):
            raise PairingError("a frame failed its integrity check (forged, replayed, "
                               "reordered or from another session)")
        self._received += 1
        return _xor(sealed, self._recv_enc, counter)


def _xor(data: bytes, key: Mac, counter: bytes) -> bytes:
    stream = b"".join(key.digest(counter, struct.pack(">I", i))
                      for i in range(-(-len(data) // 32)))
    n = len(data)
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream[:n], "big")).to_bytes(n, "big")


def encode_frame(kind: str, data: dict, payload: bytes | None) -> bytes:
    """One event as the plaintext of a sealed frame: a JSON line, then the payload."""
    header = {"type": kind, "data": data, "payload_length": len(payload or b"")}
    # ASCII escapes: any str can be sent (even a lone surrogate); the receiver judges it.
    return json.dumps(header).encode() + b"\n" + (payload or b"")


def decode_frame(frame: bytes) -> tuple[str, dict, bytes | None]:
    line, _, payload = frame.partition(b"\n")
    try:
        header = json.loads(line)
        kind, data, length = header["type"], header["data"], header["payload_length"]
        if not (isinstance(kind, str) and isinstance(data, dict) and length == len(payload)):
            raise ValueError("bad fields")
    except (ValueError, KeyError, TypeError) as err:
        # Authentic but malformed: the peer holds the secret and is broken.
        raise PairingError(f"a sealed frame does not hold an event ({err})") from None
    return kind, data, payload or None
