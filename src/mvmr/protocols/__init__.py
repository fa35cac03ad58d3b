"""The protocols behind the entry scripts, imported by ``mvmr.cli`` after the command line is parsed."""
