"""A deterministic synthetic tagged-video dataset in the YouTube-Objects layout.

It is built so that weakly-supervised localization is a real problem and TCAM's
idea has something to fix:

* Every object has a large **body** whose look (shape family, fur-like texture,
  colours) is drawn from one distribution shared by all classes, plus a small
  class-specific **part** (a saturated shape of one colour, about 1/8 of the
  body's area). Only the part tells the classes apart, so a classifier's CAM
  lights up the part, not the whole object: the weakness of CAMs.
* The part **moves over the body** from frame to frame (it circles the body's
  centre), so the union of a few neighbouring frames' CAMs covers much more of
  the body than one frame's: what CAM temporal max-pooling exploits.
* Objects and the camera move smoothly (pan and zoom), objects change scale
  and turn, a shot may hold two objects of the class, an occluder may pass in
  front, and an object's path may run partly out of the frame.
* Backgrounds are cluttered: smooth colour noise, low-saturation shapes and
  lines, and moving distractor shapes. Each shot takes its scenery from one
  pool shared by all classes, so the background is no shortcut to the class.

Train shots carry only the class tag; val/test frames (every `eval_stride`-th
frame of their shots in which an object is visible) carry the box of every
visible object, in pixels, as the visible mask's extent.

Every video's randomness comes from `seed`, the class and the video number
alone, so the output is the same byte for byte on every run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from ..config import SynthConfig
from .layout import DatasetMetadata, SplitMetadata, write_metadata

# (colour name, OpenCV hue 0-180) and part shapes; class k gets CLASS_PARTS[k].
HUES = {"red": 0, "orange": 12, "yellow": 28, "green": 60, "cyan": 90, "blue": 115, "purple": 140, "magenta": 160}
CLASS_PARTS = [
    ("red", "star"), ("blue", "triangle"), ("green", "disc"), ("yellow", "cross"),
    ("magenta", "square"), ("cyan", "ring"), ("orange", "diamond"), ("purple", "hexagon"),
    ("blue", "star"), ("red", "disc"), ("green", "triangle"), ("yellow", "ring"),
]
PATCH = 96  # object patch side (object coordinates), body centred in it
MIN_VISIBLE_FRACTION = 0.004  # of the frame's area, for an object to count as visible


def class_names(count: int) -> list[str]:
    return [f"{colour}_{shape}" for colour, shape in CLASS_PARTS[:count]]


# --------------------------------------------------------------------------- small geometry helpers


def affine(scale: float = 1.0, angle: float = 0.0, tx: float = 0.0, ty: float = 0.0) -> np.ndarray:
    """3x3 matrix: rotate by `angle` (radians) and scale, then translate."""
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    return np.array([[c, -s, tx], [s, c, ty], [0.0, 0.0, 1.0]])


def translate(tx: float, ty: float) -> np.ndarray:
    return affine(tx=tx, ty=ty)


def smooth_path(rng: np.random.Generator, frames: int, amplitude: float, speed: tuple[float, float]) -> np.ndarray:
    """A smooth 1-D trajectory: sum of two sinusoids with random phases and frequencies."""
    t = np.arange(frames, dtype=np.float64)
    path = np.zeros(frames)
    for weight in (0.7, 0.3):
        freq = rng.uniform(*speed)
        path += weight * np.sin(freq * t + rng.uniform(0, 2 * math.pi))
    return amplitude * path


def smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int, channels: int = 1) -> np.ndarray:
    """Smooth noise in [0, 1]: random values on a coarse grid, bicubically upsampled."""
    small = rng.random((max(2, height // cell + 2), max(2, width // cell + 2), channels)).astype(np.float32)
    big = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(big.reshape(height, width, channels), 0, 1)


def hsv_colour(hue: float, sat: float, val: float) -> tuple[int, int, int]:
    pixel = np.uint8([[[int(hue) % 180, int(sat), int(val)]]])
    return tuple(int(v) for v in cv2.cvtColor(pixel, cv2.COLOR_HSV2BGR)[0, 0])


def shape_polygon(shape: str, cx: float, cy: float, radius: float, angle: float) -> list[np.ndarray]:
    """Closed polygons (float) of a part shape; a ring gives outer and inner contours."""
    def regular(n: int, r: float, offset: float = 0.0) -> np.ndarray:
        a = angle + offset + np.arange(n) * 2 * math.pi / n
        return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], axis=1)

    if shape == "disc":
        return [regular(32, radius)]
    if shape == "ring":
        return [regular(32, radius), regular(32, radius * 0.55)]
    if shape == "triangle":
        return [regular(3, radius * 1.15)]
    if shape == "square":
        return [regular(4, radius * 1.1, math.pi / 4)]
    if shape == "diamond":
        pts = regular(4, radius * 1.2) - [cx, cy]
        return [pts * [0.65, 1.0] + [cx, cy]]
    if shape == "hexagon":
        return [regular(6, radius * 1.05)]
    if shape == "star":
        outer, inner = regular(5, radius * 1.25), regular(5, radius * 0.5, math.pi / 5)
        return [np.stack([outer, inner], axis=1).reshape(-1, 2)]
    if shape == "cross":
        arm = radius * 0.38
        base = np.array([[-arm, -radius], [arm, -radius], [arm, -arm], [radius, -arm], [radius, arm], [arm, arm],
                         [arm, radius], [-arm, radius], [-arm, arm], [-radius, arm], [-radius, -arm], [-arm, -arm]])
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        return [base @ rot.T + [cx, cy]]
    raise ValueError(f"unknown part shape {shape!r}")


def fill_shape(image: np.ndarray, polygons: list[np.ndarray], colour, shift: int = 4) -> None:
    """Fill with sub-pixel precision (anti-aliased on uint8); a polygon inside another is a hole."""
    scale = 1 << shift
    pts = [np.round(p * scale).astype(np.int32) for p in polygons]
    cv2.fillPoly(image, pts, colour, lineType=cv2.LINE_AA, shift=shift)


# --------------------------------------------------------------------------- scene elements


@dataclass
class ObjectTrack:
    """One object of the tagged class across a shot, in world coordinates."""

    body: np.ndarray  # PATCH x PATCH x 3 uint8 texture
    body_mask: np.ndarray  # PATCH x PATCH float32 in [0, 1]
    body_axes: tuple[float, float]
    part_shape: str
    part_colour: tuple[int, int, int]
    part_radius: float
    x: np.ndarray
    y: np.ndarray
    scale: np.ndarray
    angle: np.ndarray
    part_angle: np.ndarray
    part_reach: np.ndarray

    def patch(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Texture and mask of the object at frame t, with its part drawn where it is now."""
        image = self.body.copy()
        mask = self.body_mask.copy()
        a, b = self.body_axes
        cx = PATCH / 2 + self.part_reach[t] * a * math.cos(self.part_angle[t])
        cy = PATCH / 2 + self.part_reach[t] * b * math.sin(self.part_angle[t])
        polygons = shape_polygon(self.part_shape, cx, cy, self.part_radius, self.part_angle[t] * 0.5)
        fill_shape(image, polygons, self.part_colour)  # a ring's hole shows the body
        part_mask = np.zeros(mask.shape, np.uint8)
        fill_shape(part_mask, polygons[:1], 255)
        mask = np.maximum(mask, part_mask.astype(np.float32) / 255.0)
        return image, mask

    def to_world(self, t: int) -> np.ndarray:
        return translate(self.x[t], self.y[t]) @ affine(self.scale[t], self.angle[t]) @ translate(-PATCH / 2, -PATCH / 2)


def make_body(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """A body drawn from the distribution every class shares: a furry blob."""
    a = PATCH * rng.uniform(0.40, 0.46)
    b = a * rng.uniform(0.62, 0.95)
    exponent = rng.uniform(2.0, 3.2)
    theta = np.linspace(0, 2 * math.pi, 96, endpoint=False)
    wobble = 1 + 0.06 * np.sin(3 * theta + rng.uniform(0, 6.3)) + 0.04 * np.sin(5 * theta + rng.uniform(0, 6.3))
    cos, sin = np.cos(theta), np.sin(theta)
    xs = PATCH / 2 + wobble * a * np.sign(cos) * np.abs(cos) ** (2 / exponent)
    ys = PATCH / 2 + wobble * b * np.sign(sin) * np.abs(sin) ** (2 / exponent)
    mask = np.zeros((PATCH, PATCH), np.uint8)
    fill_shape(mask, [np.stack([xs, ys], axis=1)], 255)

    hue = rng.uniform(8, 24)
    base = np.array(hsv_colour(hue, rng.uniform(70, 130), rng.uniform(110, 170)), np.float32)
    shade = 0.75 + 0.5 * smooth_noise(rng, PATCH, PATCH, 12)
    stripes_dir = rng.uniform(0, math.pi)
    yy, xx = np.mgrid[0:PATCH, 0:PATCH].astype(np.float32)
    stripes = 0.9 + 0.1 * np.sin((xx * math.cos(stripes_dir) + yy * math.sin(stripes_dir)) / rng.uniform(2.0, 4.0))
    grain = 0.92 + 0.16 * rng.random((PATCH, PATCH, 1)).astype(np.float32)
    texture = np.clip(base * shade * stripes[..., None] * grain, 0, 255).astype(np.uint8)
    return texture, mask.astype(np.float32) / 255.0, (a, b)


def make_track(rng: np.random.Generator, class_idx: int, frames: int, frame_w: int, frame_h: int, leaves: bool) -> ObjectTrack:
    colour_name, shape = CLASS_PARTS[class_idx]
    body, body_mask, axes = make_body(rng)
    reach = 0.65 if leaves else 0.22
    size = rng.uniform(0.42, 0.62) * frame_h  # body width in pixels at scale 1
    spin = rng.choice([-1, 1]) * rng.uniform(0.35, 0.6)  # radians per frame: the part circles the body
    return ObjectTrack(
        body=body,
        body_mask=body_mask,
        body_axes=axes,
        part_shape=shape,
        part_colour=hsv_colour(HUES[colour_name] + rng.uniform(-4, 4), rng.uniform(200, 255), rng.uniform(200, 255)),
        part_radius=PATCH * rng.uniform(0.10, 0.125),
        x=smooth_path(rng, frames, reach * frame_w, (0.05, 0.15)),
        y=smooth_path(rng, frames, reach * frame_h * 0.7, (0.05, 0.15)),
        scale=(size / (2 * axes[0])) * (1 + smooth_path(rng, frames, 0.18, (0.04, 0.1))),
        angle=rng.uniform(-0.4, 0.4) + smooth_path(rng, frames, 0.25, (0.03, 0.08)),
        part_angle=rng.uniform(0, 2 * math.pi) + spin * np.arange(frames),
        part_reach=0.55 + smooth_path(rng, frames, 0.12, (0.1, 0.3)),
    )


def make_background(rng: np.random.Generator, height: int, width: int, clutter: int) -> np.ndarray:
    """A cluttered world canvas: colour noise, low-saturation shapes and lines."""
    hue = rng.uniform(0, 180)
    hsv = np.empty((height, width, 3), np.float32)
    hsv[..., 0] = (hue + 40 * smooth_noise(rng, height, width, 48)[..., 0]) % 180
    hsv[..., 1] = 30 + 70 * smooth_noise(rng, height, width, 32)[..., 0]
    hsv[..., 2] = 70 + 150 * smooth_noise(rng, height, width, 20)[..., 0]
    canvas = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)
    for _ in range(clutter):
        colour = hsv_colour(rng.uniform(0, 180), rng.uniform(20, 110), rng.uniform(50, 230))
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.02, 0.12) * height
        kind = rng.integers(3)
        if kind == 0:
            cv2.ellipse(canvas, (int(cx), int(cy)), (int(r), int(r * rng.uniform(0.3, 1))), rng.uniform(0, 180), 0, 360,
                        colour, -1, cv2.LINE_AA)
        elif kind == 1:
            end = (int(cx + rng.uniform(-4, 4) * r), int(cy + rng.uniform(-4, 4) * r))
            cv2.line(canvas, (int(cx), int(cy)), end, colour, max(1, int(r / 4)), cv2.LINE_AA)
        else:
            box = cv2.boxPoints(((cx, cy), (r * 2, r * rng.uniform(0.5, 2)), rng.uniform(0, 90)))
            cv2.fillPoly(canvas, [box.astype(np.int32)], colour, cv2.LINE_AA)
    grain = rng.normal(0, 6, canvas.shape).astype(np.float32)
    return np.clip(canvas.astype(np.float32) + grain, 0, 255).astype(np.uint8)


@dataclass
class Mover:
    """A moving distractor shape (world coordinates), drawn under the objects."""

    colour: tuple[int, int, int]
    radius: float
    sides: int
    x: np.ndarray
    y: np.ndarray
    angle: np.ndarray


@dataclass
class Occluder:
    """A textured bar that crosses the frame in front of everything."""

    texture: np.ndarray
    width: int
    x: np.ndarray  # left edge in frame pixels per frame
    tilt: float


# --------------------------------------------------------------------------- rendering


@dataclass
class FrameTruth:
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    part_fraction: float = 0.0  # part area / visible object area (first object)
    clipped: bool = False  # an object runs past the frame border
    occluded: bool = False


def warp(image: np.ndarray, matrix: np.ndarray, width: int, height: int, border=cv2.BORDER_CONSTANT) -> np.ndarray:
    return cv2.warpAffine(image, matrix[:2], (width, height), flags=cv2.INTER_LINEAR, borderMode=border)


class ShotRenderer:
    def __init__(self, rng: np.random.Generator, cfg: SynthConfig, class_idx: int, tracks: int, canvas: np.ndarray):
        self.cfg = cfg
        self.height = cfg.size
        self.width = int(round(cfg.size * cfg.aspect / 2)) * 2
        frames = cfg.frames
        self.canvas = canvas
        ch, cw = canvas.shape[:2]
        self.cam_x = cw / 2 + smooth_path(rng, frames, 0.2 * self.width, (0.03, 0.09))
        self.cam_y = ch / 2 + smooth_path(rng, frames, 0.2 * self.height, (0.03, 0.09))
        self.cam_zoom = 1 + smooth_path(rng, frames, 0.15, (0.03, 0.08))
        leaves = rng.random() < cfg.leave_frame_prob
        self.tracks = [make_track(rng, class_idx, frames, self.width, self.height, leaves) for _ in range(tracks)]
        if tracks == 2:  # keep two objects apart: one left, one right
            self.tracks[0].x -= 0.22 * self.width
            self.tracks[1].x += 0.22 * self.width
        for track in self.tracks:  # object paths are relative to the camera's start
            track.x += self.cam_x[0]
            track.y += self.cam_y[0]
        self.movers = [self.make_mover(rng, frames) for _ in range(max(1, cfg.distractors // 3))]
        self.occluder = self.make_occluder(rng, frames) if rng.random() < cfg.occluder_prob else None
        self.light = 1 + smooth_path(rng, frames, 0.1, (0.05, 0.15))
        self.noise_rng = rng

    def make_mover(self, rng: np.random.Generator, frames: int) -> Mover:
        colour = hsv_colour(rng.uniform(0, 180), rng.uniform(40, 140), rng.uniform(80, 240))
        return Mover(colour, rng.uniform(0.05, 0.1) * self.height, int(rng.integers(3, 8)),
                     self.cam_x[0] + smooth_path(rng, frames, 0.6 * self.width, (0.05, 0.12)),
                     self.cam_y[0] + smooth_path(rng, frames, 0.5 * self.height, (0.05, 0.12)),
                     rng.uniform(0, 6.3) + rng.uniform(-0.2, 0.2) * np.arange(frames))

    def make_occluder(self, rng: np.random.Generator, frames: int) -> Occluder:
        width = int(rng.uniform(0.12, 0.22) * self.width)
        texture = make_background(rng, self.height, self.width, clutter=3)
        start, end = (-width, self.width) if rng.random() < 0.5 else (self.width, -width)
        return Occluder(texture, width, np.linspace(start, end, frames), rng.uniform(-0.3, 0.3))

    def camera(self, t: int) -> np.ndarray:
        """World -> frame pixels."""
        centre = translate(self.width / 2, self.height / 2)
        return centre @ affine(self.cam_zoom[t]) @ translate(-self.cam_x[t], -self.cam_y[t])

    def render(self, t: int) -> tuple[np.ndarray, FrameTruth]:
        cam = self.camera(t)
        frame = warp(self.canvas, cam, self.width, self.height, cv2.BORDER_REFLECT).astype(np.float32)
        for mover in self.movers:
            self.draw_mover(frame, mover, t, cam)
        masks = []
        for track in self.tracks:
            texture, mask = track.patch(t)
            to_frame = cam @ track.to_world(t)
            alpha = warp(mask, to_frame, self.width, self.height)[..., None]
            frame = frame * (1 - alpha) + warp(texture, to_frame, self.width, self.height).astype(np.float32) * alpha
            masks.append(alpha[..., 0])
        occlusion = self.draw_occluder(frame, t)
        frame = frame * self.light[t] + self.noise_rng.normal(0, 3, frame.shape)
        image = np.clip(frame, 0, 255).astype(np.uint8)
        return image, self.truth(t, masks, occlusion)

    def draw_mover(self, frame: np.ndarray, mover: Mover, t: int, cam: np.ndarray) -> None:
        centre = cam @ np.array([mover.x[t], mover.y[t], 1.0])
        radius = mover.radius * self.cam_zoom[t]
        angles = mover.angle[t] + np.arange(mover.sides) * 2 * math.pi / mover.sides
        pts = np.stack([centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)], axis=1)
        fill_shape(frame, [pts], mover.colour)

    def draw_occluder(self, frame: np.ndarray, t: int) -> np.ndarray | None:
        if self.occluder is None:
            return None
        occ = self.occluder
        mask = np.zeros((self.height, self.width), np.float32)
        x0 = occ.x[t]
        top, bottom = x0 + occ.tilt * self.height, x0
        pts = np.array([[top, 0], [top + occ.width, 0], [bottom + occ.width, self.height], [bottom, self.height]])
        fill_shape(mask, [pts], 1.0)
        frame *= 1 - mask[..., None]
        frame += occ.texture.astype(np.float32) * mask[..., None]
        return mask

    def truth(self, t: int, masks: list[np.ndarray], occlusion: np.ndarray | None) -> FrameTruth:
        truth = FrameTruth(occluded=occlusion is not None and bool((occlusion > 0.5).any()))
        min_pixels = max(12, MIN_VISIBLE_FRACTION * self.width * self.height)
        for i, alpha in enumerate(masks):
            visible = alpha > 0.5
            if occlusion is not None:
                visible &= occlusion < 0.5
            if visible.sum() < min_pixels:
                continue
            ys, xs = np.nonzero(visible)
            box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
            truth.boxes.append(box)
            truth.clipped |= box[0] == 0 or box[1] == 0 or box[2] == self.width or box[3] == self.height
            if i == 0:
                part = self.part_area(t)
                truth.part_fraction = min(1.0, part / float(visible.sum()))
        return truth

    def part_area(self, t: int) -> float:
        track = self.tracks[0]
        zoom = self.cam_zoom[t] * track.scale[t]
        radius = track.part_radius * zoom
        return math.pi * radius * radius


# --------------------------------------------------------------------------- the dataset


@dataclass
class SynthSummary:
    root: Path
    classes: list[str]
    frames: dict[str, int]
    shots: dict[str, int]
    listed: dict[str, int]
    boxes: int
    mean_box_area_fraction: float
    mean_part_fraction: float
    clipped_fraction: float
    occluded_fraction: float

    def lines(self) -> list[str]:
        frames = ", ".join(f"{s} {n}" for s, n in self.frames.items())
        shots = ", ".join(f"{s} {n}" for s, n in self.shots.items())
        listed = ", ".join(f"{s} {n}" for s, n in self.listed.items())
        return [
            f"dataset: {self.root}",
            f"classes ({len(self.classes)}): {', '.join(self.classes)}",
            f"frames on disk: {frames}",
            f"shots: {shots}",
            f"listed eval frames: {listed}; boxes {self.boxes}",
            f"mean box area: {100 * self.mean_box_area_fraction:.1f}% of the frame",
            f"class-specific part: {100 * self.mean_part_fraction:.1f}% of the visible object (mean)",
            f"eval frames with an object cut by the border: {100 * self.clipped_fraction:.1f}%, "
            f"with an occluder in view: {100 * self.occluded_fraction:.1f}%",
        ]


def video_plan(cfg: SynthConfig) -> list[tuple[str, int, int]]:
    """(split, class index, video number) for every video; numbers are unique per class."""
    plan = []
    for class_idx in range(cfg.classes):
        number = 1
        for split, count in (("train", cfg.videos), ("val", cfg.val_videos), ("test", cfg.test_videos)):
            for _ in range(count):
                plan.append((split, class_idx, number))
                number += 1
    return plan


def shot_id(class_name: str, video: int, shot: int) -> str:
    return f"{class_name}/data/{video:04d}/shots/{shot:03d}"


@dataclass
class Tally:
    box_areas: list[float] = field(default_factory=list)
    part_fractions: list[float] = field(default_factory=list)
    clipped: int = 0
    occluded: int = 0
    listed: int = 0


@lru_cache(maxsize=64)
def scene(seed: int, clutter: int, number: int, height: int, width: int) -> np.ndarray:
    """Background `number` of the pool every class draws its shots from, so that the
    scenery says nothing about the class (no shortcut around the object)."""
    rng = np.random.default_rng([seed, 1_000_003, number])
    return make_background(rng, height, width, clutter)


def render_video(cfg: SynthConfig, root: Path, split: str, class_idx: int, video: int,
                 meta: SplitMetadata, tally: Tally) -> int:
    """Write one video's shots; list its shots (train) or eval frames (val/test). Returns frames written."""
    rng = np.random.default_rng([cfg.seed, class_idx, video])
    name = class_names(cfg.classes)[class_idx]
    height = cfg.size
    width = int(round(cfg.size * cfg.aspect / 2)) * 2
    objects = 2 if rng.random() < cfg.second_object_prob else 1
    written = 0
    for shot in range(1, cfg.shots + 1):
        sid = shot_id(name, video, shot)
        folder = root / sid
        folder.mkdir(parents=True, exist_ok=True)
        canvas = scene(cfg.seed, cfg.distractors * 4, int(rng.integers(cfg.backgrounds)), 2 * height, 2 * width)
        renderer = ShotRenderer(rng, cfg, class_idx, objects, canvas)
        if split == "train":
            meta.ids.append(sid)
            meta.labels[sid] = class_idx
        for t in range(cfg.frames):
            image, truth = renderer.render(t)
            frame_name = f"frame{t + 1:04d}.jpg"
            cv2.imwrite(str(folder / frame_name), image, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
            written += 1
            if split != "train" and t % cfg.eval_stride == 0 and truth.boxes:
                list_eval_frame(meta, f"{sid}/{frame_name}", class_idx, (width, height), truth, tally)
    return written


def list_eval_frame(meta: SplitMetadata, frame_id: str, label: int, size: tuple[int, int],
                    truth: FrameTruth, tally: Tally) -> None:
    meta.ids.append(frame_id)
    meta.labels[frame_id] = label
    meta.sizes[frame_id] = size
    meta.boxes[frame_id] = truth.boxes
    area = size[0] * size[1]
    tally.box_areas.extend((x1 - x0) * (y1 - y0) / area for x0, y0, x1, y1 in truth.boxes)
    tally.part_fractions.append(truth.part_fraction)
    tally.clipped += truth.clipped
    tally.occluded += truth.occluded
    tally.listed += 1


def generate(cfg: SynthConfig, out: str | Path, progress: Callable[[int], None] | None = None) -> SynthSummary:
    """Write the dataset under `out` (frames) and `out/metadata` (split files). Returns its figures."""
    root = Path(out)
    names = class_names(cfg.classes)
    splits = {s: SplitMetadata(s) for s in ("train", "val", "test")}
    frames = dict.fromkeys(splits, 0)
    shots = dict.fromkeys(splits, 0)
    tally = Tally()
    for split, class_idx, video in video_plan(cfg):
        frames[split] += render_video(cfg, root, split, class_idx, video, splits[split], tally)
        shots[split] += cfg.shots
        if progress:
            progress(1)
    write_metadata(DatasetMetadata(root / "metadata", {n: i for i, n in enumerate(names)}, splits))
    listed = {s: len(splits[s].ids) for s in ("val", "test")}
    return SynthSummary(
        root=root,
        classes=names,
        frames=frames,
        shots=shots,
        listed=listed,
        boxes=len(tally.box_areas),
        mean_box_area_fraction=float(np.mean(tally.box_areas)) if tally.box_areas else 0.0,
        mean_part_fraction=float(np.mean(tally.part_fractions)) if tally.part_fractions else 0.0,
        clipped_fraction=tally.clipped / max(1, tally.listed),
        occluded_fraction=tally.occluded / max(1, tally.listed),
    )


def write_preview(root: str | Path, path: str | Path, columns: int = 6, scale: int = 2) -> Path:
    """A PNG of what the data looks like: one row of consecutive train frames per class
    (the part moving over the body), then test frames with their boxes."""
    from .. import viz
    from .layout import read_metadata

    root = Path(root)
    meta = read_metadata(root / "metadata", ("train", "test"))
    tiles, captions = [], []
    for name in meta.class_names:
        shot = next(s for s in meta.splits["train"].ids if s.startswith(f"{name}/"))
        frames = sorted((root / shot).glob("frame*.jpg"))[:columns]
        tiles += [cv2.imread(str(f)) for f in frames]
        captions += [f"{name} t={i}" for i in range(len(frames))]
        tiles += [np.full_like(tiles[-1], 255)] * (columns - len(frames))
        captions += [""] * (columns - len(frames))
    test = meta.splits["test"]
    step = max(1, len(test.ids) // (2 * columns))
    for frame_id in test.ids[::step][: 2 * columns]:
        tiles.append(viz.draw_boxes(cv2.imread(str(root / frame_id)), test.boxes[frame_id]))
        captions.append(f"test: {frame_id.split('/')[0]}")
    height, width = tiles[0].shape[:2]
    page = viz.grid(tiles, columns, cell=(width * scale, height * scale), captions=captions)
    return viz.write_png(path, page)
