"""pytest plugin (the ``pytest11`` entry point ``astrid``): rewrite the asserts of
``astrid.testing``, so a failing conformance check shows its values
(``'3b20...' != 'd473...'``), not a bare ``AssertionError``.

It only registers the rewrite (importing the light ``astrid`` package, not the kits), so it costs
nothing to a test run that does not use them.
"""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("astrid.testing")
