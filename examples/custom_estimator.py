"""A custom token estimator: registered by a plugin object, selected from TOML, used by a session.

Run with ``python examples/custom_estimator.py`` (offline, nothing left behind).

The estimator, ``words``, counts about 1.3 tokens per word plus a fixed cost per message (a rough
rule for English prose; tool calls count their name and arguments as words too). It is registered
through the ``register_token_estimators`` hook with an options model, so the TOML file can both
select it and tune it::

    [tokens]
    estimator = "words"

    [tokens.options]
    tokens_per_word = 1.5

An installed plugin would declare the same hook behind an entry point (see
``examples/plugin_package``); a host can register the object in process, as here.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from astrid import ContentEstimator, Message, ToolCall, ToolCallResult, hookimpl
from astrid.config import load_config
from astrid.errors import ConfigError
from astrid.messages import OpaqueContent, TextPart
from astrid.plugins import PluginContext, register_plugin, unregister_plugin
from astrid.store import open_store
from astrid.tokens import TokenEstimator


class WordOptions(BaseModel):
    """Options of the ``words`` estimator (the ``[tokens.options]`` table)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key is reported with the valid ones

    tokens_per_word: float = Field(default=1.3, gt=0, allow_inf_nan=False)
    per_message: int = Field(default=3, ge=0)


class WordEstimator:
    """Tokens = words x ``tokens_per_word`` (rounded up) + ``per_message``."""

    name = "words"

    def __init__(self, tokens_per_word: float = 1.3, per_message: int = 3) -> None:
        self.tokens_per_word = tokens_per_word
        self.per_message = per_message

    def _words(self, message: Message) -> int:
        content = message.content
        if isinstance(content, str):
            return len(content.split())
        if isinstance(content, ToolCallResult):
            return len(content.content.split())
        if isinstance(content, OpaqueContent):
            return len(json.dumps(content.value).split())
        words = 0
        for item in content:
            if isinstance(item, ToolCall):
                words += 1 + len(json.dumps(item.arguments).split())
            elif isinstance(item, TextPart):
                words += len(item.text.split())
        return words

    def estimate(self, message: Message) -> int:
        """Never negative, deterministic and cheap: what every estimator must be."""
        return math.ceil(self._words(message) * self.tokens_per_word) + self.per_message


class WordEstimatorPlugin:
    """The plugin object: one hook implementation registering ``words``."""

    @hookimpl
    def register_token_estimators(self, register: Any) -> None:
        """Register ``words`` with its options model."""

        def factory(options: WordOptions, context: PluginContext) -> WordEstimator:
            return WordEstimator(options.tokens_per_word, options.per_message)

        register("words", factory, WordOptions, "About 1.3 tokens a word, plus 3 a message.")


CONFIG_TOML = """\
[storage]
backend = "sqlite"          # <home>/astrid.db

[tokens]
estimator = "words"

[tokens.options]
tokens_per_word = 1.5

[git]
capture = "none"
"""

BAD_TOML = """\
[tokens]
estimator = "words"

[tokens.options]
tokens_per_wrod = 1.5
"""


def conversation() -> list[Message]:
    """A short conversation with a tool call."""
    return [
        Message.user("How many lines does the changelog have?"),
        Message.assistant_with_tools(
            [ToolCall(id="c1", name="line_count", arguments={"path": "CHANGELOG.md"})]
        ),
        Message.tool_result(ToolCallResult.success("c1", "1234 lines")),
        Message.assistant("The changelog has 1234 lines."),
    ]


def run(tmp: Path) -> None:
    os.environ["ASTRID_HOME"] = str(tmp / "home")
    config_path = tmp / "astrid.toml"
    config_path.write_text(CONFIG_TOML, encoding="utf-8")

    loaded = load_config(config_path)
    print(f"config: [tokens] estimator = {loaded.config.tokens.estimator!r}, "
          f"options {loaded.config.tokens.options}")
    with open_store(loaded) as store:
        estimator = store.token_estimator
        assert isinstance(estimator, TokenEstimator)
        print(f"store estimator: {estimator.name} ({type(estimator).__name__}, "
              f"{getattr(estimator, 'tokens_per_word', '?')} tokens a word)")

        session = store.new_session("You count things.")  # gets the store's estimator
        for message in conversation():
            session.add_message(message)
            print(f"  {message.to_json()['role']:>9}: {estimator.estimate(message):>3} tokens")
        print(f"session token_count with 'words': {session.token_count}")

        baseline = sum(ContentEstimator().estimate(m) for m in session.messages)
        print(f"the same messages with 'content': {baseline}")

        store.save(session)
        loaded_session = store.load(session.id)
        assert loaded_session is not None
        print(f"reloaded: token_count {loaded_session.token_count} (stored), "
              f"estimator {loaded_session.token_estimator.name}")
        loaded_session.add_message(Message.user("Thanks!"))
        print(f"after one more message: {loaded_session.token_count}")

    bad_path = tmp / "bad.toml"
    bad_path.write_text(BAD_TOML, encoding="utf-8")
    try:
        load_config(bad_path)
    except ConfigError as exc:
        print(f"a misspelt option is refused: {exc}")
    else:
        raise SystemExit("the misspelt option was accepted")


def main() -> None:
    previous_home = os.environ.get("ASTRID_HOME")
    register_plugin(WordEstimatorPlugin(), name="word-estimator")
    try:
        with tempfile.TemporaryDirectory(prefix="astrid-estimator-") as tmp:
            run(Path(tmp))
    finally:
        unregister_plugin("word-estimator")
        if previous_home is None:
            os.environ.pop("ASTRID_HOME", None)
        else:
            os.environ["ASTRID_HOME"] = previous_home


if __name__ == "__main__":
    main()
