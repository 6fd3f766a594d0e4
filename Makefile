# The two commands of the README:
#   make demo   run fraudstream on a simulated stream (Kafka + Redis started locally)
#   make test   run the whole test suite against real Kafka and Redis
# Both install what they need on first use (scripts/bootstrap.sh).
.PHONY: demo test lint bench bootstrap up down status clean

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap
	.venv/bin/fraudstream demo

test: bootstrap
	.venv/bin/ruff check fraudstream/*.py service producers evaluation bench devstack tests
	.venv/bin/mypy
	.venv/bin/pytest

lint: bootstrap
	.venv/bin/ruff check fraudstream/*.py service producers evaluation bench devstack tests
	.venv/bin/mypy

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
