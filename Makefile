# Two commands do all the set-up on a fresh machine (README.md):
#   make run    virtual environment + the main job on the embedded default (the model organisms)
#   make test   virtual environment + ruff (format --check, check) + the test suite
# Both install from requirements.lock (exact versions, with hashes); torch stays outside the lock,
# pinned here to the CPU build available on this project's machines. On a GPU machine:
#   make TORCH="torch" run
# Other targets:
#   make test-latest   a fresh environment with the newest releases of everything but torch, then the tests
#   make test-numerics the numerics-heavy tests again under ATEN_CPU_CAPABILITY=default (CI, after make test)
#   make lock          re-resolve requirements.lock from pyproject.toml (do it after make test-latest passes)
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
OUT    ?= runs/organisms
QWEN_OUT ?= runs/qwen-organisms
LATEST ?= .venv-latest
# The lock is resolved with torch as its CPU build (from the machine's wheel folder when there is one),
# so that torch's CUDA packages never enter it; torch itself is left out (--no-emit-package torch).
LOCK_TORCH ?= torch==2.13.0+cpu
FIND_LINKS ?= $(wildcard /opt/wheels)
UV         ?= uv==0.13.9
ENV        := HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1

.PHONY: run test test-numerics venv test-latest lock check-lock clean

check-lock:
	@python3 tools/lock.py check

$(VENV)/.installed: pyproject.toml requirements.lock
	@python3 tools/lock.py check
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q --require-hashes --no-deps -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip check
	touch $@

venv: $(VENV)/.installed

# the LLaVA organisms on organism:shapes and the Qwen2.5-VL ones on organism:shapes-varied, side by side
# on the two cores (each job is single-threaded); either failing fails the target
run: $(VENV)/.installed
	$(ENV) $(VENV)/bin/mech report --compare organism:qwen-image-biased organism:qwen-balanced \
		organism:qwen-text-biased --data organism:shapes-varied --batch-size 32 --no-progress \
		--out $(QWEN_OUT) & qwen=$$!; \
	$(ENV) $(VENV)/bin/mech report --compare organism:image-biased organism:balanced organism:text-biased \
		--data organism:shapes --batch-size 32 --out $(OUT); llava=$$?; \
	wait $$qwen && test $$llava -eq 0
	@echo "reports: $(OUT)/report.md $(QWEN_OUT)/report.md"

# ruff first (seconds): the layout (`ruff format --check`) and the lint rules of pyproject.toml's [tool.ruff]
test: $(VENV)/.installed
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(ENV) $(PY) -m pytest -q

# The oracle tests whose tolerances follow from the dtype's precision, rerun on torch's portable kernels
# (ATEN_CPU_CAPABILITY=default: no AVX2/AVX-512), so a tolerance tuned on one CPU's kernels fails in CI, not on a
# user's machine (issue 23). `make test` runs them on the machine's own capability. Gating; about 1 minute.
NUMERICS ?= tests/test_logits_to_keep.py tests/test_batching.py tests/test_conventions.py tests/test_knockout.py \
            tests/test_attention.py tests/test_attribution_deeplift.py tests/test_hooks.py
test-numerics: $(VENV)/.installed
	$(ENV) ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q -p no:cacheprovider $(NUMERICS)

# Not gating in CI: it shows what the next releases break while their deprecation shims still work.
test-latest:
	rm -rf $(LATEST)
	python3 -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q "$(TORCH)"
	$(LATEST)/bin/python -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" > $(LATEST)/torch-pin.txt
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -c $(LATEST)/torch-pin.txt -e ".[dev,tl]"
	$(LATEST)/bin/python -m pip check
	$(LATEST)/bin/python -m pip list --format freeze | grep -iE '^(transformers|tokenizers|nnsight|transformer-lens|accelerate|numpy)=='
	$(ENV) $(LATEST)/bin/python -m pytest -q -p no:cacheprovider

lock:
	rm -rf .venv-lock
	python3 -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q "$(UV)"
	echo "$(LOCK_TORCH)" > .venv-lock/torch-override.txt
	.venv-lock/bin/uv pip compile pyproject.toml --extra dev --extra tl --generate-hashes \
		--python-version 3.11 $(if $(FIND_LINKS),--find-links $(FIND_LINKS)) \
		--override .venv-lock/torch-override.txt --no-emit-package torch \
		--custom-compile-command "make lock" -o requirements.lock
	python3 tools/lock.py stamp

clean:
	rm -rf $(VENV) $(LATEST) .venv-lock runs
