"""The client's images from a validated ``data:`` config section: the one loader used by the case and by the
report (which reloads the originals of a run folder for its page; evaluation only, never an attack).

Sources (``docs/data.md``): ``builtin``, ``digits`` (a public data set), a folder, a ``.npz`` file or
``import:module:attr``. All of them are sampled the same way (:func:`fedleak.client.data.sample`): items
``data.start .. data.start + data.batch_size`` of the source's order, which is seeded by ``data.seed`` for
class-folder trees (interleaved across classes) and with ``data.shuffle: true``.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

from fedleak.client.data import ImageSet, placeholder_labels, sample, set_listing, source_listing
from fedleak.client.public_data import DATASETS as PUBLIC_SOURCES, load_public
from fedleak.config.schema import DataConfig
from fedleak.errors import ConfigError


def load_data(data: DataConfig, num_classes: Optional[int] = None) -> ImageSet:
    """Load ``data.batch_size`` images as the section says (source, size, resize, start, seed, shuffle, labels)
    and, with ``subject_only``, remove their background (the set then carries the masks as ``masks``).
    ``source: digits`` takes the test split of :mod:`fedleak.client.public_data` (the split ``train-victim``
    never trains on). With ``data.labels: none`` the set's ``labels_known`` is False and its labels are
    placeholders: :func:`~fedleak.client.data.placeholder_labels` over ``num_classes`` (seeded by ``data.seed``)
    when it is given, else zeros. Raises a one-line ConfigError when the source has too few images."""
    if data.source in PUBLIC_SOURCES:  # pip-installed labelled data (the test split: never trained on)
        listing = set_listing(load_public(data.source, "test", data.size), f"the {data.source} test split")
    else:
        listing = source_listing(data.source, data.size, data.resize, data.labels)
    images = sample(listing, data.start, data.batch_size, data.shuffle, data.seed, data.labels)
    if images.images.shape[0] < data.batch_size:
        raise ConfigError(f"data.batch_size={data.batch_size} but only {images.images.shape[0]} images are "
                          f"available from {data.source!r} starting at {data.start}")
    if not images.labels_known and num_classes is not None:
        images = replace(images, labels=placeholder_labels(data.batch_size, num_classes, data.seed))
    if data.subject_only:
        from fedleak.client.segmentation import subject_only

        images = subject_only(images, data.segmenter, data.sam_checkpoint)
    return images
