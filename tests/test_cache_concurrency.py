"""On-disk caches survive concurrent runs and damaged entries (ONNX export cache, hash cache)."""

import multiprocessing as mp
import os
import sqlite3
from pathlib import Path


from fracdet.fsutil import read_verified, write_verified
from synth import write_image


def _tiny_artifact():
    import torch

    from fracdet.artifact import ModelArtifact
    from fracdet.models import create_model
    from fracdet.transforms import PreprocessSpec

    torch.manual_seed(0)
    model = create_model("simple_cnn", pretrained=False, head_hidden=16, dropout=0.1).eval()
    return ModelArtifact(architecture="simple_cnn", state_dict=model.state_dict(),
                         preprocess=PreprocessSpec(input_size=48, mean=(0.5,) * 3, std=(0.25,) * 3),
                         model_config={"head_hidden": 16, "dropout": 0.1}, threshold=0.5, temperature=1.0)


def _export_in_child(cache: str, barrier, results) -> None:
    os.environ["FRACDET_CACHE"] = cache
    from fracdet.models.export import cached_onnx_bytes

    art = _tiny_artifact()
    barrier.wait(timeout=120)  # both export and write the same entry at once
    results.put(cached_onnx_bytes(art))


def _hash_in_child(cache: str, images: list[str], barrier, results) -> None:
    from fracdet.data.hashing import HashCache, fingerprint_files

    c = HashCache(cache)
    barrier.wait(timeout=120)
    records, _ = fingerprint_files([Path(p) for p in images], cache=c, workers=1)
    c.close()
    results.put([r["sha1"] for r in records])


def _run_two(target, *args) -> list:
    ctx = mp.get_context("spawn")  # a clean interpreter each: no forked torch threads
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    out = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return out


def test_two_processes_fill_the_same_onnx_cache_entry(tmp_path, monkeypatch):
    import onnxruntime as ort

    from fracdet.models.export import artifact_digest, cached_onnx_bytes

    cache = tmp_path / "cache"
    a, b = _run_two(_export_in_child, str(cache))
    entry = cache / "onnx" / f"{artifact_digest(_tiny_artifact())}.onnx"
    stored = read_verified(entry)
    assert stored is not None and stored in (a, b), "the entry is one process's whole graph"
    ort.InferenceSession(stored, providers=["CPUExecutionProvider"])
    assert [p.name for p in entry.parent.iterdir()] == [entry.name], "no temporary files left"

    monkeypatch.setenv("FRACDET_CACHE", str(cache))
    entry.write_bytes(stored[: len(stored) // 2])  # a damaged entry is exported again, not used
    again = cached_onnx_bytes(_tiny_artifact())
    ort.InferenceSession(again, providers=["CPUExecutionProvider"])
    assert read_verified(entry) == again


def test_verified_files_reject_cut_and_changed_bytes(tmp_path):
    p = write_verified(tmp_path / "x.bin", b"graph bytes \x00\x01")
    assert read_verified(p) == b"graph bytes \x00\x01"
    raw = p.read_bytes()
    p.write_bytes(raw[:-3])
    assert read_verified(p) is None
    p.write_bytes(raw.replace(b"graph", b"grapH"))
    assert read_verified(p) is None
    p.write_bytes(b"an old entry without a check")
    assert read_verified(p) is None
    assert read_verified(tmp_path / "missing") is None


def test_two_processes_fill_the_same_hash_cache(tmp_path):
    from fracdet.data.hashing import HashCache, fingerprint_files

    images = [str(write_image(tmp_path / "img" / f"{i}.png", bool(i % 2), i)) for i in range(12)]
    cache = tmp_path / "hashes"
    a, b = _run_two(_hash_in_child, str(cache), images)
    assert a == b and len(a) == 12
    c = HashCache(cache)
    records, hits = fingerprint_files([Path(p) for p in images], cache=c, workers=1)
    assert hits == 12 and [r["sha1"] for r in records] == a


def test_a_damaged_hash_cache_is_replaced(tmp_path, caplog):
    from fracdet.data.hashing import HashCache, fingerprint_files

    images = [write_image(tmp_path / "img" / f"{i}.png", False, i) for i in range(3)]
    cache = tmp_path / "hashes"
    cache.mkdir()
    (cache / "hashes.sqlite").write_bytes(b"this is not a database" * 100)
    c = HashCache(cache)
    assert c.db is not None and "damaged" in caplog.text
    assert (cache / "hashes.sqlite.damaged").is_file()
    fingerprint_files(images, cache=c, workers=1)
    _, hits = fingerprint_files(images, cache=c, workers=1)
    assert hits == 3
    # an entry whose stored record was damaged is hashed again, not used
    c.db.execute("UPDATE entries SET data = '{not json'")
    c.db.commit()
    records, hits = fingerprint_files(images, cache=c, workers=1)
    assert hits == 0 and all(r["ok"] for r in records)
    c.close()
    assert sqlite3.connect(cache / "hashes.sqlite").execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 3
