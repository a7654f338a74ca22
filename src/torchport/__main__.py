"""`python -m torchport` runs the `torchport` command."""

from torchport.cli.main import main

main()
