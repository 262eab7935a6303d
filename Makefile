# Two commands for users: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fire-reg demo --out out/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) out

# The shipped weights (fire_reg/weights/): affine pairs of DRIVE retinas 09-40 for training, 01-08 held out
# (GEOMETRY=sphere trains the curved-pair variant the README compares).
GEOMETRY ?= affine
DRIVE ?= ../shared/data/drive/images
P01 ?= ../shared/data/fire_p01
WORK ?= work
.PHONY: shipped-model benchmarks
shipped-model: $(STAMP)
	$(BIN)/fire-reg data embedded --images $(DRIVE) --select '*_training.tif' --select '09_test.tif' \
	    --select '1?_test.tif' --select '20_test.tif' --per-image S2,P3,A1 --geometry $(GEOMETRY) --out $(WORK)/drive_train
	$(BIN)/fire-reg data embedded --images $(DRIVE) --select '0[1-8]_test.tif' --per-image S2,P3,A1 \
	    --geometry $(GEOMETRY) --seed 1 --out $(WORK)/drive_val
	$(BIN)/fire-reg prepare --fire $(WORK)/drive_train --out $(WORK)/shards_train --per-pair 64
	$(BIN)/fire-reg prepare --fire $(WORK)/drive_val --out $(WORK)/shards_val --per-pair 16 --seed 1
	$(BIN)/fire-reg train --data $(WORK)/shards_train --val-data $(WORK)/shards_val \
	    --config docs/shipped_model/train_config.json --out $(WORK)/run
	$(BIN)/fire-reg data embedded --images $(DRIVE) --select '0[1-8]_test.tif' --per-image S2,P3,A1 \
	    --geometry $(GEOMETRY) --seed 2 --out $(WORK)/drive_heldout
	$(BIN)/fire-reg evaluate --fire $(WORK)/drive_heldout --model $(WORK)/run/model.keras \
	    --out $(WORK)/eval_heldout
	$(BIN)/fire-reg export --run $(WORK)/run --validation $(WORK)/eval_heldout/results.json \
	    --out fire_reg/weights

benchmarks: $(STAMP)
	$(BIN)/python benchmarks/run_benchmarks.py --drive $(DRIVE) --p01 $(P01) --out out/bench --write-readme
