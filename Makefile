# pvestack: the two commands of the README, for a fresh Debian machine, as root.
#   make demo   set everything up, bring up the lab, apply + verify the example Hermes stack
#   make test   set everything up and run the whole test suite (a sample of the fault/kill matrix)
#   make stress the whole fault matrix and kill points on a test lab (root, minutes)
#   make bench  the benchmarks (calls, times, Ansible side by side, lab timings)
SHELL := /bin/bash
VENV ?= .venv
HERMES_VENV ?= .venv-hermes
PY := $(VENV)/bin/python
PVESTACK := $(VENV)/bin/pvestack
APT_PACKAGES := lxc lxc-templates busybox-static debootstrap dnsmasq-base iptables openssh-server openssh-client docker.io \
	shellcheck uidmap iproute2 zstd curl ca-certificates python3-venv docker-compose tmux

.PHONY: setup apt venv hermes-agent templates demo test lint unit contract labtest bench stress clean

setup: apt venv templates hermes-agent

# hermes-agent from PyPI in a venv of its own (not a pvestack dependency): tests run its
# REAL config migration on what the recipe renders (tests/lab/test_hermes_config.py).
HERMES_AGENT_VERSION := 0.19.0
hermes-agent: $(HERMES_VENV)/.installed

$(HERMES_VENV)/.installed:
	python3 -m venv $(HERMES_VENV)
	$(HERMES_VENV)/bin/pip install -q 'hermes-agent==$(HERMES_AGENT_VERSION)'
	touch $@

# The lab's debian-12 and debian-13 templates (debootstrap, once; lab tests and `lab up` reuse them).
templates: apt venv
	@if [ "$$(id -u)" = 0 ]; then for t in debian-12-standard debian-13-standard; do \
	  $(PY) -m pvelab.runtime.template /var/lib/pvestack-lab/cache $$t || exit 1; done; \
	else echo "not root: skipping the lab templates"; fi

apt:
	@if [ "$$(id -u)" = 0 ]; then scripts/install-system-packages.sh $(APT_PACKAGES); \
	else echo "not root: skipping apt packages"; fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

unit: venv
	$(VENV)/bin/pytest -q tests/unit

labtest: setup
	$(VENV)/bin/pytest -m lab tests/lab

test: setup lint
	$(VENV)/bin/pytest tests

demo: setup
	scripts/demo.sh

bench: setup
	$(PY) benchmarks/startup.py
	$(PY) benchmarks/plan_calls.py
	$(PY) benchmarks/ansible_side_by_side.py
	@if [ "$$(id -u)" = 0 ]; then $(PVESTACK) lab up >/dev/null && $(PY) benchmarks/lab_create.py; \
	else echo "not root: skipping the lab benchmark"; fi
	@if [ "$$(id -u)" = 0 ]; then eval "$$($(PVESTACK) lab env)" && scripts/build-lab-images.sh >/dev/null \
		&& $(PY) benchmarks/e2e.py && $(PY) benchmarks/noop_lab.py; \
	else echo "not root: skipping the end-to-end benchmark"; fi

# The whole fault matrix (a 500 and a hang on every API call of plan/apply/destroy) and
# every kill point, on a test lab of its own (PVESTACK_LABTEST_SLOT shifts its ports).
stress: setup
	PVESTACK_STRESS=1 $(VENV)/bin/pytest -m lab tests/lab/test_faults.py

clean:
	rm -rf $(VENV) $(HERMES_VENV) build *.egg-info
