.PHONY: test bootstrap bench demo
test:
	scripts/test
bootstrap:
	scripts/bootstrap
bench:
	bench/milter-throughput
demo:
	@echo "The demo comes with the operations release (issue 5); today: scripts/test runs everything end to end." >&2
	@exit 1
