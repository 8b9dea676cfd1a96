"""`python -m videoserve.cli`: the same command as the `videoserve` script."""

from videoserve.cli.main import app

app(prog_name="videoserve")
