"""A synthetic stand-in for `cifar-100-python.tar.gz`, in exactly the official layout.

The archive holds `cifar-100-python/{train,test,meta}`: pickles written as the original Python 2
`cPickle` files are (protocol 2, byte-string keys and values, numpy arrays reconstructed through
`numpy.core.multiarray._reconstruct`), so `pickle.load(f, encoding="bytes")` gives
`{b"data": uint8 [N, 3072], b"fine_labels": [int], b"coarse_labels": [int], b"filenames": [bytes],
b"batch_label": bytes}` and the meta file gives the 100 real fine and 20 real coarse label names.

Images are drawn, not photographed: every coarse class is a family of objects (body shape, wheels,
frame, head, petals, background tint) and its five fine classes differ in size, colour, texture
and parts. Each image has jitter, a noisy background, clutter and a random difficulty that adds
noise, lowers contrast, occludes the object and morphs it towards a sibling class, so a good model
gets high but not perfect accuracy and some predictions are unsure. Everything follows from the
seed; the class prototypes are fixed (they define the dataset, not the sample).
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import multiprocessing
import os
import pickle
import struct
import tarfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from scones.etl.archive import ARCHIVE_FOLDER, ARCHIVE_NAME, file_md5

COARSE_TO_FINE: dict[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
COARSE_LABEL_NAMES: list[str] = sorted(COARSE_TO_FINE)
FINE_LABEL_NAMES: list[str] = sorted(name for names in COARSE_TO_FINE.values() for name in names)
FINE_TO_COARSE: dict[int, int] = {
    FINE_LABEL_NAMES.index(fine): COARSE_LABEL_NAMES.index(coarse)
    for coarse, names in COARSE_TO_FINE.items()
    for fine in names
}

GENERATOR_VERSION = 1
DEFAULT_ROWS_TRAIN = 50_000
DEFAULT_ROWS_TEST = 10_000
SIZE = 32

# Per-class drawing parameters. Sizes are half-extents in pixels, angles in radians, hue in turns.
_FIELDS = [
    *("k_rect", "bw", "bh", "rot", "petal_n", "petal_amp"),  # body
    *("wheels", "wr", "wt", "sep", "wy", "frame", "ft", "fh", "head", "hr", "hx", "hy"),  # parts
    *("hue", "hue_spread", "sat", "val", "tex_amp", "tex_freq", "tex_angle", "checker"),  # look
    *("bg_hue", "bg_tint"),  # background
]
_F = {name: i for i, name in enumerate(_FIELDS)}

# One row per coarse class (alphabetical): the family's structure and look.
_FAMILIES: dict[str, dict[str, float]] = {
    "aquatic_mammals": dict(bw=10, bh=4.5, head=1, hr=3, hx=9, hy=-2, hue=0.08, bg_hue=0.58),
    "fish": dict(bw=9, bh=5, petal_n=2, petal_amp=0.25, hue=0.1, sat=0.8, bg_hue=0.55),
    "flowers": dict(bw=8, bh=8, petal_n=5, petal_amp=0.35, hue=0.95, sat=0.8, bg_hue=0.3),
    "food_containers": dict(k_rect=0.5, bw=6, bh=8, hue=0.6, sat=0.3, val=0.8, tex_amp=0.3),
    "fruit_and_vegetables": dict(bw=7.5, bh=7.5, hue=0.02, sat=0.85, tex_amp=0.1),
    "household_electrical_devices": dict(k_rect=1, bw=9, bh=7, hue=0.6, sat=0.2, tex_amp=0.4),
    "household_furniture": dict(k_rect=1, bw=11, bh=6, hue=0.07, sat=0.6, val=0.6, tex_amp=0.3),
    "insects": dict(bw=6, bh=4, petal_n=4, petal_amp=0.3, head=1, hr=2.5, hx=7, hue=0.15),
    "large_carnivores": dict(k_rect=0.2, bw=10, bh=6, head=1, hr=4, hx=9, hy=-4, hue=0.09),
    "large_man-made_outdoor_things": dict(k_rect=1, bw=8, bh=11, hue=0.05, sat=0.3, bg_hue=0.6),
    "large_natural_outdoor_scenes": dict(k_rect=0.8, bw=15, bh=7, hue=0.35, bg_hue=0.6),
    "large_omnivores_and_herbivores": dict(bw=11, bh=7, head=1, hr=4, hx=10, hy=-5, hue=0.1),
    "medium_mammals": dict(bw=8, bh=5, head=1, hr=3.5, hx=8, hy=-3, hue=0.07, tex_amp=0.3),
    "non-insect_invertebrates": dict(bw=7, bh=5, petal_n=6, petal_amp=0.3, hue=0.0),
    "people": dict(k_rect=0.6, bw=5, bh=9, head=1, hr=4, hx=0, hy=-12, hue=0.05, sat=0.4),
    "reptiles": dict(bw=13, bh=3.5, head=1, hr=3, hx=13, hy=0, hue=0.28, tex_amp=0.4),
    "small_mammals": dict(bw=6, bh=5, head=1, hr=3, hx=6, hy=-3, hue=0.08, sat=0.4),
    "trees": dict(bw=9, bh=10, petal_n=7, petal_amp=0.15, frame=1, ft=3, fh=0, hue=0.3),
    "vehicles_1": dict(k_rect=1, bw=12, bh=6, wheels=1, wr=3.5, wt=2, sep=16, wy=6, hue_spread=1),
    "vehicles_2": dict(k_rect=1, bw=10, bh=5, wheels=1, wr=4, wt=3, sep=14, wy=5, hue=0.3),
}
_DEFAULTS = dict(
    k_rect=0.0,
    bw=8,
    bh=6,
    hue=0.5,
    rot=0.0,
    petal_n=0,
    petal_amp=0.0,
    wheels=0,
    wr=4,
    wt=2,
    sep=14,
    wy=6,
    frame=0,
    ft=1.5,
    fh=8,
    head=0,
    hr=3,
    hx=0,
    hy=0,
    hue_spread=0.04,
    sat=0.65,
    val=0.85,
    tex_amp=0.0,
    tex_freq=0.2,
    tex_angle=0.0,
    checker=0,
    bg_hue=-1,
    bg_tint=0.0,
)
# The original Scones Unlimited pair, drawn by hand: both two-wheelers in any colour, told apart
# by wheel and frame weight and by the motor block between the wheels.
_HAND_DRAWN: dict[str, dict[str, float]] = {
    "bicycle": dict(
        k_rect=0, bw=2.5, bh=1.2, wr=6, wt=1.3, sep=17, wy=5, frame=1, ft=1.2, fh=6, tex_amp=0
    ),
    "motorcycle": dict(
        k_rect=0.3, bw=6.5, bh=3.2, wr=5.2, wt=2.6, sep=15, wy=4.5, frame=1, ft=1.8, fh=4, tex_amp=0
    ),
    "bus": dict(bw=14, bh=8, wr=3, sep=18, wy=8, tex_amp=0.5, tex_freq=0.25, tex_angle=1.57),
    "pickup_truck": dict(bw=12, bh=5, wr=3.8, sep=15, wy=5, tex_amp=0.15),
    "train": dict(bw=15, bh=6, wr=2.5, wt=1.5, sep=20, wy=6.5, tex_amp=0.4, tex_freq=0.4),
}


def _class_prototypes() -> np.ndarray:
    """Drawing parameters [100, len(_FIELDS)] of every fine class (fixed, independent of seed)."""
    rng = np.random.default_rng(20_100)  # fixed: the prototypes define the dataset
    protos = np.zeros((len(FINE_LABEL_NAMES), len(_FIELDS)), dtype=np.float64)
    for coarse in COARSE_LABEL_NAMES:
        family = {**_DEFAULTS, **_FAMILIES[coarse]}
        for j, fine in enumerate(COARSE_TO_FINE[coarse]):
            p = dict(family)
            # Siblings differ in size, aspect, colour, texture and parts.
            p["bw"] *= float(np.exp(rng.uniform(-0.35, 0.35)))
            p["bh"] *= float(np.exp(rng.uniform(-0.35, 0.35)))
            p["hue"] = (p["hue"] + 0.11 * (j - 2) + rng.uniform(-0.03, 0.03)) % 1.0
            p["sat"] = float(np.clip(p["sat"] + rng.uniform(-0.25, 0.25), 0.1, 1.0))
            p["val"] = float(np.clip(p["val"] + rng.uniform(-0.2, 0.15), 0.35, 1.0))
            p["tex_amp"] = float(np.clip(p["tex_amp"] + rng.uniform(-0.1, 0.4), 0.0, 0.8))
            p["tex_freq"] = float(rng.uniform(0.12, 0.4))
            p["tex_angle"] = float(rng.uniform(0, np.pi))
            p["checker"] = float(rng.random() < 0.3)
            p["petal_n"] = max(0.0, p["petal_n"] + float(rng.integers(-1, 2))) * (p["petal_n"] > 0)
            p["head"] = p["head"] * float(rng.random() < 0.85)
            p["rot"] = float(rng.uniform(-0.3, 0.3))
            p["bg_tint"] = 0.5 if p["bg_hue"] >= 0 else 0.0
            p.update(_HAND_DRAWN.get(fine, {}))
            protos[FINE_LABEL_NAMES.index(fine)] = [p[name] for name in _FIELDS]
    return protos


def _nearest_siblings(protos: np.ndarray) -> np.ndarray:
    """For every fine class, its siblings (same coarse class) ordered by prototype distance."""
    scale = protos.std(axis=0) + 1e-6
    siblings = np.zeros((len(protos), 4), dtype=np.int64)
    for fine in range(len(protos)):
        same = [
            f for f in range(len(protos)) if f != fine and FINE_TO_COARSE[f] == FINE_TO_COARSE[fine]
        ]
        dist = [float(np.abs((protos[f] - protos[fine]) / scale).sum()) for f in same]
        siblings[fine] = [same[i] for i in np.argsort(dist)]
    return siblings


@functools.cache
def _class_table() -> tuple[np.ndarray, np.ndarray]:
    """Prototypes and nearest siblings, computed once per process."""
    protos = _class_prototypes()
    return protos, _nearest_siblings(protos)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB; inputs of one shape, output with a trailing axis of 3."""
    h6 = (h % 1.0) * 6.0
    c = v * s
    x = c * (1 - np.abs(h6 % 2 - 1))
    zero = np.zeros_like(h6)
    sector = np.floor(h6).astype(np.int64) % 6
    choices = [
        np.stack(rgb, axis=-1)
        for rgb in (
            (c, x, zero),
            (x, c, zero),
            (zero, c, x),
            (zero, x, c),
            (x, zero, c),
            (c, zero, x),
        )
    ]
    rgb = np.select([(sector == i)[..., None] for i in range(6)], choices)
    return rgb + (v - c)[..., None]


def _segment_distance(x, y, ax, ay, bx, by):  # type: ignore[no-untyped-def]
    """Distance from grid points to the segments a-b (all arrays broadcastable)."""
    dx, dy = bx - ax, by - ay
    t = np.clip(((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy + 1e-6), 0, 1)
    return np.hypot(x - ax - t * dx, y - ay - t * dy)


def _coverage(signed_distance: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a shape from its signed distance in pixels."""
    return np.clip(0.5 - signed_distance, 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Low-frequency noise [n, 32, 32]: a random grid of cells x cells, bilinearly upsampled."""
    grid = rng.standard_normal((n, cells, cells))
    pos = np.linspace(0, cells - 1, SIZE)
    lo = np.floor(pos).astype(int).clip(0, cells - 2)
    frac = pos - lo
    interp = np.zeros((SIZE, cells))
    interp[np.arange(SIZE), lo] = 1 - frac
    interp[np.arange(SIZE), lo + 1] = frac
    return interp @ grid @ interp.T


def _colour(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Per-image colours [n, 3, 1, 1] from HSV arrays [n, 1, 1]."""
    return _hsv_to_rgb(h, s, v).astype(np.float32).transpose(0, 3, 1, 2)


def _paint(canvas: np.ndarray, alpha: np.ndarray, rgb: np.ndarray) -> None:
    """Composite a colour layer over the canvas [n, 3, 32, 32] in place."""
    canvas += alpha[:, None] * (rgb - canvas)


def _render(rng: np.random.Generator, params: np.ndarray, difficulty: np.ndarray) -> np.ndarray:
    """Draw images [n, 3, 32, 32] uint8 from per-image parameters [n, len(_FIELDS)]."""
    n = len(params)
    f32 = np.float32

    def col(name: str) -> np.ndarray:
        return params[:, _F[name]].astype(f32)[:, None, None]

    def uniform(low: float, high: float) -> np.ndarray:
        return rng.uniform(low, high, (n, 1, 1)).astype(f32)

    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(f32) + f32(0.5)
    x, y = xx[None], yy[None]
    d = difficulty.astype(f32)[:, None, None]

    # Background: a two-colour gradient, often tinted by the family, with smooth noise.
    tinted = (col("bg_tint") > 0) & (rng.random((n, 1, 1)) < 0.7)
    bg_hue = np.where(tinted, col("bg_hue"), uniform(0, 1)) + rng.normal(0, 0.04, (n, 1, 1))
    c1 = _colour(bg_hue, uniform(0.05, 0.6), uniform(0.3, 1.0))
    c2 = _colour(uniform(0, 1), uniform(0, 0.5), uniform(0.2, 1.0))
    angle = uniform(0, 2 * np.pi)
    ramp = ((x - 16) * np.cos(angle) + (y - 16) * np.sin(angle)) / 32 + f32(0.5)
    canvas = c1 + ramp[:, None] * (c2 - c1)
    canvas += (0.12 * _smooth_noise(rng, n, 5)).astype(f32)[:, None] * uniform(0.3, 1.5)[:, None]

    # Clutter: a few small blobs unrelated to the class.
    for _ in range(2):
        rows = np.flatnonzero(rng.random(n) < 0.45)
        bx, by, br = uniform(0, SIZE)[rows], uniform(0, SIZE)[rows], uniform(1.5, 4.0)[rows]
        blob = _coverage(np.hypot(x - bx, y - by) - br)
        rgb = _colour(uniform(0, 1), uniform(0, 1), uniform(0.2, 1))[rows]
        canvas[rows] += blob[:, None] * (rgb - canvas[rows])

    # The object: global scale, position, rotation and mirror jitter.
    scale = np.exp(rng.normal(0, 0.1, (n, 1, 1))).astype(f32)
    cx = 16 + rng.normal(0, 1.8, (n, 1, 1)).astype(f32)
    cy = 16 + rng.normal(0, 1.8, (n, 1, 1)).astype(f32) - 0.5 * col("wheels") * col("wy") * scale
    rot = col("rot") + rng.normal(0, 0.15, (n, 1, 1)).astype(f32)
    flip = np.where(rng.random((n, 1, 1)) < 0.5, -1, 1).astype(f32)
    hue = col("hue") + col("hue_spread") * rng.normal(0, 1, (n, 1, 1)).astype(f32)
    body_rgb = _colour(hue, col("sat"), col("val") * uniform(0.8, 1.1))
    # Harder images blend the object's colour towards the background (lower contrast).
    fade = 0.45 * d[:, None]
    body_rgb = body_rgb * (1 - fade) + canvas.mean(axis=(2, 3), keepdims=True) * fade
    dark_rgb = body_rgb * f32(0.35)

    dx, dy = (x - cx) * flip, y - cy
    cos_r, sin_r = np.cos(rot), np.sin(rot)
    u = cos_r * dx + sin_r * dy
    v = cos_r * dy - sin_r * dx
    bw, bh = col("bw") * scale, col("bh") * scale
    petals = col("petal_amp") > 0
    radius = np.where(
        petals,
        1 + col("petal_amp") * np.cos(np.round(col("petal_n")) * np.arctan2(v * bw, u * bh)),
        1,
    )
    sd_ellipse = (np.hypot(u / bw, v / bh) / radius - 1) * np.minimum(bw, bh)
    sd_rect = np.maximum(np.abs(u) - bw, np.abs(v) - bh)
    body = _coverage(sd_ellipse + (sd_rect - sd_ellipse) * col("k_rect"))

    # Texture on the body: stripes or a checker pattern.
    ta = col("tex_angle") + rng.normal(0, 0.2, (n, 1, 1)).astype(f32)
    tf = f32(2 * np.pi) * col("tex_freq") * scale
    s1 = np.sin(tf * (u * np.cos(ta) + v * np.sin(ta)) + uniform(0, 2 * np.pi))
    s2 = np.sin(tf * (v * np.cos(ta) - u * np.sin(ta)))
    pattern = np.where(col("checker") > 0, np.sign(s1 * s2), s1) * f32(0.5) + f32(0.5)
    textured = body_rgb * (1 - (col("tex_amp") * pattern)[:, None])

    # Wheels and frame, relative to the body centre (unrotated: wheels stay on the ground).
    sep, wr, wy = col("sep") * scale / 2, col("wr") * scale, col("wy") * scale
    ground = cy + wy
    wheels, frame, head = np.zeros((3, n, SIZE, SIZE), dtype=f32)
    # Parts are drawn only on the images that have them (most classes have none).
    if len(r := np.flatnonzero(col("wheels") > 0)):
        wheel_sd = (
            np.minimum(
                np.abs(np.hypot(x - (cx[r] - sep[r]), y - ground[r]) - wr[r]),
                np.abs(np.hypot(x - (cx[r] + sep[r]), y - ground[r]) - wr[r]),
            )
            - (col("wt") * scale / 2)[r]
        )
        wheels[r] = _coverage(wheel_sd) * np.clip(col("wheels")[r], 0, 1)
    if len(r := np.flatnonzero(col("frame") > 0)):
        left, right, top_y = cx[r] - sep[r], cx[r] + sep[r], (ground - col("fh") * scale)[r]
        frame_d = np.minimum.reduce(
            [
                _segment_distance(x, y, left, ground[r], cx[r], top_y),
                _segment_distance(x, y, right, ground[r], cx[r], top_y),
                _segment_distance(x, y, left, ground[r], right, ground[r] - 1.5 * scale[r]),
            ]
        )
        frame[r] = _coverage(frame_d - (col("ft") * scale / 2)[r]) * np.clip(col("frame")[r], 0, 1)
    if len(r := np.flatnonzero(col("head") > 0)):
        hx, hy = (cx + flip * col("hx") * scale)[r], (cy + col("hy") * scale)[r]
        head_sd = np.hypot(x - hx, y - hy) - (col("hr") * scale)[r]
        head[r] = _coverage(head_sd) * np.clip(col("head")[r], 0, 1)

    _paint(canvas, frame, body_rgb)
    _paint(canvas, body, textured)
    _paint(canvas, wheels, dark_rgb)
    _paint(canvas, head, body_rgb)

    # Harder images get an occluder and more sensor noise.
    r = np.flatnonzero(rng.random(n) < 0.6 * difficulty)
    ox, oy, ow, oh = uniform(4, 28)[r], uniform(4, 28)[r], uniform(2, 7)[r], uniform(2, 7)[r]
    occluder = _coverage(np.maximum(np.abs(x - ox) - ow, np.abs(y - oy) - oh))
    rgb = _colour(uniform(0, 1), uniform(0, 1), uniform(0, 1))[r]
    canvas[r] += occluder[:, None] * (rgb - canvas[r])
    sigma = (f32(0.025) + f32(0.1) * d)[:, None] * f32(255)
    noise = (rng.random(canvas.shape, dtype=f32) - f32(0.5)) * f32(3.4641)  # unit variance
    canvas = canvas * f32(255) + noise * sigma
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)  # [n, 3, 32, 32], CIFAR's layout


def _sample_params(
    rng: np.random.Generator, labels: np.ndarray, protos: np.ndarray, siblings: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image parameters (prototype + jitter, morphed towards a sibling) and difficulties."""
    n = len(labels)
    difficulty = rng.beta(1.25, 4.5, n)
    # Mostly the nearest sibling, sometimes any other one of the family.
    rank = np.where(rng.random(n) < 0.7, 0, rng.integers(0, 4, n))
    sibling = siblings[labels, rank]
    morph = np.clip(difficulty * 0.75 + rng.normal(0, 0.04, n), 0, 0.95)[:, None]
    params = protos[labels] * (1 - morph) + protos[sibling] * morph
    for name, spread in (("bw", 0.1), ("bh", 0.1), ("wr", 0.08), ("tex_freq", 0.1)):
        params[:, _F[name]] *= np.exp(rng.normal(0, spread, n))
    return params, difficulty


def _render_class(seed: int, split_id: int, fine_label: int, count: int) -> np.ndarray:
    """The images [count, 3072] of one class in one split, from that class's own RNG stream.

    One stream per (seed, split, class) makes any class's images independent of the others, so a
    subset of classes can be generated alone with exactly the pixels of the full archive.
    """
    rng = np.random.default_rng([seed, split_id, fine_label])
    protos, siblings = _class_table()
    labels = np.full(count, fine_label)
    params, difficulty = _sample_params(rng, labels, protos, siblings)
    return _render(rng, params, difficulty).reshape(count, -1)


def generate_split(
    seed: int,
    split: str,
    rows: int,
    only_classes: Sequence[str] | None = None,
    workers: int | None = None,
) -> dict[bytes, Any]:
    """One split as the official pickle holds it: data, fine/coarse labels, filenames.

    With only_classes, just the rows of those classes (same pixels and names as in the full split).
    """
    split_id = {"train": 0, "test": 1}[split]
    rng = np.random.default_rng([seed, split_id])
    labels = rng.permutation(np.arange(rows) % len(FINE_LABEL_NAMES))
    numbers = rng.choice(1_000_000, size=rows, replace=False)
    if only_classes is not None:
        keep = np.isin(labels, [FINE_LABEL_NAMES.index(name) for name in only_classes])
        labels, numbers = labels[keep], numbers[keep]
    present = np.unique(labels)
    counts = [int((labels == label).sum()) for label in present]
    jobs = [
        (seed, split_id, int(label), count) for label, count in zip(present, counts, strict=True)
    ]
    workers = min(workers or os.cpu_count() or 1, len(jobs), 1 + sum(counts) // 5000)
    if workers > 1:
        # spawn, not fork: the caller may hold threads (torch, boto3) that fork would copy broken.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            images = list(pool.map(_render_class, *zip(*jobs, strict=True)))
    else:
        images = [_render_class(*job) for job in jobs]
    data = np.empty((len(labels), 3 * SIZE * SIZE), dtype=np.uint8)
    for label, block in zip(present, images, strict=True):
        data[labels == label] = block
    filenames = [
        f"{FINE_LABEL_NAMES[label]}_s_{number:06d}.png".encode()
        for label, number in zip(labels, numbers, strict=True)
    ]
    batch_label = b"training batch 1 of 1" if split == "train" else b"testing batch 1 of 1"
    return {
        b"filenames": filenames,
        b"batch_label": batch_label,
        b"fine_labels": [int(v) for v in labels],
        b"coarse_labels": [FINE_TO_COARSE[int(v)] for v in labels],
        b"data": data,
    }


class _Python2Pickler(pickle._Pickler):  # type: ignore[name-defined,misc]
    """Writes protocol-2 pickles as Python 2's cPickle did: bytes as byte strings, numpy.core."""

    write: Callable[[bytes], Any]
    memoize: Callable[[Any], None]
    dispatch: ClassVar[dict[type, Callable[..., None]]] = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]))
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)))
        self.write(obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = getattr(obj, "__module__", "")
        qualname = name or obj.__qualname__
        if module.startswith("numpy._core"):
            module = "numpy.core" + module.removeprefix("numpy._core")
        self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode())
        self.memoize(obj)


def _py2_pickle(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def write_archive(
    path: Path,
    seed: int = 0,
    rows_train: int = DEFAULT_ROWS_TRAIN,
    rows_test: int = DEFAULT_ROWS_TEST,
    only_classes: Sequence[str] | None = None,
) -> str:
    """Write a synthetic `cifar-100-python.tar.gz` at path; returns its MD5 (also in `<path>.md5`).

    only_classes keeps just those classes' rows of the full archive (fast test fixtures).
    """
    meta = {
        b"fine_label_names": [name.encode() for name in FINE_LABEL_NAMES],
        b"coarse_label_names": [name.encode() for name in COARSE_LABEL_NAMES],
    }
    members = {
        "train": _py2_pickle(generate_split(seed, "train", rows_train, only_classes)),
        "test": _py2_pickle(generate_split(seed, "test", rows_test, only_classes)),
        "meta": _py2_pickle(meta),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    # Fixed mtimes and a fixed gzip header keep the archive (and its MD5) a function of the seed.
    with (
        open(partial, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as packed,
        tarfile.open(fileobj=packed, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        folder = tarfile.TarInfo(ARCHIVE_FOLDER)
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        for name, payload in members.items():
            info = tarfile.TarInfo(f"{ARCHIVE_FOLDER}/{name}")
            info.size, info.mode = len(payload), 0o644
            tar.addfile(info, io.BytesIO(payload))
    digest = file_md5(partial)
    partial.replace(path)
    md5_path(path).write_text(digest + "\n")
    params = archive_params(seed, rows_train, rows_test, only_classes)
    params_path(path).write_text(json.dumps(params) + "\n")
    return digest


def archive_params(
    seed: int, rows_train: int, rows_test: int, only_classes: Sequence[str] | None = None
) -> dict[str, Any]:
    """What a synthetic archive is a function of (recorded beside it for caching)."""
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "rows_train": rows_train,
        "rows_test": rows_test,
        "only_classes": list(only_classes) if only_classes is not None else None,
    }


def md5_path(archive: Path) -> Path:
    """Where the archive's own MD5 is recorded."""
    return archive.with_name(archive.name + ".md5")


def params_path(archive: Path) -> Path:
    """Where the archive's generator parameters are recorded."""
    return archive.with_name(archive.name + ".params.json")


def ensure_archive(work_dir: Path, seed: int, rows_train: int, rows_test: int) -> tuple[Path, str]:
    """The synthetic archive in work_dir and its MD5, regenerated only when missing or stale."""
    path = work_dir / ARCHIVE_NAME
    wanted = archive_params(seed, rows_train, rows_test)
    if path.exists() and md5_path(path).exists() and params_path(path).exists():
        recorded = md5_path(path).read_text().strip()
        if json.loads(params_path(path).read_text()) == wanted and file_md5(path) == recorded:
            return path, recorded
    return path, write_archive(path, seed, rows_train, rows_test)
