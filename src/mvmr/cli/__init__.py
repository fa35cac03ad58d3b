"""The command lines: argument parsing only. Each command imports what it runs (its protocol, and so torch)
inside its ``main``, after parsing, so that ``--help`` answers without importing torch
(tests/protocols/test_cli_help.py)."""
