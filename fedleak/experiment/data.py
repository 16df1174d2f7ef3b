"""The client's images from a validated ``data:`` config section: the one loader used by the case and by the
report (which reloads the originals of a run folder for its page; evaluation only, never an attack)."""
from __future__ import annotations

from fedleak.client.data import ImageSet, load_images
from fedleak.config.schema import DataConfig
from fedleak.errors import ConfigError


def load_data(data: DataConfig) -> ImageSet:
    """Load ``data.batch_size`` images as the section says (source, size, resize, start) and, with
    ``subject_only``, remove their background (the set then carries the masks as ``masks``). Raises a one-line
    ConfigError when the source has too few images."""
    images = load_images(data.source, data.size, data.resize, data.start, data.batch_size)
    if images.images.shape[0] < data.batch_size:
        raise ConfigError(f"data.batch_size={data.batch_size} but only {images.images.shape[0]} images are "
                          f"available from {data.source!r} starting at {data.start}")
    if data.subject_only:
        from fedleak.client.segmentation import subject_only

        images = subject_only(images, data.segmenter, data.sam_checkpoint)
    return images
