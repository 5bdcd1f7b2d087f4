# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# torch and torchvision pinned to the releases this workplace ships on disk.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
# pytest-xdist workers; each takes an equal share of torch's threads (tests/conftest.py)
TEST_WORKERS ?= 2

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ppmodels train vae --preset pyro --objective elbo --epochs 40 --batch-size 128 \
		--lr 3e-3 --lr-schedule cosine --device auto --seed 0 --out runs/demo \
		--eval-subset 1000 --num-samples 1000

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

bench: $(STAMP)
	$(BIN)/python benchmarks/svi_step.py
	$(BIN)/python benchmarks/epoch.py
	$(BIN)/python benchmarks/scaling.py
	$(BIN)/python benchmarks/replicates.py

clean:
	rm -rf $(VENV) runs .pytest_cache
