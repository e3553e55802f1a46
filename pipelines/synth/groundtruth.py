"""Ground-truth codes that the synthetic corpus can carry, and their decoders.

Two codes let tests check decoding, resampling and pretext sampling against the truth:

**Frame-index code (pixels).** The bottom `BAND_FRACTION` (1/8) of the frame's height, across its
full width, is a band of `CODE_ROWS` x `CODE_COLS` (2 x 8) black/white cells, read row by row,
left to right. The 16 bits are the 14-bit Gray code of the *source frame index* (most significant
bit first, so indices 0..16383) and 2 check bits: bit 14 is 1 XOR the parity of code bits
0, 2, ..., 12 and bit 15 is the parity of bits 1, 3, ..., 13 (so an all-black or all-white band
never decodes). The cells are large on purpose: `decode_frame_index` reads them exactly after
H.264, a resize to a short side of 64 and a JPEG (q=75) round trip. The band has a fixed place, so
frames that were resized but not cropped can be decoded.

**Audio time code (sound).** A constant-amplitude tone whose frequency rises linearly with
*source time* `t`: `f(t) = f_lo + (f_hi - f_lo) * ((t mod P) / P)`, 100 Hz to 900 Hz over
P = 16 s, phase-continuous (P * (f_lo + f_hi) / 2 is a whole number of cycles). A clip played at
speed s (resampled, like a tape played fast) shows the tone at `s * f(t)`, sweeping at
`s**2 * (f_hi - f_lo) / P` Hz per second, upward when forward and downward when reversed, so
`decode_audio_clip` recovers a clip's source span, speed and direction from the waveform alone.
It reads source time modulo P; pass `near=` to pick the period. The band stays below 1 kHz so that
an 8x speed-up still fits under the 8 kHz Nyquist frequency of 16 kHz audio. See docs/synth.md for
the measured resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# ---------------------------------------------------------------------------------------------
# Frame-index code
# ---------------------------------------------------------------------------------------------

BAND_FRACTION = 1.0 / 8.0  # the code band is the bottom eighth of the frame height
CODE_ROWS = 2
CODE_COLS = 8
INDEX_BITS = 14
MAX_FRAME_INDEX = (1 << INDEX_BITS) - 1


class FrameCodeError(ValueError):
    """The band does not hold a valid frame-index code (check bits disagree)."""


def band_height(height: int) -> int:
    """Rows of the code band in a frame of `height` rows (the bottom rows)."""
    return max(CODE_ROWS, int(round(height * BAND_FRACTION)))


def gray_encode(n: int) -> int:
    return n ^ (n >> 1)


def gray_decode(g: int) -> int:
    n = 0
    while g:
        n ^= g
        g >>= 1
    return n


def frame_code_bits(index: int) -> np.ndarray:
    """The 16 cell values (bool, row-major) that encode `index`."""
    if not 0 <= index <= MAX_FRAME_INDEX:
        raise ValueError(f"frame index must be in [0, {MAX_FRAME_INDEX}], got {index}")
    g = gray_encode(int(index))
    data = [(g >> (INDEX_BITS - 1 - i)) & 1 for i in range(INDEX_BITS)]
    check0 = 1 ^ (sum(data[0::2]) & 1)
    check1 = sum(data[1::2]) & 1
    return np.array(data + [check0, check1], dtype=bool)


def _bits_to_index(bits: np.ndarray) -> int:
    data = [int(b) for b in bits[:INDEX_BITS]]
    check0 = 1 ^ (sum(data[0::2]) & 1)
    check1 = sum(data[1::2]) & 1
    if int(bits[INDEX_BITS]) != check0 or int(bits[INDEX_BITS + 1]) != check1:
        raise FrameCodeError(f"frame code check bits disagree: {''.join(map(str, data))}")
    g = 0
    for b in data:
        g = (g << 1) | b
    return gray_decode(g)


def draw_frame_code(frame: np.ndarray, index: int) -> np.ndarray:
    """Paint the code of `index` into the bottom band of `frame` ([H, W, 3] uint8), in place."""
    height, width = frame.shape[:2]
    bits = frame_code_bits(index).reshape(CODE_ROWS, CODE_COLS)
    bh = band_height(height)
    top = height - bh
    for r in range(CODE_ROWS):
        y0 = top + int(round(r * bh / CODE_ROWS))
        y1 = top + int(round((r + 1) * bh / CODE_ROWS))
        for c in range(CODE_COLS):
            x0 = int(round(c * width / CODE_COLS))
            x1 = int(round((c + 1) * width / CODE_COLS))
            frame[y0:y1, x0:x1] = 255 if bits[r, c] else 0
    return frame


def read_frame_code_bits(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bits, mean luma of each cell's inner half) of the band of an RGB [H, W, 3] image."""
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {rgb.shape}")
    height, width = rgb.shape[:2]
    band = height * BAND_FRACTION
    top = height - band
    row_h = band / CODE_ROWS
    col_w = width / CODE_COLS
    luma = np.empty((CODE_ROWS, CODE_COLS), dtype=np.float64)
    for r in range(CODE_ROWS):
        ya = top + (r + 0.25) * row_h
        yb = top + (r + 0.75) * row_h
        y0 = min(int(math.floor(ya)), height - 1)
        y1 = max(y0 + 1, int(math.ceil(yb)))
        for c in range(CODE_COLS):
            xa, xb = (c + 0.25) * col_w, (c + 0.75) * col_w
            x0 = min(int(math.floor(xa)), width - 1)
            x1 = max(x0 + 1, int(math.ceil(xb)))
            cell = rgb[y0:y1, x0:x1, :3].astype(np.float64)
            luma[r, c] = float(
                (0.299 * cell[..., 0] + 0.587 * cell[..., 1] + 0.114 * cell[..., 2]).mean()
            )
    return (luma > 127.5).reshape(-1), luma.reshape(-1)


def decode_frame_index(rgb: np.ndarray) -> int:
    """The source frame index coded in the bottom band of an RGB image [H, W, 3] (uint8).

    Works on frames that were resized (any size, short side >= 64) and lossily compressed, but not
    cropped. Raises `FrameCodeError` when the band holds no valid code.
    """
    bits, _ = read_frame_code_bits(rgb)
    return _bits_to_index(bits)


# ---------------------------------------------------------------------------------------------
# Audio time code
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AudioTimeCode:
    """A sawtooth chirp: frequency linear in source time, repeating every `period_s` seconds."""

    f_lo: float = 100.0
    f_hi: float = 900.0
    period_s: float = 16.0
    amplitude: float = 0.25

    def __post_init__(self) -> None:
        if not 0 < self.f_lo < self.f_hi:
            raise ValueError("need 0 < f_lo < f_hi")
        if self.period_s <= 0 or not 0 < self.amplitude <= 1:
            raise ValueError("need period_s > 0 and 0 < amplitude <= 1")

    @property
    def rate(self) -> float:
        """Sweep rate k in Hz per second of source time."""
        return (self.f_hi - self.f_lo) / self.period_s

    def frequency(self, t: np.ndarray | float) -> np.ndarray:
        """Instantaneous frequency (Hz) at source time t (s)."""
        return self.f_lo + self.rate * np.mod(t, self.period_s)

    def time_of(self, freq: np.ndarray | float) -> np.ndarray:
        """Source time modulo the period (s) at which the tone has frequency `freq`."""
        return (np.asarray(freq, dtype=np.float64) - self.f_lo) / self.rate

    def render(self, num_samples: int, sample_rate: int, start_s: float = 0.0) -> np.ndarray:
        """The tone (float64 [num_samples]) for source times start_s + j / sample_rate."""
        t = start_s + np.arange(num_samples, dtype=np.float64) / sample_rate
        tau = np.mod(t, self.period_s)
        cycles = self.f_lo * tau + 0.5 * self.rate * tau * tau
        # Whole periods add P*(f_lo+f_hi)/2 cycles; keep the fractional part so the phase is
        # continuous even when that is not a whole number.
        per_period = self.period_s * (self.f_lo + self.f_hi) / 2.0
        cycles = cycles + np.floor(t / self.period_s) * (per_period % 1.0)
        return self.amplitude * np.sin(2.0 * np.pi * np.mod(cycles, 1.0))


AUDIO_TIME_CODE = AudioTimeCode()


def _peak_frequency(
    segment: np.ndarray, sample_rate: int, lo: float, hi: float, pad: int = 8
) -> float:
    """Frequency (Hz) of the strongest spectral peak in [lo, hi] (Hann window, interpolated)."""
    n = len(segment)
    win = np.hanning(n)
    nfft = 1 << int(math.ceil(math.log2(n * pad)))
    spec = np.abs(np.fft.rfft((segment - segment.mean()) * win, nfft))
    freqs = np.fft.rfftfreq(nfft, 1.0 / sample_rate)
    band = np.nonzero((freqs >= lo) & (freqs <= hi))[0]
    if len(band) < 3:
        raise ValueError(f"band [{lo:.0f}, {hi:.0f}] Hz is empty at {sample_rate} Hz")
    i = int(band[np.argmax(spec[band])])
    if 0 < i < len(spec) - 1:
        a, b, c = np.log(spec[i - 1 : i + 2] + 1e-12)
        denom = a - 2 * b + c
        shift = 0.5 * (a - c) / denom if denom < 0 else 0.0
    else:
        shift = 0.0
    return float((i + shift) * sample_rate / nfft)


def _check_wave(wave: np.ndarray) -> np.ndarray:
    x = np.asarray(wave, dtype=np.float64)
    if x.ndim == 2:  # [C, S] -> mono
        x = x.mean(axis=0)
    if x.ndim != 1:
        raise ValueError(f"expected a waveform [S] or [C, S], got shape {np.shape(wave)}")
    return x


def audio_frequency_track(
    wave: np.ndarray,
    sample_rate: int,
    *,
    window_s: float = 0.064,
    hop_s: float = 0.016,
    max_speed: float = 8.0,
    code: AudioTimeCode = AUDIO_TIME_CODE,
) -> tuple[np.ndarray, np.ndarray]:
    """(window centre times in the wave [s], time-code tone frequency observed there [Hz])."""
    x = _check_wave(wave)
    n = max(16, int(round(window_s * sample_rate)))
    hop = max(1, int(round(hop_s * sample_rate)))
    if len(x) < n:
        n = len(x)
        if n < 16:
            raise ValueError("waveform too short to read the audio time code")
    starts = np.arange(0, len(x) - n + 1, hop)
    hi = min(code.f_hi * max_speed * 1.05, 0.49 * sample_rate)
    lo = code.f_lo * 0.95
    freqs = np.array([_peak_frequency(x[s : s + n], sample_rate, lo, hi) for s in starts])
    return (starts + n / 2.0) / sample_rate, freqs


def decode_audio_time(
    wave: np.ndarray,
    sample_rate: int,
    *,
    speed: float = 1.0,
    code: AudioTimeCode = AUDIO_TIME_CODE,
    near: float | None = None,
) -> float:
    """Source time (s) at the centre of a short window of audio (about 50-100 ms).

    `speed` is the factor the audio was sped up by (the tone then sits at speed * f(t)); the
    direction does not matter for one window. The answer is modulo `code.period_s` unless `near`
    picks the period (the answer is then the candidate closest to `near`).
    """
    x = _check_wave(wave)
    hi = min(code.f_hi * speed * 1.05, 0.49 * sample_rate)
    f = _peak_frequency(x, sample_rate, code.f_lo * speed * 0.95, hi)
    t = float(code.time_of(f / speed))
    return _pick_period(t, code.period_s, near)


def _pick_period(t: float, period: float, near: float | None) -> float:
    if near is None:
        return t % period
    return t + period * round((near - t) / period)


@dataclass(frozen=True)
class AudioClipTruth:
    """What the audio time code says about a clip.

    first_s / last_s: source times of the clip's first and last output sample; start_s/end_s:
    the covered source span (start_s <= end_s); speed: the nearest allowed speed (or the raw
    estimate when no speeds were given); speed_estimate: sqrt(|sweep rate| / k); reverse: the tone
    falls; residual_s: RMS error of the per-window source times around the fitted line.
    """

    first_s: float
    last_s: float
    speed: float
    speed_estimate: float
    reverse: bool
    residual_s: float

    @property
    def start_s(self) -> float:
        return min(self.first_s, self.last_s)

    @property
    def end_s(self) -> float:
        return max(self.first_s, self.last_s)


def decode_audio_clip(
    wave: np.ndarray,
    sample_rate: int,
    *,
    speeds: tuple[float, ...] | None = (1, 2, 4, 8),
    code: AudioTimeCode = AUDIO_TIME_CODE,
    near: float | None = None,
    window_s: float = 0.064,
    hop_s: float = 0.016,
) -> AudioClipTruth:
    """Source span, speed and direction of an audio clip that carries the time code.

    The clip may have been sped up (resampled) by any factor and reversed. Per window, the tone's
    frequency g = s * f(t); along the clip g sweeps at +-s^2 * k, which gives the speed s and the
    direction; then f = g / s gives the source times, and a robust line fit gives the span. Needs
    a clip of at least a few windows (>= ~0.2 s). `near` picks the period as in
    `decode_audio_time` (applied to the first sample's time).
    """
    x = _check_wave(wave)
    max_speed = float(max(speeds)) if speeds else 8.0
    tau, g = audio_frequency_track(
        x, sample_rate, window_s=window_s, hop_s=hop_s, max_speed=max_speed, code=code
    )
    if len(tau) < 3:
        raise ValueError("clip too short: need at least 3 analysis windows")
    # Sweep rate from successive differences; the median ignores a wrap jump or a few outliers.
    slope = float(np.median(np.diff(g) / np.diff(tau)))
    s_est = math.sqrt(abs(slope) / code.rate)
    if speeds:
        s = float(min(speeds, key=lambda v: abs(math.log(v) - math.log(max(s_est, 1e-6)))))
    else:
        s = s_est
    direction = -1.0 if slope < 0 else 1.0
    # Source time at each window (mod P) minus the line's progress = the first sample's time.
    t = code.time_of(g / s)
    resid = np.mod(t - direction * s * tau, code.period_s)
    angles = 2 * np.pi * resid / code.period_s
    centre = float(np.angle(np.mean(np.exp(1j * angles)))) * code.period_s / (2 * np.pi)
    dev = np.mod(resid - centre + code.period_s / 2, code.period_s) - code.period_s / 2
    # Drop windows where an event sound outshone the tone, then refit.
    keep = np.abs(dev - np.median(dev)) <= max(
        3.0 * 1.4826 * np.median(np.abs(dev - np.median(dev))), 0.02
    )
    first = centre + float(np.mean(dev[keep]))
    residual = float(np.sqrt(np.mean((dev[keep] - np.mean(dev[keep])) ** 2)))
    first = _pick_period(first, code.period_s, near)
    duration = (len(x) - 1) / sample_rate
    last = first + direction * s * duration
    return AudioClipTruth(
        first_s=first,
        last_s=last,
        speed=s,
        speed_estimate=s_est,
        reverse=direction < 0,
        residual_s=residual,
    )
