"""One module per ``potline`` subcommand, each with ``add_arguments(parser)`` and ``main(args) -> int``."""
