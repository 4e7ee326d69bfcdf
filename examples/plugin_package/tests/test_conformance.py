"""The storage contract, checked with astrid's own conformance suite, plus the registration."""

from __future__ import annotations

from pathlib import Path

import astrid_example_storage
import pytest
from astrid_example_storage import JsonlBackend
from astrid_example_storage.backend import FORMAT_VERSION

from astrid import Message
from astrid.errors import SchemaVersionError
from astrid.plugins import PluginContext, get_implementation, register_plugin, registry
from astrid.store import SessionStore
from astrid.testing import StorageConformance


class TestJsonlBackend(StorageConformance):
    """Every test of ``astrid.testing.StorageConformance`` against the jsonl backend."""

    def make_backend(self, tmp_path: Path) -> JsonlBackend:
        """A fresh, empty backend in an empty directory."""
        return JsonlBackend(tmp_path / "jsonl")

    def reopen_backend(self, backend: JsonlBackend, tmp_path: Path) -> JsonlBackend:
        """A second instance over the same files (a restart, or a second process)."""
        return JsonlBackend(tmp_path / "jsonl")


def _ensure_registered() -> None:
    # Installed, the entry point registers the plugin; from a source checkout, register it here.
    if "jsonl" not in registry("storage"):
        register_plugin(astrid_example_storage, name="example-storage")


def test_the_backend_is_registered_and_built_from_options(tmp_path: Path) -> None:
    _ensure_registered()
    impl = get_implementation("storage", "jsonl")
    backend = impl.create({"directory": "sessions-here", "fsync": False}, PluginContext(tmp_path))
    assert isinstance(backend, JsonlBackend)
    assert backend.directory == tmp_path / "sessions-here"
    with pytest.raises(ValueError, match="fsnyc"):
        impl.create({"fsnyc": False}, PluginContext(tmp_path))


def test_a_torn_last_line_is_ignored_and_cut_off(tmp_path: Path) -> None:
    store = SessionStore(JsonlBackend(tmp_path / "jsonl", fsync=False))
    session = store.new_session("p")
    session.add_message(Message.user("kept"))
    store.save(session)
    path = tmp_path / "jsonl" / "sessions" / f"{session.id.bare}.jsonl"
    with open(path, "ab") as fh:
        fh.write(b'{"op":"save","revision":2,"mess')  # a crash in the middle of a save
    loaded = store.load(session.id)
    assert loaded is not None and [m.text() for m in loaded.messages] == ["kept"]
    loaded.add_message(Message.user("after the crash"))
    store.save(loaded)
    assert path.read_bytes().count(b"\n") == 2 and path.read_bytes().endswith(b"\n")
    again = store.load(session.id)
    assert again is not None
    assert [m.text() for m in again.messages] == ["kept", "after the crash"]


def test_a_newer_format_is_refused(tmp_path: Path) -> None:
    JsonlBackend(tmp_path / "jsonl").close()
    (tmp_path / "jsonl" / "FORMAT").write_text(f"{FORMAT_VERSION + 1}\n")
    with pytest.raises(SchemaVersionError, match="newer"):
        JsonlBackend(tmp_path / "jsonl")
