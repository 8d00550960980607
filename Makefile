# Outpost: the two commands are `make demo` and `make test`; both set up first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-unit test-integration lint typecheck bench clean
.PHONY: setup-image image test-image test-vagrant box plain-image

setup: $(STAMP)
	@bash scripts/setup-debian.sh

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/outpost demo

test: setup lint
	$(PY) -m pytest -q -p no:cacheprovider -m "not image" tests

test-unit: setup
	$(PY) -m pytest -q tests/unit

test-integration: setup
	$(PY) -m pytest -q tests/integration

lint: setup
	$(VENV)/bin/ruff check appliance simulators tests benchmarks scripts
	$(VENV)/bin/mypy appliance simulators

bench: setup
	$(PY) -m appliance.cli bench

# The appliance image (image/build.sh; needs root): image/out/outpost.qcow2.
setup-image:
	@bash scripts/setup-image.sh

image: setup setup-image
	bash image/build.sh

# Builds the images and boots them under QEMU: the appliance (IPP, clean power-off, the
# encrypted state partition with swtpm), the Ansible playbook over SSH against two plain VMs;
# vagrant validate. `vagrant up` is its own target (below): about 20 min more under TCG, which
# would take .ci/run past its 90-minute budget on 2 cores.
test-image: image plain-image
	$(PY) -m pytest -q -s -p no:cacheprovider -m image tests/image \
	  --ignore=tests/image/test_vagrant_up.py
	@cat image/out/measurements.json

# `vagrant up` of a primary and a site with vagrant-libvirt and the local box (make box).
test-vagrant: plain-image
	$(PY) -m pytest -q -s -p no:cacheprovider -m image tests/image/test_vagrant_up.py

# The plain lab VM (Debian 12, sshd, python3, sudo; no Outpost): image/out/plain/debian12.qcow2.
plain-image: setup-image
	bash image/build-plain.sh

# The Vagrant box outpost/debian12 (libvirt) from the plain image, added to vagrant.
box: setup-image
	bash scripts/make_box.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
