"""Image input: every reader returns an :class:`XRay` in the one pixel convention.

DICOM (:mod:`fracdet.io.dicom`, needs ``fracdet[dicom]``) is read through the same
:func:`read_image`; :func:`read_frames` gives every frame of a multi-frame file.
"""

from fracdet.io.dicom import DicomOptions, dicom_options, read_dicom, read_frames
from fracdet.io.images import (
    DICOM_EXTENSIONS,
    IMAGE_EXTENSIONS,
    XRay,
    has_dicom_preamble,
    is_dicom_file,
    is_image_file,
    iter_image_files,
    looks_like_image,
    read_image,
    register_reader,
)

__all__ = [
    "DICOM_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "DicomOptions",
    "XRay",
    "dicom_options",
    "has_dicom_preamble",
    "is_dicom_file",
    "is_image_file",
    "iter_image_files",
    "looks_like_image",
    "read_dicom",
    "read_frames",
    "read_image",
    "register_reader",
]
