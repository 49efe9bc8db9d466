"""``fracdet compare``: two evaluation folders of the same films, B − A with paired intervals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from fracdet.cli import main
from fracdet.comparison import compare_folders, format_comparison, read_evaluation
from fracdet.errors import FracdetError

N_POS, N_NEG = 40, 80


def _films() -> tuple[list[str], np.ndarray]:
    names = [f"data/Fractured/f{i:03d}.jpg" for i in range(N_POS)] + [f"data/Normal/n{i:03d}.jpg" for i in range(N_NEG)]
    return names, np.r_[np.ones(N_POS, int), np.zeros(N_NEG, int)]


def write_eval(folder: Path, prob: np.ndarray, hits: np.ndarray | None = None, boxes_ok: np.ndarray | None = None,
               films: list[str] | None = None, labels: np.ndarray | None = None) -> Path:
    """An evaluation folder as `fracdet evaluate --boxes` writes it: predictions, the map's
    pointing game per fractured film, and every film's boxes (one true box per fractured film;
    ``boxes_ok[i]``: the model's box on film i is the true one, else beside it)."""
    names, y = _films()
    names, y = films or names, y if labels is None else labels
    folder.mkdir(parents=True)
    with (folder / "predictions.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "true_label", "probability", "predicted_label", "verdict", "threshold", "region"])
        for n, t, p in zip(names, y, prob):
            w.writerow([n, int(t), f"{p:.6f}", int(p >= 0.5), "", 0.5, ""])
    if hits is None:
        return folder
    loc = folder / "localisation"
    loc.mkdir()
    images = [{"path": n, "probability": float(p), "boxes": 1, "model": {"pointing_game": float(h)},
               "centre": {"pointing_game": 0.0}} for n, p, h in zip(names[:N_POS], prob, hits)]
    (loc / "localisation.json").write_text(json.dumps({"summary": {}, "images": images}))
    true = [[[100.0, 100.0, 150.0, 150.0]] if t else [] for t in y]
    own = [[[100.0, 100.0, 150.0, 150.0, float(p)] if ok else [300.0, 300.0, 350.0, 350.0, float(p)]]
           for p, ok in zip(prob, boxes_ok)]
    rows = [{"path": n, "true": tb, "boxes": {"model": ob}} for n, tb, ob in zip(names, true, own)]
    (loc / "detections.json").write_text(json.dumps({"format": "fracdet-detections/1", "sources": ["model"],
                                                     "films": rows}))
    return folder


def _probabilities(rng: np.random.Generator, separation: float) -> np.ndarray:
    _, y = _films()
    return 1 / (1 + np.exp(-(separation * (y - 0.5) * 2 + rng.normal(0, 1, len(y)))))


def test_a_better_model_is_named_on_every_kind_of_metric(tmp_path):
    rng = np.random.default_rng(0)
    _, y = _films()
    weak = _probabilities(rng, 0.3)
    strong = _probabilities(rng, 3.0)
    a = write_eval(tmp_path / "a", weak, hits=np.r_[np.ones(8), np.zeros(N_POS - 8)],
                   boxes_ok=np.r_[np.ones(8), np.zeros(len(y) - 8)].astype(bool))
    b = write_eval(tmp_path / "b", strong, hits=np.r_[np.ones(36), np.zeros(N_POS - 36)],
                   boxes_ok=np.r_[np.ones(36), np.zeros(len(y) - 36)].astype(bool))
    r = compare_folders(a, b, n_resamples=300)
    m = r["metrics"]
    assert r["n_films"] == N_POS + N_NEG and r["fractured"] == N_POS
    for k in ("roc_auc", "pr_auc", "sensitivity_at_specificity_0.85", "pointing_game[model]", "box_map50[model]"):
        assert m[k]["better"] == "B", (k, m[k])
        assert m[k]["difference"]["low"] > 0 and m[k]["b"] > m[k]["a"]
    assert m["brier"]["better"] == "B" and m["brier"]["difference"]["high"] < 0  # lower is better
    assert m["pointing_game[model]"]["a"] == pytest.approx(8 / 40) and m["pointing_game[model]"]["b"] == pytest.approx(36 / 40)
    assert "pointing_game[centre]" not in m  # the same on every film in both: a baseline, left out
    # the other way round, the same intervals mirrored and A named
    back = compare_folders(b, a, n_resamples=300)["metrics"]
    assert back["roc_auc"]["better"] == "A"
    assert back["roc_auc"]["difference"]["estimate"] == pytest.approx(-m["roc_auc"]["difference"]["estimate"])
    text = format_comparison(r)
    assert "roc_auc" in text and "box_map50[model]" in text and " B" in text


def test_a_model_against_itself_differs_by_nothing_and_a_seed_repeats(tmp_path):
    rng = np.random.default_rng(1)
    prob = _probabilities(rng, 1.0)
    a = write_eval(tmp_path / "a", prob, hits=np.ones(N_POS), boxes_ok=np.ones(N_POS + N_NEG, bool))
    r = compare_folders(a, a, n_resamples=100)
    for k, row in r["metrics"].items():
        d = row["difference"]
        assert d["estimate"] == d["low"] == d["high"] == 0.0 and row["better"] == "neither", k
    assert compare_folders(a, a, n_resamples=100, seed=3) == compare_folders(a, a, n_resamples=100, seed=3)


def test_two_noisy_copies_of_one_model_are_not_told_apart(tmp_path):
    rng = np.random.default_rng(2)
    prob = _probabilities(rng, 1.0)
    other = np.clip(prob + rng.normal(0, 0.02, len(prob)), 0, 1)
    r = compare_folders(write_eval(tmp_path / "a", prob), write_eval(tmp_path / "b", other), n_resamples=300)
    assert r["metrics"]["roc_auc"]["better"] == "neither"
    assert r["metrics"]["roc_auc"]["difference"]["low"] < 0 < r["metrics"]["roc_auc"]["difference"]["high"]
    assert not any(k.startswith(("pointing", "box")) for k in r["metrics"])  # neither has localisation


def test_the_same_films_under_another_data_path_are_matched_by_file_name(tmp_path):
    rng = np.random.default_rng(6)
    prob = _probabilities(rng, 1.0)
    names, y = _films()
    a = write_eval(tmp_path / "a", prob, hits=np.ones(N_POS), boxes_ok=np.ones(N_POS + N_NEG, bool))
    moved = ["/elsewhere/" + n for n in names]
    b = write_eval(tmp_path / "b", prob, hits=np.ones(N_POS), boxes_ok=np.ones(N_POS + N_NEG, bool), films=moved)
    r = compare_folders(a, b, n_resamples=50)
    assert r["n_films"] == N_POS + N_NEG and r["metrics"]["box_map50[model]"]["difference"]["estimate"] == 0.0
    clash = [f"x{i % 2}/same.jpg" if i < 2 else n for i, n in enumerate(moved)]  # two films share a name
    c = write_eval(tmp_path / "c", prob, films=clash)
    with pytest.raises(FracdetError, match="different films"):
        compare_folders(a, c)


def test_evaluations_of_different_films_or_labels_are_refused(tmp_path):
    rng = np.random.default_rng(3)
    prob = _probabilities(rng, 1.0)
    names, y = _films()
    a = write_eval(tmp_path / "a", prob)
    b = write_eval(tmp_path / "b", prob[:-1], films=names[:-1], labels=y[:-1])
    with pytest.raises(FracdetError, match="different films"):
        compare_folders(a, b)
    flipped = y.copy()
    flipped[0] = 0
    c = write_eval(tmp_path / "c", prob, labels=flipped)
    with pytest.raises(FracdetError, match="disagree on the label"):
        compare_folders(a, c)
    d = write_eval(tmp_path / "d", prob, hits=np.ones(N_POS), boxes_ok=np.ones(N_POS + N_NEG, bool))
    e = write_eval(tmp_path / "e", prob, hits=np.ones(N_POS), boxes_ok=np.ones(N_POS + N_NEG, bool))
    det = e / "localisation" / "detections.json"
    doc = json.loads(det.read_text())
    doc["films"][0]["true"] = [[0.0, 0.0, 5.0, 5.0]]  # another box file
    det.write_text(json.dumps(doc))
    with pytest.raises(FracdetError, match="different true boxes"):
        compare_folders(d, e)


def test_unreadable_folders_give_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FracdetError, match="no predictions.csv"):
        read_evaluation(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "predictions.csv").write_text("path,true_label,probability\nx.jpg,1,1.7\n")
    with pytest.raises(FracdetError, match="out of range"):
        read_evaluation(bad)
    rng = np.random.default_rng(4)
    good = write_eval(tmp_path / "good", _probabilities(rng, 1.0), hits=np.ones(N_POS),
                      boxes_ok=np.ones(N_POS + N_NEG, bool))
    (good / "localisation" / "detections.json").write_text("{not json")
    with pytest.raises(FracdetError, match="detections.json: not a readable JSON"):
        read_evaluation(good)
    code = main(["compare", str(tmp_path / "empty"), str(good)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err and "no predictions.csv" in err


def test_the_command_prints_the_table_and_writes_json(tmp_path, capsys):
    rng = np.random.default_rng(5)
    a = write_eval(tmp_path / "a", _probabilities(rng, 0.5))
    b = write_eval(tmp_path / "b", _probabilities(rng, 2.0))
    out = tmp_path / "cmp.json"
    assert main(["compare", str(a), str(b), "--bootstrap", "200", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "B − A" in text and "roc_auc" in text and "written:" in text
    saved = json.loads(out.read_text())
    assert saved["n_resamples"] == 200 and saved["metrics"]["roc_auc"]["better"] == "B"
