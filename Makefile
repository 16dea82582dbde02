# Two commands for a newcomer: `make demo` and `make test`. Everything else is set up on the way.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Expensive artifacts (disk images, Azurite) live outside the checkout so that fresh clones reuse them.
CACHE_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/selinux-remediator
AZURITE_VERSION := 3.35.0
AZURITE := $(CACHE_DIR)/azurite-$(AZURITE_VERSION)/node_modules/.bin/azurite
APT_PACKAGES := qemu-system-x86 qemu-utils debootstrap xfsprogs lvm2 dosfstools gdisk fdisk e2fsprogs attr util-linux nodejs npm
APT_TOOLS := qemu-system-x86_64 qemu-img debootstrap mkfs.xfs lvm mkfs.vfat sgdisk sfdisk mkfs.ext4 getfattr losetup node npm
export CACHE_DIR
export AZURITE_BIN := $(abspath $(AZURITE))

.PHONY: setup test test-fast lint demo bench clean
setup: .cache/apt.stamp $(VENV)/.stamp $(AZURITE)

# Installs the Debian packages only when a tool is missing, so repeat runs skip apt entirely.
.cache/apt.stamp:
	@mkdir -p .cache
	@missing=""; for t in $(APT_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages (missing:$$missing)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	fi
	@touch $@

$(VENV)/.stamp: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

$(AZURITE):
	mkdir -p $(CACHE_DIR)/azurite-$(AZURITE_VERSION)
	cd $(CACHE_DIR)/azurite-$(AZURITE_VERSION) && npm install --silent --no-audit --no-fund azurite@$(AZURITE_VERSION) >/dev/null

lint: $(VENV)/.stamp
	$(PY) -m ruff check .
	$(PY) -m mypy

test: setup lint
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not vm and not slow"

demo: setup
	$(PY) -m remediation demo

bench: setup
	$(PY) -m bench

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache .hypothesis
