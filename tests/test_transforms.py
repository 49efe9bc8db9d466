import numpy as np
import pytest
import torch

from fracdet.transforms import AugmentConfig, PreprocessSpec, build_transforms, resize_to_input


def test_letterbox_keeps_aspect_and_pads_black():
    img = np.ones((100, 50), dtype=np.float32)
    out = resize_to_input(img, 64, "letterbox")
    assert out.shape == (1, 64, 64)
    assert out[0, :, :8].max() == 0 and out[0, :, -8:].max() == 0  # padded sides
    assert out[0, :, 24:40].min() > 0.99


def test_stretch_fills_everything():
    out = resize_to_input(np.ones((100, 50), dtype=np.float32), 32, "stretch")
    assert out.shape == (1, 32, 32) and out.min() > 0.99


def test_unknown_resize_mode():
    with pytest.raises(ValueError, match="unknown resize mode"):
        resize_to_input(np.ones((10, 10), dtype=np.float32), 8, "crop")


def test_eval_transform_normalises_with_spec():
    spec = PreprocessSpec(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize="stretch")
    x = build_transforms(spec)(np.full((40, 40), 1.0, dtype=np.float32))
    assert x.shape == (3, 32, 32)
    assert torch.allclose(x, torch.ones_like(x))


def test_eval_transform_deterministic_train_random():
    spec = PreprocessSpec(input_size=48)
    img = np.random.default_rng(0).random((60, 60)).astype(np.float32)
    ev = build_transforms(spec)
    assert torch.equal(ev(img), ev(img))
    tr = build_transforms(spec, train=True, augment=AugmentConfig(erasing_p=0.0))
    torch.manual_seed(0)
    a = tr(img)
    b = tr(img)
    assert a.shape == (3, 48, 48) and not torch.equal(a, b)


def test_augmentation_off_equals_eval():
    spec = PreprocessSpec(input_size=40)
    img = np.random.default_rng(1).random((50, 70)).astype(np.float32)
    assert torch.equal(build_transforms(spec, train=True, augment=AugmentConfig.off())(img), build_transforms(spec)(img))


def test_spec_round_trip():
    spec = PreprocessSpec(input_size=260, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize="stretch")
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec


def test_finish_batch_equals_per_image_finish_and_reuses_the_buffer():
    spec = PreprocessSpec(input_size=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    tf = build_transforms(spec)
    rng = np.random.default_rng(2)
    prepared = [tf.prepare(rng.random((40, 30)).astype(np.float32)) for _ in range(3)]
    expected = torch.stack([tf.finish(p) for p in prepared])
    buf = np.zeros((4, 3, 32, 32), np.float32)
    got = tf.finish_batch(prepared, out=buf)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    assert got.shape == (3, 3, 32, 32) and np.shares_memory(got.numpy(), buf)
    torch.testing.assert_close(tf.finish_batch(prepared), expected, atol=1e-6, rtol=1e-6)  # no buffer
