# Two commands on a fresh machine: `make book` and `make test`. Each creates .venv if missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= $(or $(AVDIT_PROFILE),smoke)

.PHONY: book test browser-deps clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

## build the HTML book (every chapter executed in $(PROFILE); a failing notebook fails the build)
book: $(STAMP)
	AVDIT_PROFILE=$(PROFILE) $(VENV)/bin/jupyter-book build . -W -n --keep-going
	@echo "open _build/html/index.html"

## package tests + every chapter through nbval + the rendered chapter 1 in headless Chromium
test: $(STAMP) browser-deps
	AVDIT_PROFILE=$(PROFILE) $(VENV)/bin/pytest -q tests book --nbval-lax --nbval-current-env -p no:cacheprovider

## Debian's Chromium for the browser test (skipped, with a message, where it cannot be installed)
browser-deps:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  ( [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ) || \
	  echo "note: chromium not installed; the browser test will be skipped"

clean:
	rm -rf _build .pytest_cache
