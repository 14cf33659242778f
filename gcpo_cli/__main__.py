"""python -m gcpo_cli: the same as the gcpo command."""

from .cli import main

main()
