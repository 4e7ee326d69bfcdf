"""``python -m astrid.cli``: the ``astrid`` command."""

from . import main

if __name__ == "__main__":
    main()
