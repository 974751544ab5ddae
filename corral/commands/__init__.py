"""Subcommands of ``corral``; each module has ``configure_parser`` and ``run``."""
