# Quick start: `make repro` runs the pipeline, `make test` runs the tests.
# Both create .venv from requirements.txt first when it is missing or stale.
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: repro test bench venv

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -r requirements.txt
	touch $@

repro: venv
	dvc repro

test: venv
	python -m pytest -q tests

bench: venv
	python bench/builtin_generator.py
	python bench/local_loader.py
	python bench/dedup_speed.py
	python bench/quality_speed.py
	python bench/tokenize_speed.py
	python bench/train_speed.py
	python bench/eval_speed.py
