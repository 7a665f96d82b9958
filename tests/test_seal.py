"""Pairing and sealed frames: the primitives against the standard library, the handshake
and the sealed link over real loopback TCP."""

import asyncio
import hashlib
import hmac
import os
import stat

import pytest
from test_link import FAST, Client, free_port, start_server, stop

from robot import link, seal

SECRET = bytes(range(32))


def test_hmac_is_the_standard_hmac_sha256():
    for key in (b"", b"k", b"x" * 64, b"y" * 65, os.urandom(200)):
        for msg in (b"", b"abc", os.urandom(1000)):
            assert seal.hmac_sha256(key, msg[:3], msg[3:]) == \
                hmac.new(key, msg, hashlib.sha256).digest()


def test_hkdf_matches_rfc5869_case_1():
    okm = seal.hkdf(bytes.fromhex("0b" * 22), bytes.fromhex("000102030405060708090a0b0c"),
                    bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"), 42)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                         "34007208d5b887185865")


def sessions(secret=SECRET, nonces=(b"b" * 16, b"h" * 16)):
    return seal.Session(secret, *nonces, is_board=True), seal.Session(secret, *nonces,
                                                                      is_board=False)


def test_frames_open_in_order_and_are_encrypted():
    board, host = sessions()
    frames = [seal.encode_frame("story-sentence", {"text": "The cat slept."}, None),
              seal.encode_frame("audio-chunk", {"rate": 1}, b"\0\1" * 500), b""]
    sealed = [board.seal(f) for f in frames]
    assert all(b"cat" not in s and len(s) == len(f) + seal.TAG_BYTES
               for s, f in zip(sealed, frames))
    assert [host.open(s) for s in sealed] == frames
    # The same frame twice looks different (the counter is in the key stream).
    assert board.seal(frames[0]) != sealed[0]


@pytest.mark.parametrize("attack", ["flip", "replay", "reorder", "other-session",
                                    "other-direction", "truncate", "wrong-secret"])
def test_forged_replayed_and_spliced_frames_fail(attack):
    board, host = sessions()
    first, second = board.seal(b"one"), board.seal(b"two")
    if attack == "flip":
        bad = bytes([first[0] ^ 1]) + first[1:]
    elif attack == "replay":
        host.open(first)
        bad = first
    elif attack == "reorder":
        bad = second
    elif attack == "other-session":
        bad = sessions(nonces=(b"c" * 16, b"h" * 16))[0].seal(b"one")
    elif attack == "other-direction":
        bad = host.seal(b"one")
    elif attack == "truncate":
        bad = first[:10]
    else:
        bad = sessions(secret=b"\1" * 32)[0].seal(b"one")
    with pytest.raises(seal.PairingError):
        host.open(bad)


def test_the_secret_file_is_private_and_its_code_round_trips(tmp_path):
    secret = seal.new_secret()
    path = tmp_path / "conf" / "pairing.key"
    seal.save(path, secret)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert seal.load(path) == secret
    assert seal.from_code(seal.to_code(secret).lower().replace("-", " ")) == secret
    path.chmod(0o644)
    with pytest.raises(ValueError, match="readable by others"):
        seal.load(path)
    with pytest.raises(seal.NotPaired):
        seal.load(tmp_path / "nothing")
    with pytest.raises(ValueError):
        seal.from_code("ABCD")


@pytest.mark.asyncio
async def test_a_paired_client_talks_sealed():
    port = free_port()
    server = await start_server(port, secret=SECRET)
    client = Client(port, secret=SECRET)
    try:
        await asyncio.wait_for(client.client.up.wait(), 5)
        await client.client.send(link.Event("hello", {"n": 1}, b"\0" * 10))
        event = await client.next()
        assert (event.type, event.data, event.payload) == ("hello", {"n": 1}, b"\0" * 10)
    finally:
        await stop(client.task)
        await stop(server)


@pytest.mark.asyncio
@pytest.mark.parametrize("client_secret, server_secret", [
    (b"\1" * 32, SECRET), (SECRET, b""), (None, SECRET)])
async def test_a_peer_without_the_secret_is_refused_and_logged_once(
        client_secret, server_secret, caplog):
    port = free_port()
    server = await start_server(port, secret=server_secret)
    clients = [Client(port, secret=client_secret) for _ in range(3)]
    try:
        if client_secret is None:
            # A plain peer: its events never reach the handler, it gets one error.
            for c in clients:
                await asyncio.wait_for(c.client.up.wait(), 5)
                await c.client.send(link.Event("hello"))
                event = await c.next()
                assert event.type == link.ERROR and event.data["code"] == "unpaired"
        else:
            while caplog.text.count("refused pairing") < 3:
                await asyncio.sleep(0.02)
            assert not any(c.client.up.is_set() for c in clients)
    finally:
        for c in clients:
            await stop(c.task)
        await stop(server)
    assert caplog.text.count("Refused 127.0.0.1") == 1


@pytest.mark.asyncio
async def test_a_forged_frame_drops_a_paired_connection(caplog):
    port = free_port()
    server = await start_server(port, secret=SECRET)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        stream = link.Stream(reader, writer, FAST)
        session = await link.pair(stream, SECRET, is_client=True)
        good = session.seal(seal.encode_frame("hello", {"n": 1}, None))
        forged = bytearray(session.seal(seal.encode_frame("hello", {"n": 2}, None)))
        forged[3] ^= 1
        for payload in (good, bytes(forged)):
            await stream.write_event(link.Event(seal.SEALED, payload=payload))
        echoed = await stream.read_event()
        while await stream.read_event() is not None:
            pass  # pings, until the server hangs up
        writer.close()
    finally:
        await stop(server)
    assert echoed.type == seal.SEALED  # the good frame came back, sealed
    assert "Dropped the link to 127.0.0.1" in caplog.text and "integrity" in caplog.text


@pytest.mark.asyncio
async def test_stopping_the_server_while_a_peer_pairs_is_quiet(caplog):
    server = link.LinkServer("127.0.0.1", free_port(), None, FAST, SECRET)
    task = asyncio.create_task(server.run())
    await asyncio.wait_for(server.listening.wait(), 5)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    while server.connections == 0:  # accepted, waiting for a pair-hello
        await asyncio.sleep(0.01)
    await stop(task)
    assert await reader.read() == b""  # hung up
    writer.close()
    assert "ERROR" not in caplog.text and "Traceback" not in caplog.text
