.PHONY: run test lint demo
run:   ## install and run web + WhatsApp worker + job cluster (embedded default)
	scripts/run
test:  ## install and run the whole suite (embedded, then PostgreSQL + Redis)
	scripts/test
lint:
	.venv/bin/ruff check .
