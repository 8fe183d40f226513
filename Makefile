# Two entry points for a fresh machine: `make demo` and `make test`. Both create the virtualenv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Every test dependency, pinned by constraints.txt (regenerate with `make lock`).
EXTRAS := export,infra,demo,dev
PYTEST_ARGS ?= -n 2

.PHONY: demo test quick fmt lint typecheck unit venv system-deps bench lock clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	touch $(STAMP)

# Debian tools the tests run on generated artefacts (cloud-init schema, shellcheck, systemd-analyze verify,
# docker-compose config for infra/local/compose.yaml: Compose v1 validates without a Docker daemon).
SYSTEM_TOOLS := shellcheck cloud-init systemd-analyze docker-compose
APT_PACKAGES := shellcheck cloud-init systemd
# docker-compose recommends the Docker engine, which `config` does not need.
APT_BARE     := docker-compose
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "the tests need$$missing; install them with:" >&2; \
	    echo "  sudo apt-get update && sudo apt-get install -y $(APT_PACKAGES) &&" \
	      "sudo apt-get install -y --no-install-recommends $(APT_BARE)" >&2; \
	    exit 1; \
	  fi; \
	  echo "installing with apt-get:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_BARE) >/dev/null; \
	fi

demo: $(STAMP)
	$(BIN)/modelfleet demo
	$(BIN)/modelfleet plan --stack staging

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) system-deps
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck unit

# Everything but the slow tests (TensorFlow training and export, the demo): the loop while editing.
quick: lint typecheck $(STAMP) system-deps
	$(BIN)/pytest $(PYTEST_ARGS) -m "not slow"

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python -m bench

lock: $(STAMP)
	$(BIN)/pip freeze --all --exclude-editable | grep -v '^modelfleet' > constraints.txt

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
