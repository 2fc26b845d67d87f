# The two commands a newcomer runs (see README.md), and their helpers.
.PHONY: demo test down setup lint golden dashboards rules bench

demo:  ## set up, start the local 1,200-node testbed, run the exporter, print the audit
	bash scripts/demo.sh

test:  ## set up and run the whole test suite (what CI runs)
	bash scripts/test.sh

down:  ## stop the demo: exporter and testbed
	bash scripts/demo.sh down

setup:
	bash scripts/setup.sh

lint:  ## ruff, and mypy (strict on coverage_exporter/model; pyproject.toml [tool.mypy])
	.venv/bin/ruff check .
	.venv/bin/ruff format --check coverage_exporter
	.venv/bin/mypy

golden:  ## accept changed exposition golden files
	UPDATE_GOLDEN=1 .venv/bin/pytest -q tests/unit/test_exposition.py
