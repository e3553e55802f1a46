"""The `avtime` command line: `main.py` and one module per subcommand in `commands/`."""
