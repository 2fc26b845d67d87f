# The two commands a newcomer runs (see README.md), and their helpers.
.PHONY: demo test down setup unit lint golden rules dashboards generated bench lock

PYTHON := .venv/bin/python

demo:  ## set up, start the local 1,200-node testbed, run the exporter, print the audit
	bash scripts/demo.sh

test:  ## set up and run the whole test suite (what CI runs)
	bash scripts/test.sh

down:  ## stop the demo: exporter and testbed
	bash scripts/demo.sh down

setup:
	bash scripts/setup.sh

unit:  ## the tests that need no testbed: unit, fuzz and local (after setup; ~5 min, against ~31 for make test)
	.venv/bin/ruff check .
	.venv/bin/pytest -q tests/unit tests/fuzz tests/local

lint:  ## ruff, and mypy (strict on coverage_exporter/model; pyproject.toml [tool.mypy])
	.venv/bin/ruff check .
	.venv/bin/ruff format --check coverage_exporter
	.venv/bin/mypy

golden:  ## accept changed exposition golden files
	UPDATE_GOLDEN=1 .venv/bin/pytest -q tests/unit/test_exposition.py

rules:  ## regenerate the rules from alerts/rules.py: alerts/, the chart's files/, mixin/
	$(PYTHON) -m alerts.generate
	$(PYTHON) -m tools.chart files
	$(PYTHON) -m tools.mixin

dashboards:  ## regenerate the dashboard from dashboards/generate.py: dashboards/, the chart's files/, mixin/
	$(PYTHON) -m dashboards.generate
	$(PYTHON) -m tools.chart files
	$(PYTHON) -m tools.mixin

generated: rules dashboards  ## every generated file, deploy/kubernetes.yaml included
	$(PYTHON) -m tools.chart deploy

bench:  ## the benchmark at every size: bench/RESULTS.md and results.png (~8 min, 100k needs ~20 GB free)
	.venv/bin/pip install --quiet -r bench/requirements.txt
	$(PYTHON) bench/report.py

lock:  ## re-resolve the image's lock file, requirements/image.txt, from pyproject.toml (Python 3.11, hashes)
	.venv/bin/pip install --quiet "pip-tools>=7.4"
	CUSTOM_COMPILE_COMMAND="make lock" .venv/bin/pip-compile --quiet --generate-hashes \
		--strip-extras --all-build-deps --allow-unsafe --no-emit-index-url --no-emit-find-links --output-file requirements/image.txt pyproject.toml
	$(PYTHON) -m tools.lock --check
