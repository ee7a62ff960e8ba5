"""Speech with phoneme timings from libespeak-ng (Debian package espeak-ng), through ctypes.

espeak-ng reports a PHONEME event, with its position in the audio, for every phoneme it speaks;
that is the ground truth the quality harness scores mouth shapes against.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass

import numpy as np


def viseme_table(groups: dict[str, str]) -> dict[str, str]:
    """phoneme -> viseme, from each viseme's phonemes (a string of them, space-separated)."""
    return {symbol: viseme for viseme, symbols in groups.items() for symbol in symbols.split()}


# espeak-ng phoneme mnemonics -> the viseme a viewer expects
PHONEME_VISEME = viseme_table({
    "closed": "p b m",
    "fv": "f v",
    "a": "a a# A: aI aU V aa A@ a@ 0 VR aI2 aI@ aI3",
    "e": "E e eI @ 3: e@ @L @2 3 I2 @5 3:r",
    "i": "i i: I j i@ i@3 IR",
    "o": "O: oU OI u: U w O@ U@ O u o@ O2 0U",
    "sil": "_ _: _! _;",
})


#: the quality harness's voices and sentences; the viseme recognizer is trained on none of these voices
HARNESS_VOICES = ["en-us", "en+m3", "en-us+f3", "en-us+klatt"]
HARNESS_SENTENCES = [
    "Peter picked a peck of pickled peppers, and bought a bigger map.",
    "I see two blue boats far away on the ocean.",
    "Five very fine violins arrived in March.",
]


def resample_to(pcm: np.ndarray, rate: int, target: int) -> np.ndarray:
    """int16 mono *pcm* at *rate* resampled to *target* Hz (PyAV's resampler)."""
    import av

    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1).astype(np.int16), format="s16", layout="mono")
    frame.sample_rate = rate
    r = av.AudioResampler(format="s16", layout="mono", rate=target)
    out = [f.to_ndarray().reshape(-1) for f in r.resample(frame)] + [f.to_ndarray().reshape(-1) for f in r.resample(None)]
    return np.concatenate(out).astype(np.int16)


_EVENT_PHONEME = 7
_EVENT_LIST_TERMINATED = 0
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_RATE, _PITCH = 1, 3


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class Phoneme:
    symbol: str  # espeak-ng's mnemonic ("a", "@", "m", "_:" for a pause, ...)
    start: float  # seconds
    end: float


class Espeak:
    def __init__(self) -> None:
        name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            self.lib = ctypes.CDLL(name)
        except OSError:
            raise RuntimeError("libespeak-ng is missing: install Debian's espeak-ng (apt-get install espeak-ng)") from None
        self.rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INITIALIZE_PHONEME_EVENTS)
        if self.rate <= 0:
            raise RuntimeError("espeak_Initialize failed")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[str, int]] = []
        self._callback = _CALLBACK(self._on_synth)
        self.lib.espeak_SetSynthCallback(self._callback)

    def _on_synth(self, wav: ctypes.POINTER(ctypes.c_short), n: int, events: ctypes.POINTER(_Event)) -> int:  # type: ignore[valid-type]
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            e = events[i]
            if e.type == _EVENT_PHONEME:
                self._events.append((e.id.string.decode("ascii", "replace"), e.audio_position))
            i += 1
        return 0

    def say(self, text: str, voice: str = "en-us", rate: int = 160, pitch: int = 50) -> tuple[np.ndarray, int, list[Phoneme]]:
        """(int16 samples, sample rate, phonemes with their times)."""
        self._chunks, self._events = [], []
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(_RATE, rate, 0)
        self.lib.espeak_SetParameter(_PITCH, pitch, 0)
        data = text.encode() + b"\0"
        self.lib.espeak_Synth(data, ctypes.c_size_t(len(data)), 0, 1, 0, 0, None, None)
        self.lib.espeak_Synchronize()
        pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        duration = len(pcm) / self.rate
        phonemes = []
        for j, (symbol, ms) in enumerate(self._events):
            end = self._events[j + 1][1] / 1000 if j + 1 < len(self._events) else duration
            phonemes.append(Phoneme(symbol, ms / 1000, max(ms / 1000, end)))
        return pcm.astype(np.int16), self.rate, phonemes


if __name__ == "__main__":
    pcm, rate, ph = Espeak().say("Hello world, my mouth moves.")
    print(rate, len(pcm) / rate, [(p.symbol, round(p.start, 3)) for p in ph])
