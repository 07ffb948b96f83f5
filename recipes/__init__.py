"""The shipped training recipes (one TOML file per model and dataset); `python -m recipes NAME` trains one."""
