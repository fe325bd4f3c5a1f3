.PHONY: test bootstrap bench demo
test:
	scripts/test
bootstrap:
	scripts/bootstrap
bench:
	bench/milter-throughput
demo:
	scripts/demo
