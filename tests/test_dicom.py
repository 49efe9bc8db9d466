"""DICOM input: real files from the ``pydicom-data`` package plus synthetic ones written here.

Real files read (``pydicom-data``'s ``data_store/data``):
RG3_UNCR/UNCI/J2KR/J2KI (CR extremity, MONOCHROME1), RG1_UNCR/J2KR (CR chest, MONOCHROME1),
mlut_18 (Modality LUT), vlut_04 (VOI LUT), SC_rgb* and SC_ybr_full_uncompressed (RGB/YBR
secondary captures, multi-frame, big-endian, 16/32-bit), US1_UNCR/J2KR (YBR_RCT),
emri_small* (MR multi-frame: uncompressed, big-endian, RLE, JPEG-LS, JPEG 2000, truncated),
693_UNCR and MR2_UNCR (CT / MR refusals), OBXXXX1A and OBXXXX1A_rle (palette colour).
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.pixels import apply_modality_lut, apply_voi_lut  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from fracdet.errors import ImageReadError  # noqa: E402
from fracdet.io import DicomOptions, dicom_options, iter_image_files, read_frames, read_image  # noqa: E402
from fracdet.io.dicom import modality_values  # noqa: E402
from fracdet.inference import Predictor, group_by_study  # noqa: E402
from fracdet.operating import Decision  # noqa: E402
from fracdet.transforms import PreprocessSpec  # noqa: E402

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "src/fracdet/weights/default.fracdet"


def real(name: str) -> Path:
    """A real file from pydicom-data: only the tests that call this need the package; the
    synthetic tests below build their own files and run without it."""
    data_store = pytest.importorskip("data_store", reason="pydicom-data is not installed")
    p = Path(data_store.__file__).parent / "data" / name
    if not p.is_file():
        pytest.skip(f"{name} not in this pydicom-data")
    return p


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    from synth import tiny_model_file

    return tiny_model_file(tmp_path_factory.mktemp("dcm-model"), input_size=64, threshold=0.5, temperature=1.0)


@pytest.fixture(scope="module")
def predictor(model_path) -> Predictor:
    return Predictor.from_path(model_path)


def write_dicom(path: Path, pixels: np.ndarray, *, modality: str = "DX", photometric: str = "MONOCHROME2",
                bits_stored: int | None = None, signed: bool = False, preamble: bool = True,
                study: str | None = None, **elements) -> Path:
    """A minimal single-frame DICOM (Digital X-Ray SOP class) with the given stored values."""
    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.BodyPartExamined = "HAND"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1 if pixels.ndim == 2 else 3
    ds.PhotometricInterpretation = photometric
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    bits_alloc = pixels.dtype.itemsize * 8
    ds.BitsAllocated = bits_alloc
    ds.BitsStored = bits_stored or bits_alloc
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    for k, v in elements.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=preamble)
    return path


# ----------------------------------------------------------------------------- real files


@pytest.mark.parametrize("name", ["RG3_UNCR.dcm", "RG3_J2KI.dcm", "RG1_J2KR.dcm"])
def test_real_radiographs_read_with_metadata(name):
    x = read_image(real(name))
    assert x.pixels.dtype == np.float32 and x.pixels.ndim == 2
    assert 0.0 <= x.pixels.min() and x.pixels.max() <= 1.0 and x.pixels.std() > 0.05
    m = x.meta
    assert m["format"] == "DICOM" and m["modality"] == "CR" and m["photometric"] == "MONOCHROME1"
    assert m["study_uid"] and m["series_uid"] and m["sop_uid"] and m["frame"] == 0 and m["frames"] == 1
    assert m["body_part"] == ("EXTREMITY" if name.startswith("RG3") else "CHEST")
    assert m["original_size"] == x.pixels.shape[::-1] and m["voi"].startswith("window")


@pytest.mark.parametrize("pair", [("RG3_UNCR.dcm", "RG3_J2KR.dcm"), ("RG1_UNCR.dcm", "RG1_J2KR.dcm")])
def test_lossless_jpeg2000_equals_uncompressed(pair, predictor):
    unc, j2k = (read_image(real(n)) for n in pair)
    assert np.array_equal(unc.pixels, j2k.pixels)
    a, b = predictor.predict(unc), predictor.predict(j2k)
    assert a.probability == b.probability and a.logit == b.logit


def test_lossy_jpeg2000_matches_reference_and_is_close(predictor):
    # *_UNCI is the reference decoding of the lossy *_J2KI; *_UNCR the original
    lossy = read_image(real("RG3_J2KI.dcm"))
    assert np.array_equal(lossy.pixels, read_image(real("RG3_UNCI.dcm")).pixels)
    unc = read_image(real("RG3_UNCR.dcm"))
    assert not np.array_equal(unc.pixels, lossy.pixels)
    assert float(np.abs(unc.pixels - lossy.pixels).mean()) < 0.01
    assert abs(predictor.predict(unc).probability - predictor.predict(lossy).probability) < 0.05


@pytest.mark.parametrize("other", ["emri_small_big_endian.dcm", "emri_small_RLE.dcm",
                                   "emri_small_jpeg_ls_lossless.dcm", "emri_small_jpeg_2k_lossless.dcm"])
def test_transfer_syntaxes_decode_identically(other):
    opts = DicomOptions(force=True)  # MR: only readable when forced
    ref = read_frames(real("emri_small.dcm"), opts)
    got = read_frames(real(other), opts)
    assert len(ref) == len(got) == 10
    for r, g in zip(ref, got):
        assert np.array_equal(r.pixels, g.pixels)


def test_monochrome1_comes_out_bone_bright_like_monochrome2(tmp_path):
    src = real("RG3_UNCR.dcm")
    ds = pydicom.dcmread(src)
    stored = ds.pixel_array.astype(np.uint16)
    top = (1 << ds.BitsStored) - 1
    m1 = read_image(src).pixels
    # Where stored values are lowest, MONOCHROME1 means white: displayed bright.
    assert m1[stored <= np.percentile(stored, 1)].mean() > 0.9
    assert m1[stored >= np.percentile(stored, 99)].mean() < 0.3
    # The same radiograph re-stored as MONOCHROME2 (values and window inverted) looks the same.
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = (top - stored).astype(np.uint16).tobytes()
    ds.WindowCenter = top - float(ds.WindowCenter) + 1
    ds.save_as(tmp_path / "m2.dcm")
    m2 = read_image(tmp_path / "m2.dcm").pixels
    assert np.allclose(m1, m2, atol=1e-6)


def test_modality_lut_matches_pydicom():
    path = real("mlut_18.dcm")
    ds = pydicom.dcmread(path)
    assert "ModalityLUTSequence" in ds
    expected = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    assert np.array_equal(modality_values(ds, ds.pixel_array), expected)
    x = read_image(path)  # no VOI: min-max of the modality values
    ref = (expected - expected.min()) / (expected.max() - expected.min())
    assert np.allclose(x.pixels, ref, atol=1e-6) and x.meta["voi"] == "min-max"


def test_voi_lut_matches_pydicom():
    path = real("vlut_04.dcm")
    ds = pydicom.dcmread(path)
    assert "VOILUTSequence" in ds
    out = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
    lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
    ref = (out - lut.min()) / (lut.max() - lut.min())
    x = read_image(path)
    assert np.allclose(x.pixels, ref, atol=1e-6) and x.meta["voi"] == "VOI LUT 0"


def test_window_matches_pydicom_and_is_configurable():
    path = real("RG3_UNCR.dcm")
    ds = pydicom.dcmread(path)
    out = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    ref = 1.0 - out / ((1 << ds.BitsStored) - 1)  # MONOCHROME1
    assert np.allclose(read_image(path).pixels, ref, atol=1e-6)
    stretched = read_frames(path, DicomOptions(window=None))[0]
    assert stretched.meta["voi"].startswith("min-max")
    assert not np.allclose(stretched.pixels, ref, atol=1e-3)
    with dicom_options(window=None):  # the same through read_image
        assert np.array_equal(read_image(path).pixels, stretched.pixels)


def test_rgb_and_ybr_secondary_captures():
    rgb = read_image(real("SC_rgb.dcm"))
    assert rgb.meta["frames"] == 1 and rgb.meta["photometric"] == "RGB"
    for name in ["SC_rgb_expb.dcm", "SC_rgb_16bit.dcm", "SC_rgb_32bit.dcm"]:
        assert np.allclose(read_image(real(name)).pixels, rgb.pixels, atol=1e-3), name
    ybr = read_image(real("SC_ybr_full_uncompressed.dcm"))
    assert np.allclose(ybr.pixels, rgb.pixels, atol=2 / 255)
    # pure red patch → ITU-R 601 luminance 0.299
    assert abs(float(rgb.pixels[0, 0]) - 0.299) < 2e-3
    # JPEG 2000 with the reversible colour transform (YBR_RCT) == the RGB original
    opts = DicomOptions(force=True)  # US
    assert np.array_equal(read_frames(real("US1_J2KR.dcm"), opts)[0].pixels,
                          read_frames(real("US1_UNCR.dcm"), opts)[0].pixels)


def test_multiframe_gives_one_prediction_per_frame(predictor):
    frames = read_frames(real("SC_rgb_2frame.dcm"))
    assert [f.meta["frame"] for f in frames] == [0, 1] and all(f.meta["frames"] == 2 for f in frames)
    first = read_image(real("SC_rgb_2frame.dcm"))
    assert np.array_equal(first.pixels, frames[0].pixels) and "frame 0 of 2" in first.meta["note"]
    preds = list(predictor.predict_paths([real("SC_rgb_2frame.dcm"), real("SC_rgb_expb_2frame.dcm")]))
    assert [p.meta["frame"] for p in preds] == [0, 1, 0, 1] and all(p.ok for p in preds)
    assert preds[0].to_row()["frame"] == 0 and preds[1].to_row()["frame"] == 1


@pytest.mark.parametrize("name,modality", [("693_UNCR.dcm", "CT"), ("MR2_UNCR.dcm", "MR"),
                                           ("emri_small.dcm", "MR")])
def test_ct_and_mr_are_refused_unless_forced(name, modality, predictor):
    with pytest.raises(ImageReadError, match=f"modality {modality} is not a radiograph.*--force"):
        read_image(real(name))
    (row,) = list(predictor.predict_paths([real(name)]))
    assert not row.ok and "--force" in row.error and row.meta["modality"] == modality
    forced = list(predictor.predict_paths([real(name)], dicom=DicomOptions(force=True)))
    assert forced and all(p.ok for p in forced)
    assert forced[0].meta["forced"] == f"modality {modality}"


def test_palette_colour_is_refused_unless_forced():
    # OT (secondary capture) modality, no File Meta header: refused for its photometric only
    with pytest.raises(ImageReadError, match="unsupported photometric interpretation PALETTE COLOR"):
        read_image(real("OT-PAL-8-face.dcm"))
    opts = DicomOptions(force=True)
    face = read_frames(real("OT-PAL-8-face.dcm"), opts)[0]
    assert face.meta["forced"] == "photometric PALETTE COLOR" and face.pixels.std() > 0.05
    a, b = read_frames(real("OBXXXX1A.dcm"), opts)[0], read_frames(real("OBXXXX1A_rle.dcm"), opts)[0]
    assert np.array_equal(a.pixels, b.pixels) and a.pixels.std() > 0.01


# ----------------------------------------------------------------------------- synthetic files


def test_signed_16bit_with_bits_stored(tmp_path):
    values = np.linspace(-2048, 2047, 32 * 40).reshape(32, 40).astype(np.int16)
    junk = (values.view(np.uint16) & 0x0FFF) | 0xA000  # 12 bits stored, garbage above High Bit
    p = write_dicom(tmp_path / "signed.dcm", junk.astype(np.uint16), bits_stored=12, signed=True)
    ds = pydicom.dcmread(p)
    assert np.array_equal(modality_values(ds, ds.pixel_array), values.astype(np.float64))
    x = read_image(p)
    assert np.allclose(x.pixels, (values + 2048) / 4095.0, atol=1e-6)
    assert x.pixels[0, 0] == 0.0 and x.pixels[-1, -1] == 1.0


def test_rescale_slope_intercept_then_window(tmp_path):
    stored = np.tile(np.arange(0, 1000, 25, dtype=np.uint16), (20, 1))
    p = write_dicom(tmp_path / "rescale.dcm", stored, bits_stored=10, RescaleSlope=2, RescaleIntercept=-100,
                    WindowCenter=700, WindowWidth=801)
    hu = stored * 2.0 - 100
    expected = np.clip((hu - 699.5) / 800 + 0.5, 0, 1)  # PS3.3 C.11.2.1.2.1 LINEAR
    x = read_image(p)
    assert np.allclose(x.pixels, expected, atol=1e-6) and x.meta["voi"] == "window 700/801 linear"
    # a second window is chosen by index; out-of-range index falls back to the first
    p2 = write_dicom(tmp_path / "two.dcm", stored, bits_stored=10, RescaleSlope=2, RescaleIntercept=-100,
                     WindowCenter=[700, 900], WindowWidth=[801, 201], VOILUTFunction="LINEAR_EXACT")
    second = read_frames(p2, DicomOptions(window=1))[0]
    assert np.allclose(second.pixels, np.clip((hu - 900) / 201 + 0.5, 0, 1), atol=1e-6)
    assert np.array_equal(read_frames(p2, DicomOptions(window=7))[0].pixels,
                          read_frames(p2, DicomOptions(window=0))[0].pixels)


def test_presentation_lut_shape(tmp_path):
    stored = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (24, 1))
    plain = read_image(write_dicom(tmp_path / "id.dcm", stored, bits_stored=12, PresentationLUTShape="IDENTITY")).pixels
    inverse = read_image(write_dicom(tmp_path / "inv.dcm", stored, bits_stored=12, PresentationLUTShape="INVERSE")).pixels
    assert np.allclose(inverse, 1.0 - plain, atol=1e-6)
    # MONOCHROME1 with INVERSE (as the DX IOD requires) is inverted once, not twice
    m1 = read_image(write_dicom(tmp_path / "m1.dcm", stored, bits_stored=12, photometric="MONOCHROME1")).pixels
    m1_inv = read_image(write_dicom(tmp_path / "m1inv.dcm", stored, bits_stored=12, photometric="MONOCHROME1",
                                    PresentationLUTShape="INVERSE")).pixels
    assert np.allclose(m1, 1.0 - plain, atol=1e-6) and np.array_equal(m1, m1_inv)


# ----------------------------------------------------------------------------- limits, frames one at a time


def _multiframe(path: Path, n: int, h: int = 128, w: int = 128) -> Path:
    """An ``n``-frame 16-bit file; frame i holds the constant value 100·i (window 32768/65536)."""
    stack = np.broadcast_to((np.arange(n, dtype=np.uint16) * 100)[:, None, None], (n, h, w))
    write_dicom(path, np.zeros((h, w), np.uint16), NumberOfFrames=n, WindowCenter=32768, WindowWidth=65536)
    ds = pydicom.dcmread(path)
    ds.PixelData = np.ascontiguousarray(stack).astype("<u2").tobytes()
    ds.save_as(path)
    return path


def test_500_frames_are_decoded_one_at_a_time(tmp_path, monkeypatch):
    import tracemalloc

    from fracdet.io import dicom as dicom_mod

    n, h, w = 500, 128, 128
    p = _multiframe(tmp_path / "cine.dcm", n, h, w)
    decoded: list[int | None] = []
    real_decode = dicom_mod._decode
    monkeypatch.setattr(dicom_mod, "_decode", lambda p, ds, i, m: decoded.append(i) or real_decode(p, ds, i, m))
    tracemalloc.start()
    try:
        frames = read_frames(p)
        assert len(frames) == n and decoded == []  # nothing decoded until a frame is taken
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        means = []
        for i, x in enumerate(frames):
            assert x.meta["frame"] == i and x.meta["frames"] == n and x.pixels.shape == (h, w)
            means.append(float(x.pixels.mean()))
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert decoded == list(range(n))
    eager = n * h * w * 4  # all frames as float32: 32 MB
    assert peak < eager / 16, f"peak {peak / 1e6:.1f} MB while iterating: frames are not decoded lazily"
    assert means[499] == pytest.approx(49900 / 65535, abs=2e-3) and means[1] < means[2]
    assert frames[-1].meta["frame"] == n - 1 and [x.meta["frame"] for x in frames[3:5]] == [3, 4]
    with pytest.raises(IndexError):
        frames[n]


def test_predicting_500_frames_keeps_only_the_small_inputs(tmp_path, predictor):
    import tracemalloc

    n, h, w = 500, 256, 256
    p = _multiframe(tmp_path / "cine.dcm", n, h, w)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        rows = list(predictor.predict_paths([p], batch_size=8))
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert len(rows) == n and all(r.ok for r in rows) and [r.meta["frame"] for r in rows[:3]] == [0, 1, 2]
    stored = n * h * w * 2  # the file's 16-bit pixel data, which pydicom holds while the file is read: 66 MB
    all_frames = n * h * w * 4  # every frame's full pixels as float32: 131 MB
    assert peak < stored + all_frames / 8, f"peak {peak / 1e6:.1f} MB: full frames are kept while predicting"


def test_dicom_pixel_limit_checked_from_the_header(tmp_path, monkeypatch, predictor):
    p = _multiframe(tmp_path / "cine.dcm", 3, 128, 128)
    assert len(read_frames(p, max_pixels=128 * 128)) == 3  # the limit is per frame, not per file
    with pytest.raises(ImageReadError, match=r"frame too large \(128x128"):
        read_frames(p, max_pixels=10_000)
    with pytest.raises(ImageReadError, match="too large"):
        read_image(p, max_pixels=10_000)
    monkeypatch.setenv("FRACDET_MAX_PIXELS", "10000")
    (row,) = list(predictor.predict_paths([p]))
    assert not row.ok and "frame too large" in row.error and "FRACDET_MAX_PIXELS" in row.error
    monkeypatch.delenv("FRACDET_MAX_PIXELS")
    # a header claiming 60000x60000 with a few bytes of pixel data: refused before any decoding
    bomb = write_dicom(tmp_path / "bomb.dcm", np.zeros((16, 16), np.uint16))
    ds = pydicom.dcmread(bomb)
    ds.Rows = ds.Columns = 60000
    ds.save_as(bomb)
    with pytest.raises(ImageReadError, match=r"image too large \(60000x60000 = 3600.0 Mpx; the limit is 100 Mpx"):
        read_image(bomb)


def test_fifo_named_dcm_is_refused_without_blocking(tmp_path):
    import os

    fifo = tmp_path / "pipe.dcm"
    os.mkfifo(fifo)
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_frames(fifo)
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_image(fifo)


def test_broken_files_give_one_error_row_and_batch_goes_on(tmp_path, predictor):
    good = write_dicom(tmp_path / "good.dcm", np.tile(np.arange(64, dtype=np.uint16) * 60, (48, 1)), bits_stored=12)
    # no pixel data: a structured-report-like object
    sr = write_dicom(tmp_path / "sr.dcm", np.zeros((20, 20), np.uint16))
    ds = pydicom.dcmread(sr)
    for kw in ("PixelData", "Rows", "Columns"):
        delattr(ds, kw)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.save_as(sr)
    # encapsulated PDF
    pdf = tmp_path / "report.dcm"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    ds.Modality = "DOC"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = b"%PDF-1.4 fake"
    ds.save_as(pdf)
    # truncated halfway through the pixel data; garbage after a DICM preamble
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(real("RG3_UNCR.dcm").read_bytes()[:3_000_000])
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00" * 128 + b"DICM" + bytes(range(256)) * 4)
    files = [good, sr, pdf, cut, junk, real("emri_small_jpeg_2k_lossless_too_short.dcm"), good]
    rows = list(predictor.predict_paths(files, batch_size=2))
    assert len(rows) == len(files)  # error rows come as they happen, readable ones per batch
    by_path = {r.path: r for r in rows}
    assert [by_path[str(f)].ok for f in files] == [True, False, False, False, False, False, True]
    errors = [by_path[str(f)].error for f in files[1:-1]]
    assert "no pixel data" in errors[0]
    assert "encapsulated document (application/pdf)" in errors[1]
    assert "truncated" in errors[2] or "corrupt" in errors[2]
    assert errors[3] and "truncated" in errors[4]
    assert all("\n" not in e and "Traceback" not in e for e in errors)


def test_missing_pydicom_gives_install_hint(tmp_path, monkeypatch):
    p = write_dicom(tmp_path / "a.dcm", np.zeros((20, 20), np.uint16))
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(ImageReadError, match=r"pip install 'fracdet\[dicom\]'"):
        read_image(p)


def test_extensionless_dicom_found_in_folders_and_datasets(tmp_path):
    from fracdet.data.layouts import load_dataset
    from fracdet.data.loader import make_loader
    from fracdet.transforms import build_transforms
    from synth import xray_array

    root = tmp_path / "data"
    for label, name in enumerate(["not_fractured", "fractured"]):
        for i in range(3):
            img = xray_array(bool(label), 10 * label + i).astype(np.uint16) * 16
            fname = ["IM0001", f"1.2.826.0.1.{label}.{i}", f"x{i}.dcm"][i]
            write_dicom(root / name / fname, img, bits_stored=12, preamble=i != 2 or label == 0)
    (root / "fractured" / "notes.txt").write_text("not an image")
    shutil.copy(root / "fractured" / "IM0001", root / "fractured" / "DICOMDIR")
    found = [p.relative_to(root).as_posix() for p in iter_image_files([root])]
    assert found == ["fractured/1.2.826.0.1.1.1", "fractured/IM0001", "fractured/x2.dcm",
                     "not_fractured/1.2.826.0.1.0.1", "not_fractured/IM0001", "not_fractured/x2.dcm"]
    ds = load_dataset(root)
    assert len(ds) == 6 and sorted(ds.labels()) == [0, 0, 0, 1, 1, 1]
    # a manifest of DICOM paths is a dataset too
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        for s in ds.samples:
            w.writerow([s.path, s.label])
    assert len(load_dataset(manifest)) == 6
    # and the training loader decodes them
    spec = PreprocessSpec(input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    x, y, idx = next(iter(make_loader(ds.samples, build_transforms(spec), batch_size=6)))
    assert x.shape == (6, 3, 32, 32) and len(idx) == 6


# ----------------------------------------------------------------------------- studies and CLI


def test_group_by_study(predictor, tmp_path):
    study_a, study_b = generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    files = [write_dicom(tmp_path / f"v{i}.dcm", (rng.random((40, 40)) * 4000).astype(np.uint16),
                         bits_stored=12, study=s) for i, s in enumerate([study_a, study_a, study_b])]
    grouping = Predictor(predictor.artifact, threads=1, assess=False)  # noise films: judged anyway, to group them
    preds = list(grouping.predict_paths(files))
    for agg, fn in [("max", max), ("mean", lambda ps: sum(ps) / len(ps))]:
        studies = group_by_study(preds, agg)
        assert [s.study for s in studies] == [study_a, study_b]
        assert [s.n_views for s in studies] == [2, 1]
        assert studies[0].probability == pytest.approx(fn([p.probability for p in preds[:2]]))
        assert studies[0].label == ("fractured" if studies[0].probability >= 0.5 else "not fractured")
        assert studies[0].verdict is None  # no decision given
    doubtful = Decision(threshold=0.5, doubt_threshold=0.0, fracture_threshold=1.01)  # everything is "doubt"
    banded = group_by_study(preds, "max", decision=doubtful)
    assert [s.verdict for s in banded] == ["doubt", "doubt"] and banded[0].to_row()["verdict"] == "doubt"
    certain = Decision(threshold=0.5, doubt_threshold=0.0, fracture_threshold=0.0)
    assert group_by_study(preds, "max", decision=certain)[0].verdict == "fracture"
    # non-DICOM: each file is its own study unless a map says otherwise
    from synth import write_image

    pngs = [write_image(tmp_path / f"p{i}.png", bool(i % 2), i) for i in range(3)]
    png_preds = list(grouping.predict_paths(pngs))
    assert len(group_by_study(png_preds)) == 3
    mapping = {str(pngs[0].resolve()): "S1", str(pngs[1].resolve()): "S1", str(pngs[2].resolve()): "S2"}
    assert [s.study for s in group_by_study(png_preds, study_map=mapping)] == ["S1", "S2"]


def test_cli_predict_dicom_by_study(tmp_path, model_path, capsys):
    from fracdet.cli import main

    model = model_path
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(real("RG3_J2KI.dcm"), folder / "IM0001")  # extensionless
    shutil.copy(real("RG3_J2KR.dcm"), folder / "IM0002")  # same study, other file
    shutil.copy(real("SC_rgb_2frame.dcm"), folder / "sc.dcm")
    shutil.copy(real("693_J2KR.dcm"), folder / "ct.dcm")
    out = tmp_path / "rows.csv"
    assert main(["predict", str(folder), "--model", str(model), "--out", str(out), "--quiet"]) == 1
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 5  # 2 CR + 2 frames + 1 refused CT
    byname = {(Path(r["path"]).name, r["frame"]): r for r in rows}
    cr = byname[("IM0001", "0")]
    assert cr["modality"] == "CR" and cr["body_part"] == "EXTREMITY" and cr["study_uid"] and cr["sop_uid"]
    assert "modality CT is not a radiograph" in byname[("ct.dcm", "")]["error"]
    assert {byname[("sc.dcm", "0")]["frame"], byname[("sc.dcm", "1")]["frame"]} == {"0", "1"}
    capsys.readouterr()

    out2 = tmp_path / "studies.json"
    code = main(["predict", str(folder), "--model", str(model), "--out", str(out2), "--by-study",
                 "--study-agg", "mean", "--force"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "study" in printed and "IM0001" in printed
    studies = json.loads(out2.read_text())
    cr_study = next(s for s in studies if s["study"] == cr["study_uid"])
    assert cr_study["n_views"] == 2 and cr_study["aggregation"] == "mean"
    assert cr_study["probability"] == pytest.approx(np.mean([v["probability"] for v in cr_study["views"]]))
    assert cr_study["verdict"] in ("fracture", "doubt", "no fracture")
    out3 = tmp_path / "studies.csv"
    assert main(["predict", str(folder), "--model", str(model), "--out", str(out3), "--by-study", "--quiet",
                 "--force"]) == 0
    srows = list(csv.DictReader(open(out3)))
    assert list(srows[0])[:3] == ["level", "study", "path"]
    assert [r["level"] for r in srows].count("study") == len(studies) == 3
    assert all(r["verdict"] for r in srows if r["level"] == "study" and not r["error"])


@pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="the shipped default model is not built yet")
def test_default_model_on_real_extremity_radiograph():
    # the two encodings decode to the same film: the same probability (checks off, so that it is given)
    plain = Predictor.from_path(DEFAULT_MODEL, assess=False)
    unc, j2k = plain.predict(real("RG3_UNCR.dcm")), plain.predict(real("RG3_J2KR.dcm"))
    assert unc.probability == j2k.probability and 0.0 <= unc.probability <= 1.0
    model = Predictor.from_path(DEFAULT_MODEL)
    assert model.predict(real("RG3_UNCR.dcm")).verdict == model.predict(real("RG3_J2KR.dcm")).verdict
    chest = model.predict(real("RG1_UNCR.dcm"))
    assert chest.verdict == "not assessable" and "CHEST" in chest.reason


@pytest.mark.xfail(strict=True, reason="known regression of the 384 px map-head default model (README, 'Not "
                   "assessable'): its OOD reference refuses this leg film (feature distance 81.0 > 79.6, possibly "
                   "inverted); the previous model judged it with a warning")
def test_default_model_judges_a_leg_film_from_another_source():
    model = Predictor.from_path(DEFAULT_MODEL)
    assert model.predict(real("RG3_UNCR.dcm")).assessable  # judged (its white collimation may earn a warning)


def test_cli_study_map_for_plain_images(tmp_path, model_path, capsys):
    from fracdet.cli import main
    from synth import write_image

    for i in range(3):
        write_image(tmp_path / "imgs" / f"p{i}.png", bool(i % 2), i)
    smap = tmp_path / "studies.csv"
    smap.write_text("path,study\nimgs/p0.png,S1\nimgs/p1.png,S1\nimgs/p2.png,S2\n")
    out = tmp_path / "out.csv"
    assert main(["predict", str(tmp_path / "imgs"), "--model", str(model_path), "--by-study",
                 "--study-map", str(smap), "--out", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert [(r["level"], r["study"]) for r in rows] == [
        ("study", "S1"), ("view", "S1"), ("view", "S1"), ("study", "S2"), ("view", "S2")]
    assert float(rows[0]["probability"]) == max(float(rows[1]["probability"]), float(rows[2]["probability"]))
    assert rows[0]["n_views"] == "2" and "frame" not in rows[0]
    bad = tmp_path / "bad.csv"
    bad.write_text("file,group\nx,y\n")
    assert main(["predict", str(tmp_path / "imgs"), "--model", str(model_path), "--by-study",
                 "--study-map", str(bad)]) == 2
    assert "needs 'path' and 'study' columns" in capsys.readouterr().err


def test_views_of_one_study_share_a_split_group(tmp_path: Path) -> None:
    """Two views of one study (same StudyInstanceUID) get one group, so they never straddle splits."""
    from fracdet.data.layouts import load_dataset

    for label in ("fractured", "not_fractured"):
        for k in range(3):
            study = f"1.2.826.0.1.3680043.8.498.{1 + int(label == 'fractured')}{k + 1}"
            for view in range(2):
                px = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * (view + 2 * k + 1)
                write_dicom(tmp_path / label / f"s{k}v{view}.dcm", px, study=study)
    ds = load_dataset(tmp_path)
    by_study: dict[str, set] = {}
    for s in ds.samples:
        by_study.setdefault(s.meta["study_uid"], set()).add(s.group)
    assert len(by_study) == 6 and all(len(g) == 1 and None not in g for g in by_study.values())
