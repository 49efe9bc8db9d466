"""Image input: every reader returns an :class:`XRay` in the one pixel convention."""

from fracdet.io.images import (
    IMAGE_EXTENSIONS,
    XRay,
    is_image_file,
    iter_image_files,
    read_image,
    register_reader,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "XRay",
    "is_image_file",
    "iter_image_files",
    "read_image",
    "register_reader",
]
