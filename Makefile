# facemem — two entry points: `make demo` and `make test`. Both bootstrap .venv idempotently.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
DATA ?= ../shared/data
INDEX ?= build/demo-index
STAMP := $(VENV)/.installed

.PHONY: setup system-deps test lint demo clean

setup: $(STAMP)

# Re-install only when requirements.txt or pyproject.toml changes. The project itself goes in last,
# editable and without dependencies (they are the pins above), with the venv's own setuptools (no
# download); it gives .venv/bin/facemem. An editable install points at this checkout: a .venv shared
# by several checkouts resolves `facemem` to whichever ran this last.
$(STAMP): requirements.txt pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade "pip<26"
	$(VPY) -m pip install -q -r requirements.txt
	$(VPY) -m pip install -q --no-deps face_recognition==1.3.0
	$(VPY) -m pip install -q --no-deps --no-build-isolation -e .
	$(VPY) -c "import dlib, face_recognition, face_recognition_models, faiss, torch; print('deps ok: dlib', dlib.__version__, 'faiss', faiss.__version__, 'torch', torch.__version__)"
	$(VENV)/bin/facemem --version
	touch $(STAMP)

# Headless Chromium renders the HTML report and drives the browser page in the tests, with
# chromium-driver for selenium (Debian packages, need root or sudo).
system-deps:
	@{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }

test: setup system-deps
	FACEMEM_DATA=$(DATA) $(VPY) -m pytest -q -n 2 --dist loadfile tests $(PYTEST_ARGS)

# ruff's linter and formatter (line length 120, settings in pyproject.toml); CI runs it.
lint: setup
	$(VPY) -m ruff check .
	$(VPY) -m ruff format --check .

# The main job on the bundled sample data: index celeba10k (skipped when a valid index is there),
# then audit a real PGGAN sample folder and a real DCGAN generator against it, each against real
# strangers (celeba_test) in its own domain: wild photos for the PGGAN, the same faces at 32 px for the DCGAN.
demo: setup
	$(VPY) -m indexer info $(INDEX) >/dev/null 2>&1 || \
	  $(VPY) -m indexer build --dataset celeba --root $(DATA)/celeba10k --out $(INDEX) --overwrite
	$(VPY) -m indexer info $(INDEX)
	$(VPY) scripts/audit.py --generated $(DATA)/generated/pggan_celebahq --index $(INDEX) \
	  --out build/report-pggan.html --json build/report-pggan.json --detector hog \
	  --reference-real $(DATA)/celeba_test --reference-detector hog
	$(VPY) scripts/audit.py --generator dcgan32:$(DATA)/generated/dcgan32_celeba/checkpoint_G.pth \
	  --index $(INDEX) --out build/report-dcgan.html --json build/report-dcgan.json --n 500 --detector aligned \
	  --batch-sizes 16,32,64 --trials 10 \
	  --reference-real $(DATA)/celeba_test --reference-downscale 32 --reference-detector aligned
	@echo "reports: build/report-pggan.html build/report-dcgan.html (numbers: build/report-*.json)"

clean:
	rm -rf build .pytest_cache
