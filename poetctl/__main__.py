"""``python -m poetctl`` runs the command-line tool."""

from .cli import main

main()
