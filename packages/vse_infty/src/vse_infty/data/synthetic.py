"""A small image-caption dataset generated at run time, in the raw Flickr30K layout (:mod:`vse_infty.data.layout`).

Every image shows two shapes of different colours on a noisy background, one above / below / left of / right of
the other; its five captions describe exactly that with varied templates and synonyms ("a red circle above a blue
square", "a blue square under a red circle", ...). Captions are determined by the image content (colours, shapes,
relation), so retrieval is learnable; chance level is R@K = K / n_images.

    make_synthetic_split(root, n_images=64, seed=0, image_size=64, split="train")
      -> root/precomp/train_caps.txt, root/precomp/train_ids.txt, root/id_mapping.json (merged with the other
         splits' ids), root/flickr30k-images/<id>.jpg;  then read_split(root, "f30k", "train") reads it.

:data:`VOCABULARY` lists every word a caption can use (for a tiny word-level tokenizer in tests).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vse_infty.data.layout import CAPTIONS_PER_IMAGE, IMAGE_DIRS, SPLITS

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 225), "yellow": (235, 215, 40),
    "purple": (150, 60, 190), "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("above", "below", "left", "right")
"""Where the first shape is relative to the second."""
INVERSE = {"above": "below", "below": "above", "left": "right", "right": "left"}
PHRASES: dict[str, tuple[str, ...]] = {
    "above": ("above", "over", "on top of"), "below": ("below", "under", "beneath"),
    "left": ("to the left of", "left of"), "right": ("to the right of", "right of"),
}
TEMPLATES = (
    "a {a} {rel} a {b}",
    "there is a {a} {rel} a {b}",
    "a {b} {inv} a {a}",
    "the {a} is {rel} the {b}",
    "a picture of a {b} with a {a} {rel} it",
)
VOCABULARY: tuple[str, ...] = tuple(sorted(
    {w for t in TEMPLATES for w in t.split() if not w.startswith("{")}
    | {w for p in PHRASES.values() for phrase in p for w in phrase.split()} | set(COLOURS) | set(SHAPES)))


@dataclass(frozen=True)
class Shape:
    colour: str
    kind: str
    cx: float
    cy: float
    radius: float

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"


@dataclass(frozen=True)
class Scene:
    """Two shapes; ``relation`` is where ``first`` is relative to ``second``."""

    first: Shape
    second: Shape
    relation: str
    background: tuple[int, int, int]


def sample_scene(rng: np.random.Generator) -> Scene:
    """Random colours (different), shapes, relation and geometry in unit coordinates: the centres are >= 0.3 apart
    along the relation's axis and <= 0.2 across it, radii <= 0.15, so the shapes never overlap."""
    colours = rng.choice(len(COLOURS), size=2, replace=False)
    names = list(COLOURS)
    kinds = [SHAPES[int(k)] for k in rng.integers(len(SHAPES), size=2)]
    relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
    near, far = rng.uniform(0.2, 0.35), rng.uniform(0.65, 0.8)  # along the relation's axis
    across = rng.uniform(0.3, 0.7) + rng.uniform(-0.1, 0.1, size=2)  # the relation's axis dominates
    first_main, second_main = (near, far) if relation in ("above", "left") else (far, near)
    radii = rng.uniform(0.1, 0.15, size=2)
    if relation in ("above", "below"):
        centres = [(across[0], first_main), (across[1], second_main)]
    else:
        centres = [(first_main, across[0]), (second_main, across[1])]
    shapes = [Shape(names[int(colours[i])], kinds[i], float(centres[i][0]), float(centres[i][1]), float(radii[i]))
              for i in range(2)]
    red, green, blue = (int(v) for v in rng.integers(70, 140, size=3))
    return Scene(shapes[0], shapes[1], relation, (red, green, blue))


def draw_scene(scene: Scene, size: int, rng: np.random.Generator) -> Image.Image:
    """``size`` x ``size`` RGB image of the scene on a noisy background."""
    noise = rng.normal(0.0, 8.0, size=(size, size, 3))
    pixels = np.clip(np.asarray(scene.background, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for shape in (scene.first, scene.second):
        cx, cy, r = shape.cx * size, shape.cy * size, max(shape.radius * size, 1.0)
        colour = COLOURS[shape.colour]
        if shape.kind == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        elif shape.kind == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return image


def describe_scene(scene: Scene, rng: np.random.Generator) -> list[str]:
    """Five captions (one per template, random synonyms and order) that all describe ``scene``."""
    captions = []
    for template in TEMPLATES:
        rel = PHRASES[scene.relation][int(rng.integers(len(PHRASES[scene.relation])))]
        inverse = PHRASES[INVERSE[scene.relation]]
        inv = inverse[int(rng.integers(len(inverse)))]
        captions.append(template.format(a=scene.first.name, b=scene.second.name, rel=rel, inv=inv))
    order = rng.permutation(len(captions))
    return [captions[int(i)] for i in order][:CAPTIONS_PER_IMAGE]


def _split_rng(seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), *split.encode("utf-8")])


def make_synthetic_split(root: str | Path, n_images: int, seed: int = 0, image_size: int = 64, *,
                         split: str = "train") -> Path:
    """Write ``n_images`` synthetic images + 5 captions each as split ``split`` of a raw Flickr30K-layout folder
    ``root``; ``id_mapping.json`` keeps the ids of the other splits already there. Returns ``root``."""
    if split not in SPLITS["f30k"]:
        raise ValueError(f"split={split!r}; expected one of {list(SPLITS['f30k'])} (the Flickr30K split names)")
    if n_images < 1 or image_size < 8:
        raise ValueError(f"n_images={n_images}, image_size={image_size}; expected n_images >= 1, image_size >= 8")
    root = Path(root)
    precomp, image_dir = root / "precomp", root / IMAGE_DIRS["f30k"]
    precomp.mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    mapping_path = root / "id_mapping.json"
    mapping: dict[str, str] = json.loads(mapping_path.read_text()) if mapping_path.is_file() else {}
    ids_path = precomp / f"{split}_ids.txt"
    if ids_path.is_file():  # re-generating a split replaces its ids
        for old in ids_path.read_text().split():
            mapping.pop(old, None)
    first_id = max((int(k) for k in mapping), default=-1) + 1
    rng = _split_rng(seed, split)
    captions: list[str] = []
    ids = list(range(first_id, first_id + n_images))
    for image_id in ids:
        scene = sample_scene(rng)
        name = f"synthetic_{image_id:06d}.jpg"
        draw_scene(scene, image_size, rng).save(image_dir / name, quality=95)
        mapping[str(image_id)] = name
        captions += describe_scene(scene, rng)
    (precomp / f"{split}_caps.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
    ids_path.write_text("\n".join(str(i) for i in ids) + "\n", encoding="utf-8")
    mapping_path.write_text(json.dumps(mapping), encoding="utf-8")
    return root


def make_synthetic_dataset(root: str | Path, sizes: Mapping[str, int], seed: int = 0,
                           image_size: int = 64) -> Path:
    """Several splits at once, e.g. ``{"train": 96, "dev": 32, "test": 32}``; returns ``root``."""
    for split, n_images in sizes.items():
        make_synthetic_split(root, n_images, seed, image_size, split=split)
    return Path(root)
