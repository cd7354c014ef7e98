.PHONY: run test lint demo
run:   ## install and run web + WhatsApp worker + job cluster (embedded default)
	scripts/run
test:  ## install and run the whole suite (embedded, then PostgreSQL + Redis)
	scripts/test
demo:  ## the app against the WhatsApp simulator: write as a phone at http://127.0.0.1:8765/
	scripts/demo
lint:
	.venv/bin/ruff check .
