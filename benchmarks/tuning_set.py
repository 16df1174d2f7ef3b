"""Write a 16-image tuning folder from scikit-image's bundled photos, for tuning and timing at batch 16.

The builtin set has 8 photos, one batch of 8; a batch of 16 needs twice that. This writes the 8 builtin photos
(:data:`fedleak.client.data.BUILTIN_PHOTOS`) as centre squares and, as 8 more images, the top-left quarter of
each (a different crop of the same photo: other content and scale), with a ``labels.csv``, so the folder is a
``data.source`` like any other. A quarter crop's label is its photo's plus 500 (mod 1000): all 16 labels differ,
as in the shared evaluation sample. Two images of one label in a batch are a much harder case for label-aware
gradient matching (their last-layer rows mix), which would make this folder tune for the wrong thing; the
builtin labels are arbitrary for an untrained victim anyway. Offline (the photos ship with scikit-image) and
deterministic:

    python benchmarks/tuning_set.py /tmp/tune16
    python benchmarks/stages.py --data /tmp/tune16 --size 128 --batch 16 --limit 16 --rows none qsgd4

``--second`` writes a second folder for checking a choice made on the first: the bottom-right quarter of each
photo (label + 250) and the top-right quarter (label + 750), as centred squares:

    python benchmarks/tuning_set.py --second /tmp/tune16b

These are public photos, never the evaluation photos in ``../shared``.
"""
from __future__ import annotations

import argparse
from pathlib import Path


#: added to a photo's label for its quarter crop (mod 1000), so no two images of the folder share a label
QUARTER_LABEL_SHIFT = 500


def square(img):
    """The largest centred square of ``img`` (H, W, C)."""
    h, w = img.shape[:2]
    s = min(h, w)
    return img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]


def quarter(img):
    """The top-left quarter (half height, half width) of ``img``, as a centred square."""
    h, w = img.shape[:2]
    return square(img[:h // 2, :w // 2])


def bottom_right(img):
    """The bottom-right quarter of ``img``, as a centred square."""
    h, w = img.shape[:2]
    return square(img[h // 2:, w // 2:])


def top_right(img):
    """The top-right quarter of ``img``, as a centred square."""
    h, w = img.shape[:2]
    return square(img[:h // 2, w // 2:])


#: folder -> its two crops of each photo: (crop, file tag, label shift)
FOLDERS = {"first": ((square, "centre", 0), (quarter, "quarter", QUARTER_LABEL_SHIFT)),
           "second": ((bottom_right, "br", 250), (top_right, "tr", 750))}


def write(out: Path, folder: str = "first") -> list[tuple[str, int]]:
    """Write the folder (each photo decoded once); the rows of its ``labels.csv``: the 8 images of the first crop,
    then the 8 of the second (``first``: centre squares, then top-left quarters). Squares on disk, so
    ``resize: crop`` and ``resize: stretch`` load the same images."""
    import numpy as np
    from PIL import Image

    from fedleak.client.data import BUILTIN_PHOTOS, builtin_dir

    out.mkdir(parents=True, exist_ok=True)
    firsts, seconds = [], []
    for name, label in BUILTIN_PHOTOS:
        img = np.asarray(Image.open(builtin_dir() / name).convert("RGB"))
        for (crop, tag, shift), rows in zip(FOLDERS[folder], (firsts, seconds)):
            fname = f"{Path(name).stem}_{tag}.png"
            Image.fromarray(np.ascontiguousarray(crop(img))).save(out / fname)
            rows.append((fname, (label + shift) % 1000))
    rows = firsts + seconds
    (out / "labels.csv").write_text("file,label\n" + "".join(f"{f},{lab}\n" for f, lab in rows))
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="folder to write (created; existing files of the same names are replaced)")
    p.add_argument("--second", action="store_true", help="the second folder: bottom-right and top-right quarters")
    args = p.parse_args(argv)
    rows = write(args.out, "second" if args.second else "first")
    print(f"wrote {len(rows)} images and labels.csv to {args.out}")


if __name__ == "__main__":
    main()
