import pytest

from sasa import env


def test_flags_are_read_at_call_time(monkeypatch):
    monkeypatch.setenv("SASA_LOG_BACKEND", "0")
    assert not env.log_backend()
    monkeypatch.setenv("SASA_LOG_BACKEND", "1")
    assert env.log_backend()
    monkeypatch.setenv("SASA_CACHE", "/tmp/somewhere")
    assert str(env.cache_dir()) == "/tmp/somewhere"


def test_chunk_elements_default_and_bad_value(monkeypatch):
    monkeypatch.delenv("SASA_CHUNK_ELEMENTS", raising=False)
    assert env.chunk_elements() == env.DEFAULT_CHUNK_ELEMENTS
    monkeypatch.setenv("SASA_CHUNK_ELEMENTS", "lots")
    with pytest.raises(ValueError, match="SASA_CHUNK_ELEMENTS must be a positive integer, got 'lots'"):
        env.chunk_elements()


def test_no_other_module_reads_sasa_variables():
    """Every SASA_* variable is read in sasa/env.py only."""
    import pathlib
    import re

    root = pathlib.Path(env.__file__).parent
    readers = [
        path.relative_to(root).as_posix() for path in root.rglob("*.py")
        if path.name != "env.py" and re.search(r"environ(\.get)?[\[(]\s*[\"']SASA_", path.read_text())
    ]
    assert readers == []
