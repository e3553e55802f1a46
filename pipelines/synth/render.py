"""Rendering of the synthetic corpus: frames (numpy, bounding-box patches only) and sound.

Frames: a static background (sky gradient, props, floor line, ground strip), then per frame the
dust clouds and impact rings, the objects' shadows, the objects, and the vanishing puffs. Every
effect runs one way in time and is bold enough to survive a 64x64 crop: rings expand from the
object's rim and thin and fade (`RING_LIFE`), dust drifts apart, rises, spreads and fades
(`DUST_LIFE`), puffs spread and fade (`POOF_LIFE`). Nothing is drawn on the ground strip, which
holds the frame-index code when ground truth is on.

Sound: each impact is a struck-object sound starting at the first sample at or after the exact
impact time (0.5 ms attack, 10 ms broadband click, four inharmonic partials with exponential
decay, the higher ones faster), at the object's pitch, louder for harder impacts, panned by its
position; sliding makes a low-passed noise scrape that follows the speed; the scene's ambience,
a noise bed whose spectral slope the sky's hue shows (`pipelines.synth.ambience`), runs
throughout; each lit lamp adds its tone (`pipelines.synth.lamps`); with ground truth
on, the audio time code is mixed in instead of the lamp tones, which share its band.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from avtime.pipelines.synth import even
from avtime.pipelines.synth import groundtruth as gt
from avtime.pipelines.synth.ambience import AMBIENCE_RMS, QUIET_RMS, noise_bed
from avtime.pipelines.synth.lamps import FLASH_COLOR, FLASH_LIFE, LAMP_HALF, lamp_tones
from avtime.pipelines.synth.sand import draw_marks, marks_of
from avtime.pipelines.synth.scene import FRICTION, Event, SceneObject, VideoPlan

RING_LIFE = 0.6  # seconds
DUST_LIFE = 0.8
POOF_LIFE = 0.7
RING_COLOR = np.array([245.0, 245.0, 240.0], np.float32)
SMOKE_COLOR = np.array([200.0, 200.0, 205.0], np.float32)

PARTIALS = ((1.0, 1.0), (2.32, 0.5), (4.25, 0.25), (6.63, 0.12))  # (frequency ratio, amplitude)
EVENT_GAIN_WITH_CODE = 0.5  # event sounds are 6 dB quieter when the time code is mixed in


def _background(plan: VideoPlan) -> np.ndarray:
    h, w, fp = plan.height, plan.width, plan.floor_px
    pal = plan.palette
    ramp = (np.arange(h, dtype=np.float32) / max(fp - 1, 1))[:, None]
    top = np.asarray(pal["sky_top"], np.float32)
    bottom = np.asarray(pal["sky_bottom"], np.float32)
    bg = np.empty((h, w, 3), np.float32)
    bg[:] = (top + (bottom - top) * np.clip(ramp, 0, 1))[:, None, :]
    scale = fp
    for x, pw, ph, color in pal["props"]:
        x0, x1 = int(max(x * scale, 0)), int(min((x + pw) * scale, w))
        y0 = int(max(fp - ph * scale, 0))
        if x1 > x0:
            bg[y0:fp, x0:x1] = 0.55 * bg[y0:fp, x0:x1] + 0.45 * np.asarray(color, np.float32)
    bg[fp:] = np.asarray(pal["ground"], np.float32)
    bg[fp : fp + max(1, h // 96)] *= 0.6  # the floor edge
    return bg


def _box(cx: float, cy: float, rx: float, ry: float, w: int, h: int):  # type: ignore[no-untyped-def]
    x0, x1 = max(int(cx - rx - 1), 0), min(int(cx + rx + 2), w)
    y0, y1 = max(int(cy - ry - 1), 0), min(int(cy + ry + 2), h)
    if x0 >= x1 or y0 >= y1:
        return None
    xs = np.arange(x0, x1, dtype=np.float32) + (0.5 - cx)
    ys = (np.arange(y0, y1, dtype=np.float32) + (0.5 - cy))[:, None]
    return x0, x1, y0, y1, xs, ys


def _blend(frame: np.ndarray, box, alpha: np.ndarray, color: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    x0, x1, y0, y1 = box[:4]
    patch = frame[y0:y1, x0:x1]
    patch += alpha[..., None] * (color - patch)


class _Renderer:
    """Draws the frames of one plan."""

    def __init__(self, plan: VideoPlan):
        self.plan = plan
        self.bg = _background(plan)
        self.scale = float(plan.floor_px)
        self.times = np.arange(plan.num_frames) / plan.fps
        self.tracks = [ep.positions(self.times) for ep in plan.episodes]
        # Effects: (t0, life, kind, x, y, strength, extra)
        eff: list[tuple[float, float, str, float, float, float, float]] = []
        ring, dust, poof = (life / plan.pace for life in (RING_LIFE, DUST_LIFE, POOF_LIFE))
        for ep in plan.episodes:
            for ev in ep.events:
                if ev.kind == "impact":
                    eff.append((ev.t, ring, "ring", ev.x, ev.y, ev.strength, ep.obj.radius))
                    if ev.strength > 0.12:
                        eff.append((ev.t, dust, "dust", ev.x, 0.0, ev.strength, 1.0))
                        eff.append((ev.t, dust, "dust", ev.x, 0.0, ev.strength, -1.0))
                else:
                    eff.append((ev.t, poof, "poof", ev.x, ev.y, 1.0, ep.obj.radius))
        self.effects = eff
        self.eff_t0 = np.array([e[0] for e in eff])
        self.eff_life = np.array([e[1] for e in eff])
        self.dust = np.asarray(plan.palette["dust"], np.float32)
        self.marks = marks_of(plan.episodes) if plan.world == "sand" else []

    def px(self, x: float, y: float) -> tuple[float, float]:
        return x * self.scale, self.plan.floor_px - y * self.scale

    def frames(self) -> Iterator[np.ndarray]:
        for i in range(self.plan.num_frames):
            yield self.frame(i)

    def frame(self, i: int) -> np.ndarray:
        """Frame i: background, lit lamps, marks in the sand, dust and rings, shadows, objects,
        then smoke puffs."""
        plan = self.plan
        t = float(self.times[i])
        img = self.bg.copy()
        scene = img[: plan.floor_px]  # every effect and object stays above the floor line
        self._lamps(scene, t)
        draw_marks(scene, self.marks, t, self.scale)
        if plan.world == "even":  # the drying sand: the ground strip lightens with time
            img[plan.floor_px :] = even.ground_color(t)
            img[plan.floor_px : plan.floor_px + max(1, plan.height // 96)] *= 0.6
        active = np.nonzero((self.eff_t0 <= t) & (t < self.eff_t0 + self.eff_life))[0]
        for k in active:
            if self.effects[k][2] != "poof":
                self._effect(scene, self.effects[k], t)
        visible = [
            (ep, float(xs[i]), float(ys[i]))
            for (vis, xs, ys), ep in zip(self.tracks, plan.episodes)
            if vis[i]
        ]
        for ep, x, y in visible:
            self._shadow(scene, x, y, ep.obj.radius)
        for ep, x, y in visible:
            cx, cy = self.px(x, y)
            self._object(scene, cx, cy, self.scale * ep.obj.radius, ep.obj)
        for k in active:
            if self.effects[k][2] == "poof":
                self._effect(scene, self.effects[k], t)
        out = np.clip(img, 0, 255).astype(np.uint8)
        if plan.ground_truth:
            gt.draw_frame_code(out, i)
        return out

    def _effect(self, scene: np.ndarray, effect: tuple, t: float) -> None:  # type: ignore[type-arg]
        """One impact ring, dust cloud or vanishing puff, `t - t0` seconds into its life."""
        t0, life, kind, x, y, strength, extra = effect
        age = (t - t0) / life
        s = self.scale
        if kind == "dust":  # a cloud that drifts sideways, rises, spreads and fades
            cx, cy = self.px(x + extra * (0.05 + 0.35 * age) * (0.5 + strength), 0.03 + 0.12 * age)
            sigma = s * (0.03 + 0.09 * age) * (0.6 + 0.6 * strength)
            self._puff(scene, cx, cy, sigma, 0.75 * (1 - age) ** 1.5, self.dust)
        elif kind == "ring":  # expands from the object's rim, thins and fades
            cx, cy = self.px(x, y)
            radius = s * (extra + (0.12 + 0.4 * strength) * age**0.7)
            width = s * (0.05 + 0.04 * strength) * (1.0 - 0.6 * age)
            alpha = (0.5 + 0.5 * strength) * (1.0 - age) ** 1.5
            self._ring(scene, cx, cy, radius, width, alpha)
        else:  # poof: six smoke puffs spreading out from where the object vanished
            cx, cy = self.px(x, y)
            r = s * extra
            for j in range(6):
                ang = 2 * math.pi * j / 6 + 0.3
                dist = r * (0.3 + 2.2 * age**0.6)
                px, py = cx + dist * math.cos(ang), cy - 0.8 * dist * math.sin(ang)
                self._puff(scene, px, py, r * (0.5 + age), 0.8 * (1 - age) ** 1.3, SMOKE_COLOR)

    def _lamps(self, scene: np.ndarray, t: float) -> None:
        """Every lamp lit at time t (s): its flash, a bright square up to 2.5x the lamp's size that
        shrinks back to it and fades over `FLASH_LIFE`, then the lamp itself."""
        lamps = self.plan.lamps
        if lamps is None:
            return
        color, flash = np.asarray(lamps.color, np.float32), np.asarray(FLASH_COLOR, np.float32)
        half = self.scale * LAMP_HALF
        for lamp in lamps.lamps:
            age = t - lamp.t_on
            if age < 0:
                continue
            cx, cy = self.px(lamp.x, lamp.y)
            if age < FLASH_LIFE:
                f = 1.0 - age / FLASH_LIFE
                self._square(scene, cx, cy, half * (1.0 + 1.5 * f), flash, 0.85 * f + 0.15)
            self._square(scene, cx, cy, half, color, 1.0)

    def _shadow(self, scene: np.ndarray, x: float, y: float, radius: float) -> None:
        """A soft elliptical shadow on the floor, wider and fainter the higher the object."""
        above = max(y - radius, 0.0)
        rx = self.scale * radius * (1.2 + 0.6 * above)
        box = _box(x * self.scale, scene.shape[0] - 1.0, rx, 0.3 * rx, *scene.shape[1::-1])
        if box is not None:
            d = (box[4] / rx) ** 2 + (box[5] / (0.3 * rx)) ** 2
            alpha = np.clip(1.0 - d, 0, 1) * (0.45 / (1.0 + 3.0 * above))
            _blend(scene, box, alpha, np.zeros(3, np.float32))

    @staticmethod
    def _object(img: np.ndarray, cx: float, cy: float, r: float, obj: SceneObject) -> None:
        box = _box(cx, cy, r, r, *img.shape[1::-1])
        if box is None:
            return
        xs, ys = box[4], box[5]
        if obj.shape == "disc":
            d = np.sqrt(xs * xs + ys * ys) - r
        else:
            d = np.maximum(np.abs(xs), np.abs(ys)) - 0.88 * r
        alpha = np.clip(0.5 - d, 0.0, 1.0)
        shade = 1.15 - 0.3 * (ys + r) / (2 * r)  # lit from above
        color = np.asarray(obj.color, np.float32) * shade[..., None]
        _blend(img, box, alpha, np.minimum(color, 255.0))

    @staticmethod
    def _square(
        img: np.ndarray, cx: float, cy: float, half: float, color: np.ndarray, alpha: float
    ) -> None:
        """An axis-aligned square (centre, half side in px) with soft 1 px edges."""
        box = _box(cx, cy, half, half, *img.shape[1::-1])
        if box is None:
            return
        d = np.maximum(np.abs(box[4]), np.abs(box[5])) - half
        _blend(img, box, np.clip(0.5 - d, 0.0, 1.0) * alpha, color)

    @staticmethod
    def _ring(
        img: np.ndarray, cx: float, cy: float, radius: float, width: float, alpha: float
    ) -> None:
        box = _box(cx, cy, radius + width, radius + width, *img.shape[1::-1])
        if box is None or alpha <= 0.01:
            return
        xs, ys = box[4], box[5]
        d = np.abs(np.sqrt(xs * xs + ys * ys) - radius) - 0.5 * width
        a = np.clip(0.5 - d, 0.0, 1.0) * alpha
        _blend(img, box, a, RING_COLOR)

    @staticmethod
    def _puff(
        img: np.ndarray, cx: float, cy: float, sigma: float, alpha: float, color: np.ndarray
    ) -> None:
        if alpha <= 0.01 or sigma <= 0.3:
            return
        box = _box(cx, cy, 2.5 * sigma, 2.5 * sigma, *img.shape[1::-1])
        if box is None:
            return
        xs, ys = box[4], box[5]
        a = alpha * np.exp(-(xs * xs + ys * ys) / (2 * sigma * sigma))
        _blend(img, box, a, color)


def render_frames(plan: VideoPlan) -> Iterator[np.ndarray]:
    """The video's frames, uint8 [H, W, 3], one at a time."""
    return _Renderer(plan).frames()


def _pan(x: float, aspect: float) -> tuple[float, float]:
    """Equal-power (left, right) gains for a source at scene x."""
    p = min(max(x / aspect, 0.0), 1.0)
    return math.cos(p * math.pi / 2) * math.sqrt(2), math.sin(p * math.pi / 2) * math.sqrt(2)


def impact_sound(
    rng: np.random.Generator,
    obj: SceneObject,
    ev: Event,
    sample_rate: int,
    num_samples: int,
    *,
    drying: bool = False,
) -> tuple[int, np.ndarray]:
    """(first sample, mono wave float32) of one impact, cut to the file's length.

    `drying` (the `even` world): the ring time and the partials' balance follow the sand's
    dryness at the impact's time (`pipelines.synth.even`) instead of the object alone.
    """
    sr = sample_rate
    ring = even.ring_time(obj.decay_s, ev.t) if drying else obj.decay_s
    j0 = int(math.ceil(ev.t * sr))  # first sample at or after the impact
    lo, hi = max(j0, 0), min(j0 + int(5 * ring * sr), num_samples)
    if hi <= lo:
        return lo, np.zeros(0, np.float32)
    tau = (np.arange(lo, hi, dtype=np.float64) / sr - ev.t).astype(np.float32)
    wave = np.zeros(hi - lo, np.float32)
    for k, (ratio, amp) in enumerate(PARTIALS):
        fk = obj.pitch_hz * ratio
        decay = ring / (1 + 0.8 * k)  # higher partials die out sooner
        amp = amp * even.partial_gain(k, ev.t) if drying else amp
        m = min(int(5 * decay * sr), hi - lo)
        phase = rng.uniform(0, 2 * np.pi)
        if fk > 0.45 * sr or m <= 0:
            continue
        tk = tau[:m]
        wave[:m] += amp * np.exp(-tk / decay) * np.sin(2 * np.pi * fk * tk + phase)
    m = min(int(0.01 * sr), hi - lo)  # a 10 ms broadband click marks the attack
    wave[:m] += 0.6 * rng.standard_normal(m) * np.exp(-tau[:m] / 0.0015)
    m = min(int(0.0005 * sr) + 1, hi - lo)
    wave[:m] *= np.minimum(tau[:m] / 0.0005, 1.0)  # 0.5 ms attack
    return lo, wave * (0.45 * ev.strength**1.3)


def scrape_sound(
    rng: np.random.Generator,
    scrape: tuple[float, float, float, float],
    sample_rate: int,
    num_samples: int,
) -> tuple[int, np.ndarray]:
    """(first sample, mono wave) of sliding from t0 to t1, as loud as the object is fast."""
    t0, t1, speed, _x = scrape
    lo = max(int(math.ceil(t0 * sample_rate)), 0)
    hi = min(int(math.ceil(t1 * sample_rate)), num_samples)
    if hi <= lo:
        return lo, np.zeros(0)
    since = np.arange(lo, hi) / sample_rate - t0
    v = np.maximum(speed - FRICTION * since, 0.0)
    noise = np.convolve(rng.standard_normal(hi - lo), np.ones(6) / 6, mode="same")  # low-pass
    return lo, noise * 0.12 * (v / 1.2) * np.minimum(since / 0.01, 1.0)


def _ambience(plan: VideoPlan, rng: np.random.Generator) -> np.ndarray:
    """The noise bed [2, num_samples]: the scene's ambience, or with `plan.ambience` off a quiet
    pink floor; quiet too under the time code."""
    if not plan.ambience:
        return noise_bed(rng, 1.0, plan.sample_rate, plan.num_samples, QUIET_RMS)
    rms = QUIET_RMS if plan.ground_truth else AMBIENCE_RMS
    beta = float(plan.palette["ambience_beta"])
    return noise_bed(rng, beta, plan.sample_rate, plan.num_samples, rms)


def _events(plan: VideoPlan, rng: np.random.Generator) -> np.ndarray:
    """The impacts' and scrapes' mix [2, num_samples] float64, each panned by its position
    (the `even` world: no scrapes, and impacts ring as the drying sand says)."""
    sr, n, drying = plan.sample_rate, plan.num_samples, plan.world == "even"
    out = np.zeros((2, n), np.float64)
    for ep in plan.episodes:
        sounds = [
            (ev.x, impact_sound(rng, ep.obj, ev, sr, n, drying=drying))
            for ev in ep.events
            if ev.kind == "impact"
        ]
        if not drying:
            sounds += [(sc[3], scrape_sound(rng, sc, sr, n)) for sc in ep.scrapes]
        for x, (lo, wave) in sounds:
            gl, gr = _pan(x, plan.aspect)
            out[0, lo : lo + len(wave)] += gl * wave
            out[1, lo : lo + len(wave)] += gr * wave
    return out


def render_audio(plan: VideoPlan) -> np.ndarray:
    """Stereo float32 [2, num_samples] in [-1, 1]."""
    rng = np.random.default_rng(plan.audio_seed)
    sr, n = plan.sample_rate, plan.num_samples
    out = np.zeros((2, n), np.float64)
    out += _ambience(plan, rng)
    gain = EVENT_GAIN_WITH_CODE if plan.ground_truth else 1.0
    events = _events(plan, rng)
    if plan.world == "even":  # one level distribution for every class
        events = even.set_level(events, even.level_of(plan.audio_seed))
    out += gain * events
    if plan.lamps is not None and not plan.ground_truth:  # the tones would blur the time code
        out += lamp_tones(plan.lamps, sr, n)[None, :]
    if plan.ground_truth:
        out += gt.AUDIO_TIME_CODE.render(n, sr)[None, :]
    return np.clip(out, -1.0, 1.0).astype(np.float32)
