"""Operator commands over a spool: replay, dead letters, prune, fsck, status.

Each module holds the logic of one command and no CLI code, so the
operations can be driven (and tested) from Python; ``poetctl/cli/*`` only
parses options and prints.
"""
