"""Token estimators count UTF-8 bytes without re-encoding ASCII text."""

from __future__ import annotations

import pytest

from astrid.messages import Message
from astrid.tokens import ContentEstimator, OriginalEstimator, RunningEstimate, _utf8_size

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


class CountingEstimator(ContentEstimator):
    """The default estimator, counting the messages it is asked about."""

    def __init__(self) -> None:
        self.asked = 0

    def estimate(self, message: Message) -> int:
        self.asked += 1
        return super().estimate(message)


def _full(estimator: ContentEstimator, messages: list[Message]) -> int:
    return sum(ContentEstimator.estimate(estimator, m) for m in messages)


def test_running_estimate_counts_only_what_was_appended() -> None:
    estimator = CountingEstimator()
    running = RunningEstimate()
    messages = [Message.user(f"question {i} " * 20) for i in range(100)]
    assert running.total(estimator, messages) == _full(estimator, messages)
    assert estimator.asked == 100
    for i in range(50):  # a conversation growing by two messages a call
        messages += [Message.assistant(f"answer {i}"), Message.user(f"next {i}")]
        assert running.total(estimator, messages) == _full(estimator, messages)
    assert estimator.asked == 200
    assert running.total(estimator, messages) == _full(estimator, messages)
    assert estimator.asked == 200  # nothing new: nothing estimated


def test_running_estimate_recounts_when_the_head_changed() -> None:
    estimator = CountingEstimator()
    running = RunningEstimate()
    messages = [Message.user(f"message {i} " * (i + 1)) for i in range(30)]
    running.total(estimator, messages)
    # a summarized head, a message replaced in the middle, a shorter list, another estimator
    summarized = [Message.assistant("summary"), *messages[20:]]
    assert running.total(estimator, summarized) == _full(estimator, summarized)
    replaced = list(summarized)
    replaced[3] = Message.user("a much longer replacement " * 40)
    assert running.total(estimator, replaced) == _full(estimator, replaced)
    assert running.total(estimator, replaced[:4]) == _full(estimator, replaced[:4])
    original = OriginalEstimator()
    assert running.total(original, replaced) == sum(original.estimate(m) for m in replaced)
    assert running.total(estimator, tuple(replaced)) == _full(estimator, replaced)
