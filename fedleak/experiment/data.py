"""The client's images from a validated ``data:`` config section: the one loader used by the case and by the
report (which reloads the originals of a run folder for its page; evaluation only, never an attack)."""
from __future__ import annotations

from fedleak.client.data import ImageSet, load_images
from fedleak.client.public_data import DATASETS as PUBLIC_SOURCES, load_public
from fedleak.config.schema import DataConfig
from fedleak.errors import ConfigError


def load_data(data: DataConfig) -> ImageSet:
    """Load ``data.batch_size`` images as the section says (source, size, resize, start) and, with
    ``subject_only``, remove their background (the set then carries the masks as ``masks``). ``source: digits``
    takes the test split of :mod:`fedleak.client.public_data` (the split ``train-victim`` never trains on). Raises a one-line
    ConfigError when the source has too few images."""
    if data.source in PUBLIC_SOURCES:  # pip-installed labelled data (the test split: never trained on)
        test = load_public(data.source, "test", data.size)
        images = ImageSet(test.images[data.start:data.start + data.batch_size],
                          test.labels[data.start:data.start + data.batch_size],
                          test.names[data.start:data.start + data.batch_size])
    else:
        images = load_images(data.source, data.size, data.resize, data.start, data.batch_size)
    if images.images.shape[0] < data.batch_size:
        raise ConfigError(f"data.batch_size={data.batch_size} but only {images.images.shape[0]} images are "
                          f"available from {data.source!r} starting at {data.start}")
    if data.subject_only:
        from fedleak.client.segmentation import subject_only

        images = subject_only(images, data.segmenter, data.sam_checkpoint)
    return images
