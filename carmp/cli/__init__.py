"""The `carmp` command: one module per command family, each adding its subcommands."""
