"""Reach pytest's JUnit writer to add testsuite properties after the session has run.

pytest has no public way to do that outside a fixture (``record_testsuite_property`` needs one); its writer
is in ``config.stash`` under a key of the private ``_pytest.junitxml``. This module is the one place that
touches it.
"""

from __future__ import annotations

from typing import Any, Optional

import pytest


def junit_writer(config: pytest.Config) -> Optional[Any]:
    """The session's JUnit writer (``--junitxml``), or None."""
    from _pytest.junitxml import xml_key

    return config.stash.get(xml_key, None)
