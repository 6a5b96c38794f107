"""Test handler module without a register() function (the daemon must refuse it)."""

VALUE = 1
