"""Where the fused CPU kernel is built: one directory per source content, sources staged inside it."""
from sasa.functional import cpu_fused


def _checkout(root, text: str) -> list:
    root.mkdir()
    sources = [root / "a.cpp", root / "b.cpp"]
    for source in sources:
        source.write_text(f"// {source.name}\n{text}\n")
    return sources


def test_checkouts_with_the_same_sources_share_one_build_from_the_same_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("SASA_EXTENSIONS_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cpu_fused, "_SOURCES", _checkout(tmp_path / "one", "int x;"))
    first = cpu_fused._build_directory()
    first.mkdir(parents=True)
    staged = cpu_fused._staged_sources(first)
    assert [path.parent for path in staged] == [first / "src"] * 2
    assert staged[0].read_text() == "// a.cpp\nint x;\n"
    stamp = staged[0].stat().st_mtime_ns

    monkeypatch.setattr(cpu_fused, "_SOURCES", _checkout(tmp_path / "two", "int x;"))  # same content elsewhere
    assert cpu_fused._build_directory() == first
    assert cpu_fused._staged_sources(first) == staged and staged[0].stat().st_mtime_ns == stamp  # not rewritten

    monkeypatch.setattr(cpu_fused, "_SOURCES", _checkout(tmp_path / "three", "int y;"))  # edited sources
    assert cpu_fused._build_directory() != first
