# Two commands for a newcomer: `make demo` and `make test`.  Each creates .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint install bench default-model boxhead-model previous-default-model maphead-candidate e2e-candidate e2e-box-candidate e2e-512-candidate e2e-lite2-candidate e2e-448-lite2-candidate clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[train,dicom,serve,ray,dicomnode,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fracdet predict samples/ --out samples-predictions.csv

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/lint-imports

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# the shipped model (docs/model-card.md; issue 13, session 8): runs D′/E′ below — the model shipped in
# session 6, trained end to end at 384 px with the map and box losses, a box head retrained on its cached
# maps, calibration refitted on validation; chosen on validation by a rule written before the runs
# (docs/experiments.md, "End to end with the box head"), then its one test evaluation, then shipped
SHIP := runs/ship
BOXES := ../shared/data/fracatlas/annotations/fracture_boxes_coco.json
default-model: e2e-box-candidate
	$(BIN)/fracdet evaluate ../shared/data/fracatlas --model $(E2EB)/calibrated.fracdet --split val --out $(SHIP)/eval-val --boxes $(BOXES) --cam-methods gradcam
	$(BIN)/fracdet evaluate ../shared/data/fracatlas --model $(E2EB)/calibrated.fracdet --split test --out $(SHIP)/eval-test --boxes $(BOXES) --cam-methods gradcam
	$(BIN)/python scripts/ship_model.py --model $(E2EB)/calibrated.fracdet --recipe e2e-boxhead --val-eval $(SHIP)/eval-val --test-eval $(SHIP)/eval-test

# the model shipped in session 6 (git 952134c, its card in git history): the map-head candidate below with
# its OOD reference and a box head trained on the same backbone's cached maps (mirrored films too; stride
# and seed chosen on validation, docs/experiments.md "Box head")
BOX_STRIDE := 8
BOX_SEED := 0
boxhead-model: maphead-candidate
	$(BIN)/fracdet fit-ood ../shared/data/fracatlas --model runs/maphead/finalist-cover-s16-w1/model.fracdet --out $(SHIP)/ood.fracdet
	$(BIN)/python scripts/maphead_cache.py --size 384 --model $(BASE) --flip --fine
	$(BIN)/python scripts/boxhead_fit.py --cache runs/maphead/cache-384-flip-fine.npz --base $(SHIP)/ood.fracdet --stride $(BOX_STRIDE) --width 64 --epochs 12 --seed $(BOX_SEED) --save $(SHIP)/boxes.fracdet
	$(BIN)/fracdet quantize ../shared/data/fracatlas --model $(SHIP)/boxes.fracdet --out $(SHIP)/model-int8.fracdet
	$(BIN)/fracdet evaluate ../shared/data/fracatlas --model $(SHIP)/boxes.fracdet --split val --out $(SHIP)/eval-val --boxes $(BOXES) --cam-methods gradcam
	$(BIN)/fracdet evaluate ../shared/data/fracatlas --model $(SHIP)/boxes.fracdet --split test --out $(SHIP)/eval-test --boxes $(BOXES) --cam-methods gradcam
	$(BIN)/python scripts/ship_model.py --model $(SHIP)/boxes.fracdet --recipe boxhead --val-eval $(SHIP)/eval-val --test-eval $(SHIP)/eval-test --int8-from $(SHIP)/model-int8.fracdet

# the 224 px model shipped before it (trained by `fracdet train`; its model card is in git history)
previous-default-model: $(STAMP)
	$(BIN)/fracdet train ../shared/data/fracatlas --out runs/default-fracatlas --epochs1 3 --epochs2 10 --patience 3
	$(BIN)/python scripts/ship_model.py runs/default-fracatlas

# issue 13: a map head (stride 16) and a new image head on the previous default model's backbone at
# 384 px, trained on cached backbone maps of its recorded train split; chosen and calibrated on validation
BASE := runs/maphead/base-224.fracdet
maphead-candidate: $(STAMP)
	mkdir -p runs/maphead
	git show c4ee1f1:src/fracdet/weights/default.fracdet > $(BASE).tmp && mv $(BASE).tmp $(BASE)
	$(BIN)/python scripts/maphead_cache.py --size 384 --model $(BASE)
	$(BIN)/python scripts/maphead_fit.py --base $(BASE) --stride 16 --epochs 8 --fuse 0,0.25,0.5,0.75,1 --name finalist-cover-s16-w1 --save

# issue 13, session 5: the whole network at 384 px with the map loss (map learned from the boxes alone,
# α 0), starting from the backbone of the model shipped before it (git c8e1083), then the blend α chosen
# on validation; about 45 minutes on 2 cores (docs/experiments.md, "End to end", run B)
E2E_START := runs/e2e-start.fracdet
E2E := runs/e2e-384-a0
e2e-candidate: $(STAMP)
	mkdir -p runs
	git show c8e1083:src/fracdet/weights/default.fracdet > $(E2E_START).tmp && mv $(E2E_START).tmp $(E2E_START)
	$(BIN)/fracdet train ../shared/data/fracatlas --weights $(E2E_START) --input-size 384 --map-weight 1 \
		--map-fuse 0 --epochs1 1 --epochs2 6 --patience 2 --no-int8 --no-progress --out $(E2E)
	$(BIN)/python scripts/choose_fuse.py $(E2E)/model.fracdet --data ../shared/data/fracatlas --out $(E2E)/chosen.fracdet

# issue 13, sessions 7–8 (runs D′/E′): the whole network at 384 px with the map loss (α 0) and a box head
# (λ 0.5, stride 8) from the model shipped in session 6 (git 952134c), α chosen on validation; then a box
# head retrained on its cached maps (seed chosen on validation among 0, 1, 2) and the calibration and
# operating points refitted on validation; about 75 minutes on 2 cores (docs/experiments.md, runs D′/E′)
E2EB_START := runs/e2e-box-start.fracdet
E2EB := runs/e2e-384-box
E2EB_SEED := 1
e2e-box-candidate: $(STAMP)
	mkdir -p runs
	git show 952134c:src/fracdet/weights/default.fracdet > $(E2EB_START).tmp && mv $(E2EB_START).tmp $(E2EB_START)
	$(BIN)/fracdet train ../shared/data/fracatlas --weights $(E2EB_START) --input-size 384 --map-weight 1 \
		--map-fuse 0 --box-weight 0.5 --box-stride 8 --epochs1 1 --epochs2 6 --patience 2 --no-int8 --no-progress \
		--out $(E2EB)
	$(BIN)/python scripts/choose_fuse.py $(E2EB)/model.fracdet --data ../shared/data/fracatlas --out $(E2EB)/chosen.fracdet
	$(BIN)/python scripts/maphead_cache.py --size 384 --model $(E2EB)/chosen.fracdet --flip --fine --out $(E2EB)/cache.npz
	$(BIN)/python scripts/boxhead_fit.py --cache $(E2EB)/cache.npz --base $(E2EB)/chosen.fracdet --stride 8 --width 64 \
		--epochs 12 --seed $(E2EB_SEED) --save $(E2EB)/boxes.fracdet
	$(BIN)/fracdet calibrate ../shared/data/fracatlas --model $(E2EB)/boxes.fracdet --split val --out $(E2EB)/calibrated.fracdet

# Runs F and G (docs/experiments.md): the model shipped in session 8 (git a475f93) fine-tuned end to end at 512 px,
# α on validation (run F: chosen.fracdet), then a box head refitted on its cached 512 px maps and Platt (run G)
E512_START := runs/e2e-512-start.fracdet
E512 := runs/e2e-512
e2e-512-candidate: $(STAMP)
	mkdir -p runs
	git show a475f93:src/fracdet/weights/default.fracdet > $(E512_START).tmp && mv $(E512_START).tmp $(E512_START)
	$(BIN)/fracdet train ../shared/data/fracatlas --weights $(E512_START) --input-size 512 --map-weight 1 \
		--map-fuse 0 --box-weight 0.5 --box-stride 8 --epochs1 1 --epochs2 4 --patience 2 --no-int8 --no-progress \
		--out $(E512)/run
	$(BIN)/python scripts/choose_fuse.py $(E512)/run/model.fracdet --data ../shared/data/fracatlas --out $(E512)/chosen.fracdet
	$(BIN)/python scripts/maphead_cache.py --size 512 --model $(E512)/chosen.fracdet --flip --fine --out $(E512)/cache.npz
	$(BIN)/python scripts/boxhead_fit.py --cache $(E512)/cache.npz --base $(E512)/chosen.fracdet --stride 8 --width 64 \
		--epochs 12 --seed 0 --threads 2 --save $(E512)/boxes-seed0.fracdet
	$(BIN)/fracdet calibrate ../shared/data/fracatlas --model $(E512)/boxes-seed0.fracdet --split val --out $(E512)/calibrated-G.fracdet

# Runs I and I′ (docs/experiments.md, session 12): EfficientNet-Lite2 from ImageNet at 384 px with run D′'s
# recipe, α on validation (run I: chosen.fracdet, calibrated.fracdet); then a box head refitted on its cached
# maps, seed 0, and Platt (run I′: calibrated-boxes.fracdet). ~90 min on 2 cores
ELITE2 := runs/e2e-384-lite2
e2e-lite2-candidate: $(STAMP)
	mkdir -p runs
	$(BIN)/fracdet train ../shared/data/fracatlas --model efficientnet_lite2 --input-size 384 --map-weight 1 \
		--map-fuse 0 --box-weight 0.5 --box-stride 8 --epochs1 1 --epochs2 6 --patience 2 --no-int8 --no-progress \
		--out $(ELITE2)
	$(BIN)/python scripts/choose_fuse.py $(ELITE2)/model.fracdet --data ../shared/data/fracatlas --out $(ELITE2)/chosen.fracdet
	$(BIN)/fracdet calibrate ../shared/data/fracatlas --model $(ELITE2)/chosen.fracdet --split val --out $(ELITE2)/calibrated.fracdet
	$(BIN)/python scripts/maphead_cache.py --size 384 --model $(ELITE2)/chosen.fracdet --flip --fine --out $(ELITE2)/cache.npz
	$(BIN)/python scripts/boxhead_fit.py --cache $(ELITE2)/cache.npz --base $(ELITE2)/chosen.fracdet --stride 8 --width 64 \
		--epochs 12 --seed 0 --threads 2 --save $(ELITE2)/boxes-seed0.fracdet
	$(BIN)/fracdet calibrate ../shared/data/fracatlas --model $(ELITE2)/boxes-seed0.fracdet --split val --out $(ELITE2)/calibrated-boxes.fracdet

# Runs J and J′ (docs/experiments.md, session 13): run I's Lite2 backbone trained on end to end at 448 px (the
# films' native size) with a cosine learning rate, α on validation (run J: chosen.fracdet); then a box head
# refitted on its cached 448 px maps, seed 0, and Platt (run J′: calibrated-boxes.fracdet)
E448 := runs/e2e-448-lite2
e2e-448-lite2-candidate: e2e-lite2-candidate
	$(BIN)/fracdet train ../shared/data/fracatlas --model efficientnet_lite2 --weights $(ELITE2)/model.fracdet \
		--input-size 448 --map-weight 1 --map-fuse 0 --box-weight 0.5 --box-stride 8 --scheduler cosine \
		--epochs1 1 --epochs2 4 --patience 2 --no-int8 --no-progress --out $(E448)
	$(BIN)/python scripts/choose_fuse.py $(E448)/model.fracdet --data ../shared/data/fracatlas --out $(E448)/chosen.fracdet
	$(BIN)/python scripts/maphead_cache.py --size 448 --model $(E448)/chosen.fracdet --flip --fine --out $(E448)/cache.npz
	$(BIN)/python scripts/boxhead_fit.py --cache $(E448)/cache.npz --base $(E448)/chosen.fracdet --stride 8 --width 64 \
		--epochs 12 --seed 0 --threads 2 --save $(E448)/boxes-seed0.fracdet
	$(BIN)/fracdet calibrate ../shared/data/fracatlas --model $(E448)/boxes-seed0.fracdet --split val --out $(E448)/calibrated-boxes.fracdet

bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
