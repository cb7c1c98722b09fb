"""The `diveq-codec` command line (codec/cli/app.py is its entry point)."""
