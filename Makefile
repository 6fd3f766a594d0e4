# The two commands of the README:
#   make demo   run fraudstream on a simulated stream (Kafka + Redis started locally)
#   make test   run the whole test suite against real Kafka and Redis
# Both install what they need on first use (scripts/bootstrap.sh).
.PHONY: demo test lint bench bootstrap up down status clean dashboard-picture

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap
	.venv/bin/fraudstream demo

# What ruff checks; its rules (docstrings, complexity, ...) and what mypy checks (the
# package and the tests, strictly) are in pyproject.toml.
CODE = fraudstream/*.py service producers evaluation bench devstack tests examples

test: lint
	.venv/bin/pytest

lint: bootstrap
	.venv/bin/ruff check $(CODE)
	.venv/bin/ruff format --check $(CODE)
	.venv/bin/mypy

# Run the demo recording its metrics, then draw the Grafana dashboard's panels
# from them into docs/dashboard.png (the picture in the README).
dashboard-picture: bootstrap
	.venv/bin/fraudstream demo --record-metrics .cache/demo-metrics.jsonl
	.venv/bin/fraudstream dev dashboard-picture --metrics .cache/demo-metrics.jsonl --output docs/dashboard.png

bench: bootstrap
	.venv/bin/fraudstream bench pipeline

up: bootstrap
	.venv/bin/fraudstream dev up

down:
	.venv/bin/fraudstream dev down

status:
	.venv/bin/fraudstream dev status

clean: down
	rm -rf .cache/dev
