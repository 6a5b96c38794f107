"""Handler modules (noop, effects, no_register) and the test harness for tests/test_daemon*.py."""
