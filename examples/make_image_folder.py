"""Write an image-folder dataset of synthetic shapes: `python examples/make_image_folder.py DATA_ROOT/shapes`.
One sub-folder per class (circle, square, triangle), 200 PNG images of 16×16 each, a shape of random size,
place and colour on a noisy background."""

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE, PER_CLASS = 16, 200


def draw(shape: str, rng: np.random.Generator) -> Image.Image:
    background = rng.integers(0, 60, size=(SIZE, SIZE, 3), dtype=np.uint8)
    image = Image.fromarray(background)
    r = int(rng.integers(3, 7))
    cx, cy = (int(c) for c in rng.integers(r, SIZE - r, size=2))
    colour = tuple(int(c) for c in rng.integers(120, 256, size=3))
    pen = ImageDraw.Draw(image)
    if shape == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "square":
        pen.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return image


def main(folder: Path) -> None:
    rng = np.random.default_rng(0)
    for shape in ("circle", "square", "triangle"):
        (folder / shape).mkdir(parents=True, exist_ok=True)
        for i in range(PER_CLASS):
            draw(shape, rng).save(folder / shape / f"{i:03d}.png")
    print(f"{3 * PER_CLASS} images in {folder}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
