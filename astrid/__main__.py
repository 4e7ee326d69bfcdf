"""``python -m astrid``: the ``astrid`` command (the same as ``python -m astrid.cli``)."""

from .cli import main

if __name__ == "__main__":
    main()
