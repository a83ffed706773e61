# The two commands of the README. Both install what they need (apt, pip) and start the lab.
.PHONY: demo test lint lab-down

demo:
	lab/setup-host.sh
	lab/lab up
	lab/demo.sh

test:
	lab/setup-host.sh
	lab/run-tests.sh

lint:
	.venv/bin/ruff check vmctl lab tests bench
	.venv/bin/ruff format --check vmctl lab tests bench
	.venv/bin/mypy
	.venv/bin/lint-imports

lab-down:
	lab/lab down
