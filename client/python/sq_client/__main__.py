"""`python3 -m sq_client COMMAND ...`: the command-line client (cli.py)."""
import sys

try:
    from .cli import main
except ImportError as e:  # most often: the sq.v1 stubs were not generated
    print(f"sq_client: {e}", file=sys.stderr)
    sys.exit(2)

sys.exit(main())
