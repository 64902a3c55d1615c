"""`python -m switchd` runs the command line."""

from switchd.cli import main

main()
