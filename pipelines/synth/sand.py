"""The `sand` world: one studio, one look, and an arrow of time that the motion writes itself.

In the `dusk` world every video has its own sky, props, object colours and sizes, and a slow side
process (lamps) orders its clips. Each of those is a cue a still frame shows that identifies the
video without its motion. The `sand` world removes them (docs/synth.md, "Worlds"):

- one studio for every video: the same backdrop and sand floor, no props;
- every object looks the same (one size, shape and colour); its impact pitch is drawn as before
  but from a size the picture never shows, so pitch identifies no object in the picture;
- no lamps and no ambience (a quiet pink floor);
- the floor is soft sand: every impact presses a dent into it that stays, and a sliding object
  ploughs a furrow behind it. Marks only ever appear, so the number and depth of the marks in
  view order two clips of one video, and the marks' layout is the footprint of the class's
  trajectories (a pile of dents in place for `drop`, spaced dents for `throw` and `lob`, one thud
  and a furrow for `slide`).

Pure numpy; `pipelines.synth.render` calls `marks_of` once and `draw_marks` per frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from avtime.pipelines.synth.scene import (
    FRICTION,
    Episode,
    MotionClass,
    SceneObject,
    impact_pitch,
    sound_decay,
)

STUDIO_SKY_TOP = (118.0, 128.0, 140.0)
STUDIO_SKY_BOTTOM = (150.0, 156.0, 160.0)
SAND = (170.0, 150.0, 110.0)  # the ground strip
OBJECT_COLOR = (235.0, 120.0, 40.0)
OBJECT_RADIUS = 0.07  # scene heights; the pitch's "size" is drawn apart from it
DENT_COLOR = (70.0, 58.0, 40.0)
DENT_ALPHA = 0.35  # per dent; dents at one place darken further with each impact
DUST = (212.0, 210.0, 206.0)  # pale and grey, so that dust never passes for a mark
MIN_DENT_STRENGTH = 0.05  # softer touches leave no mark


@dataclass(frozen=True)
class Mark:
    """One mark in the sand: a dent at `x` from time `t`, or a furrow from `x` that grows to
    `x_end` from `t` to `t_end` (scene units and seconds)."""

    t: float
    x: float
    size: float  # dent half width (scene units); furrow: its depth
    x_end: float | None = None
    t_end: float | None = None
    speed: float = 0.0  # furrow: the object's speed at `t`

    def furrow_end(self, t: float) -> float:
        """Furrow: where its front is at time t (s), following the slide's deceleration."""
        assert self.x_end is not None and self.t_end is not None
        dt = min(max(t - self.t, 0.0), self.t_end - self.t)
        sign = 1.0 if self.x_end >= self.x else -1.0
        return self.x + sign * (self.speed * dt - 0.5 * FRICTION * dt * dt)


def studio_palette() -> dict[str, Any]:
    """The one backdrop of the sand world (same keys as `scene.draw_palette`)."""
    sand = np.asarray(SAND)
    return {
        "sky_top": list(STUDIO_SKY_TOP),
        "sky_bottom": list(STUDIO_SKY_BOTTOM),
        "ground": sand.tolist(),
        "props": [],
        "dust": list(DUST),
        "ambience_beta": 1.0,
    }


def uniform_object(rng: np.random.Generator, mclass: MotionClass) -> SceneObject:
    """An object of the one look. Restitution (and so the sound's decay) follows the class as
    in the dusk world; the pitch follows a size drawn like the dusk world's but never drawn."""
    hidden_radius = rng.uniform(0.045, 0.1)
    e = rng.uniform(*mclass.restitution)
    return SceneObject(
        radius=OBJECT_RADIUS,
        shape="disc",
        color=OBJECT_COLOR,
        pitch_hz=impact_pitch(rng, hidden_radius),
        restitution=e,
        decay_s=sound_decay(e),
    )


def marks_of(episodes: list[Episode]) -> list[Mark]:
    """Every mark the episodes press into the sand, by start time."""
    marks: list[Mark] = []
    for ep in episodes:
        r = ep.obj.radius
        for ev in ep.events:
            if ev.kind == "impact" and ev.strength >= MIN_DENT_STRENGTH:
                marks.append(Mark(ev.t, ev.x, r * (0.8 + 0.8 * min(ev.strength * 2, 1.0))))
        for t0, t1, speed, x0 in ep.scrapes:
            sign = _slide_sign(ep, t0)
            dist = speed * (t1 - t0) - 0.5 * FRICTION * (t1 - t0) ** 2
            marks.append(Mark(t0, x0, 0.35 * r, x0 + sign * dist, t1, speed))
    return sorted(marks, key=lambda m: m.t)


def _slide_sign(ep: Episode, t0: float) -> float:
    """+1 if the object slides rightwards from t0, else -1 (from its sliding segment)."""
    k = int(np.searchsorted(ep.seg_t, t0, side="right") - 1)
    return 1.0 if float(ep.seg[max(k, 0), 2]) >= 0 else -1.0


def draw_marks(scene: np.ndarray, marks: list[Mark], t: float, scale: float) -> None:
    """Draw every mark made by time t (s) into `scene` [floor_px, W, 3] float32, in place.

    A dent is the upper half of a dark ellipse centred on the floor line (half width `size`,
    height 0.45 of it); a furrow is a dark band along the floor from its start to its front.
    """
    h, w = scene.shape[:2]
    color = np.asarray(DENT_COLOR, np.float32)
    for m in marks:
        if m.t > t:
            break
        if m.x_end is None:
            rx = m.size * scale
            ry = 0.45 * rx
            x0, x1 = max(int(m.x * scale - rx - 1), 0), min(int(m.x * scale + rx + 2), w)
            y0 = max(int(h - ry - 1), 0)
            if x1 <= x0:
                continue
            xs = (np.arange(x0, x1, dtype=np.float32) + 0.5 - m.x * scale) / rx
            ys = (np.arange(y0, h, dtype=np.float32) + 0.5 - h)[:, None] / ry
            alpha = np.clip((1.0 - (xs * xs + ys * ys)) * 3.0, 0.0, 1.0) * DENT_ALPHA
        else:
            front = m.furrow_end(t)
            lo, hi = sorted((m.x * scale, front * scale))
            x0, x1 = max(int(lo), 0), min(int(hi) + 1, w)
            depth = max(m.size * scale, 1.5)
            y0 = max(int(h - depth), 0)
            if x1 <= x0:
                continue
            alpha = np.full((h - y0, x1 - x0), DENT_ALPHA, np.float32)
        patch = scene[y0:h, x0:x1]
        patch += alpha[..., None] * (color - patch)
