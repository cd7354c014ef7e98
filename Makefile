.PHONY: run test test-fast lint demo
run:   ## install and run web + WhatsApp worker + job cluster (embedded default)
	scripts/run
test:  ## install and run the whole suite (embedded, then PostgreSQL + Redis)
	scripts/test
test-fast:  ## units and in-process tests, embedded default only (no e2e processes, no browser)
	scripts/test --fast
demo:  ## the app against the WhatsApp simulator: write as a phone at http://127.0.0.1:8765/
	scripts/demo
lint:
	.venv/bin/ruff check .
	.venv/bin/lint-imports
