"""Synthetic videos of moving coloured shapes: the class is the motion direction, so no single frame tells it.

Each video has 1-2 shapes (square, disc or triangle, random colours and sizes) on a noisy background of random
colour, all moving with the same velocity and wrapping around the frame edges (positions are uniform in every
frame, so a frame carries no information about the direction). Written as real mp4 files through PyAV and listed
in ``train.csv`` / ``val.csv`` / ``test.csv`` (``path,label``), they go through the same data pipeline as real
datasets.

    AXES      = right, left, down, up                    (the demo's downstream task)
    DIAGONALS = down-right, down-left, up-right, up-left (the demo's pre-training task)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

AXES: tuple[tuple[int, int], ...] = ((1, 0), (-1, 0), (0, 1), (0, -1))
DIAGONALS: tuple[tuple[int, int], ...] = ((1, 1), (-1, 1), (1, -1), (-1, -1))
SHAPES = ("square", "disc", "triangle")


def _shape_mask(kind: str, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    if kind == "square":
        return (np.abs(dx) <= radius) & (np.abs(dy) <= radius)
    if kind == "disc":
        return dx**2 + dy**2 <= radius**2
    return (dy <= radius) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) / 2)  # triangle pointing up


def moving_shapes(direction: tuple[int, int], rng: np.random.Generator, *, frames: int = 16,
                  size: int | tuple[int, int] = 32, speed: float = 1.5) -> np.ndarray:
    """``(frames, H, W, 3)`` uint8 video (``size`` = side or ``(H, W)``) whose shapes move by about
    ``speed * direction`` pixels per frame, wrapping around the edges."""
    height, width = (size, size) if isinstance(size, int) else size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    background = rng.uniform(0, 90, size=3)
    noise = rng.normal(0, 6, size=(frames, height, width, 3))
    video = np.broadcast_to(background, (frames, height, width, 3)) + noise
    speed_px = speed * rng.uniform(0.8, 1.25)
    for _ in range(int(rng.integers(1, 3))):
        kind = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = rng.uniform(120, 255, size=3)
        radius = float(rng.uniform(0.1, 0.2) * min(height, width))
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        for t in range(frames):
            cx = x0 + t * speed_px * direction[0]
            cy = y0 + t * speed_px * direction[1]
            dx = (xx - cx + width / 2) % width - width / 2  # wrap-around distance
            dy = (yy - cy + height / 2) % height - height / 2
            video[t][_shape_mask(kind, dx, dy, radius)] = colour
    return np.clip(video, 0, 255).astype(np.uint8)


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 8) -> Path:
    """Encode ``(T, H, W, 3)`` uint8 RGB frames as an H.264 mp4 (MPEG-4 part 2 if libx264 is missing)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _, height, width, _ = frames.shape
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "12", "preset": "veryfast"} if codec == "libx264" else {"qscale": "2"}
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_dataset(root: str | Path, directions: Sequence[tuple[int, int]] = AXES,
                  per_class: dict[str, int] | None = None, *, frames: int = 16,
                  size: int | tuple[int, int] = 32, seed: int = 0) -> dict[str, Path]:
    """Write ``per_class[split]`` videos per direction and split under ``root/videos`` and one list file per split
    (paths relative to ``root``). Returns ``{split: list path}``."""
    root = Path(root)
    per_class = per_class or {"train": 24, "val": 8, "test": 8}
    lists: dict[str, Path] = {}
    for split_id, (split, count) in enumerate(per_class.items()):
        rng = np.random.default_rng([seed, split_id])
        lines = []
        for i in range(count):
            for label, direction in enumerate(directions):
                name = f"videos/{split}/{label}_{i:04d}.mp4"
                write_mp4(root / name, moving_shapes(direction, rng, frames=frames, size=size))
                lines.append(f"{name},{label}")
        lists[split] = root / f"{split}.csv"
        lists[split].write_text("\n".join(lines) + "\n")
    return lists


def clips_tensor(directions: Sequence[tuple[int, int]], count: int, rng: np.random.Generator, *, frames: int = 8,
                 size: int | tuple[int, int] = 32, speed: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """In-memory ``(count, T, H, W, 3)`` uint8 clips with uniformly drawn directions, and their labels."""
    labels = rng.integers(len(directions), size=count)
    clips = np.stack([moving_shapes(directions[int(k)], rng, frames=frames, size=size, speed=speed) for k in labels])
    return clips, labels
