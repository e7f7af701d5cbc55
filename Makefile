# Two commands do all the set-up on a fresh machine (README.md):
#   make run    virtual environment + the main job on the embedded default (the model organisms)
#   make test   virtual environment + the test suite
# TORCH is pinned to the CPU build available here; on a GPU machine: make TORCH="torch" run
VENV  ?= .venv
PY    := $(VENV)/bin/python
TORCH ?= torch==2.13.0
OUT   ?= runs/organisms

.PHONY: run test venv clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,tl]"
	touch $@

venv: $(VENV)/.installed

run: $(VENV)/.installed
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(VENV)/bin/mech report --compare organism:balanced organism:text-biased \
		--data organism:shapes --batch-size 32 --out $(OUT)
	@echo "report: $(OUT)/report.md"

test: $(VENV)/.installed
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
