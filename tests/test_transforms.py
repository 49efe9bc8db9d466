import numpy as np
import pytest
import torch

from fracdet.data.augment import build_train_transforms
from fracdet.transforms import AugmentConfig, PreprocessSpec, build_transforms, letterbox_window, resize_to_input


def test_letterbox_keeps_aspect_and_pads_black():
    img = np.ones((100, 50), dtype=np.float32)
    out = resize_to_input(img, 64, "letterbox")
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert out.shape == (1, 64, 64)
    assert out[0, :, :8].max() == 0 and out[0, :, -8:].max() == 0  # padded sides
    assert out[0, :, 24:40].min() > 0.99
    top, left, nh, nw = letterbox_window(100, 50, 64)
    assert (top, left, nh, nw) == (0, 16, 64, 32)
    assert out[0, :, left:left + nw].min() > 0.99  # the window is exactly where the image went


def test_stretch_fills_everything():
    out = resize_to_input(np.ones((100, 50), dtype=np.float32), 32, "stretch")
    assert out.shape == (1, 32, 32) and out.min() > 0.99


def test_resize_matches_torch_antialiased_bilinear():
    img = np.random.default_rng(3).random((97, 61)).astype(np.float32)
    out = resize_to_input(img, 48, "stretch")
    ref = torch.nn.functional.interpolate(torch.from_numpy(img)[None, None], size=(48, 48), mode="bilinear",
                                          antialias=True, align_corners=False)[0].numpy()
    assert np.abs(out - ref).max() < 1e-4


def test_unknown_resize_mode():
    with pytest.raises(ValueError, match="unknown resize mode"):
        resize_to_input(np.ones((10, 10), dtype=np.float32), 8, "crop")


def test_eval_transform_normalises_with_spec():
    spec = PreprocessSpec(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize="stretch")
    x = build_transforms(spec)(np.full((40, 40), 1.0, dtype=np.float32))
    assert x.shape == (3, 32, 32)
    assert np.allclose(x, 1.0)


def test_eval_transform_deterministic_train_random():
    spec = PreprocessSpec(input_size=48)
    img = np.random.default_rng(0).random((60, 60)).astype(np.float32)
    ev = build_transforms(spec)
    assert np.array_equal(ev(img), ev(img))
    tr = build_train_transforms(spec, AugmentConfig(erasing_p=0.0))
    torch.manual_seed(0)
    a = tr(img)
    b = tr(img)
    assert a.shape == (3, 48, 48) and not np.array_equal(a, b)


def test_augmentation_off_equals_eval():
    spec = PreprocessSpec(input_size=40)
    img = np.random.default_rng(1).random((50, 70)).astype(np.float32)
    assert np.array_equal(build_train_transforms(spec, AugmentConfig.off())(img), build_transforms(spec)(img))


def test_spec_round_trip():
    spec = PreprocessSpec(input_size=260, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize="stretch")
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec


def test_finish_batch_equals_per_image_finish_and_reuses_the_buffer():
    spec = PreprocessSpec(input_size=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    tf = build_transforms(spec)
    rng = np.random.default_rng(2)
    prepared = [tf.prepare(rng.random((40, 30)).astype(np.float32)) for _ in range(3)]
    expected = np.stack([tf.finish(p) for p in prepared])
    buf = np.zeros((4, 3, 32, 32), np.float32)
    got = tf.finish_batch(prepared, out=buf)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=1e-6)
    assert got.shape == (3, 3, 32, 32) and np.shares_memory(got, buf)
    np.testing.assert_allclose(tf.finish_batch(prepared), expected, atol=1e-6, rtol=1e-6)  # no buffer


def test_transforms_import_no_torch():
    import subprocess
    import sys

    code = ("import sys; import fracdet.transforms, fracdet.io.images; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
