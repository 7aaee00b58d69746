"""The browser check the README's screenshot script uses (docs/images/screenshots.py), for the tests."""
import importlib.util

import pytest

from kitlib import config

_spec = importlib.util.spec_from_file_location("screenshots", config.repo_root() / "docs" / "images" / "screenshots.py")
screenshots = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(screenshots)

needs_chromium = pytest.mark.skipif(screenshots.chromium() is None,
                                    reason="no chromium on the PATH (apt-get install chromium): the page is "
                                           "checked without a browser by summary.broken_links only")
