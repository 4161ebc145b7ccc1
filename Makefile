# Quick start: `make repro` runs the pipeline, `make test` runs the tests.
# Both create .venv from requirements.txt first when it is missing or stale.
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

# The research experiments (docs/experiments.md): PROFILE picks experiments/<PROFILE>.yaml.
PROFILE ?= cpu

.PHONY: repro test fuzz bench venv exp1 exp2 exp3 exp4 experiments report collapse

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -r requirements.txt
	touch $@

repro: venv
	dvc repro

# --durations: the slowest tests in every CI log, to keep the suite's time in view
test: venv
	python -m pytest -q --durations=15 tests

# The fuzz test of kind: local (tests/test_fuzz.py) with FUZZ_EXAMPLES cases per file
# type instead of CI's 300; the statistics say what the cases reached.
FUZZ_EXAMPLES ?= 5000
fuzz: venv
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) python -m pytest -q tests/test_fuzz.py -p no:cacheprovider --hypothesis-show-statistics

bench: venv
	python bench/builtin_generator.py
	python bench/local_loader.py
	python bench/dedup_speed.py
	python bench/quality_speed.py
	python bench/tokenize_speed.py
	python bench/train_speed.py
	python bench/eval_speed.py
	python bench/experiment_parallelism.py
	python bench/generate_speed.py
	python bench/world_learnability.py --minutes 3 --records 30000 --problems 50
	python bench/repro_time.py
	python -m bench.report

# Check an experiment's runs, run each one that has no row in the profile's runs.csv (one at a
# time; its row is added and committed as it finishes, so a clone elsewhere continues), then report.
exp1 exp2 exp3 exp4: venv
	python -m research.experiments check $@ --profile $(PROFILE)
	python -m research.experiments run $@ --profile $(PROFILE) --commit
	python -m research.report --profile $(PROFILE)

# The report from the committed runs.csv and this machine's experiments; exp4 correlates every model's metrics.
report: venv
	python -m research.report --profile $(PROFILE)

experiments: venv
	python -m research.experiments check --profile $(PROFILE)
	python -m research.experiments run exp1 exp4 exp3 exp2 --profile $(PROFILE) --commit
	python -m research.report --profile $(PROFILE)

# The distillation flywheel (docs/experiments.md: Model collapse): generations 0..collapse.generations,
# each trained on the last one's generated data; needs the pipeline's sample, tokenizer
# and judges. An interrupted run continues where it stopped.
collapse: venv
	dvc repro sample train_tokenizer builtin_eval judges
	python -m research.collapse
