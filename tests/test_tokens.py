"""Token estimators count UTF-8 bytes without re-encoding ASCII text."""

from __future__ import annotations

import pytest

from astrid.messages import Message
from astrid.tokens import ContentEstimator, OriginalEstimator, _utf8_size

TEXTS = ["", "plain ascii", "é", "naïve café", "\U0001f680 rocket", "lone \ud800 surrogate", "\x00"]


@pytest.mark.parametrize("text", TEXTS)
def test_utf8_size_is_the_encoded_length(text: str) -> None:
    assert _utf8_size(text) == len(text.encode("utf-8", "surrogatepass"))
    assert _utf8_size(text * 1000) == len((text * 1000).encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize("text", TEXTS)
def test_estimators_count_bytes_for_text(text: str) -> None:
    size = len(text.encode("utf-8", "surrogatepass"))
    assert OriginalEstimator().estimate(Message.user(text)) == size // 4
    base = ContentEstimator().estimate(Message.user(""))
    assert ContentEstimator().estimate(Message.user(text)) == base + (size + 3) // 4
