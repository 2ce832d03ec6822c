"""The app file compiled once in the master and handed to workers by the fork
(app.compile_app / refresh_compiled / load_app(spec, compiled)): a worker runs
that code only while the file on disk still holds the source it came from."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from unicornish.app import CompiledApp, compile_app, file_stamp, load_app, refresh_compiled

APP = 'VERSION = "{v}"\ndef worker_start(worker):\n    pass\n'


@pytest.fixture
def app(tmp_path: Path):
    path = tmp_path / "compiled_app_under_test.py"
    path.write_text(APP.format(v="v1"))
    yield path
    sys.modules.pop("compiled_app_under_test", None)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def rewrite_in_place(path: Path, source: str) -> None:
    """Same size, old mtime put back (rsync -a, cp -p): only ctime tells."""
    st = os.stat(path)
    path.write_text(source)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_the_workers_code_is_the_masters_when_the_file_is_unchanged(app):
    compiled = compile_app(str(app))
    assert compiled.path == str(app.resolve()) and compiled.code.co_filename == compiled.path
    # A code object that says something else, for the same bytes: it is the one run.
    marked = CompiledApp(
        compiled.path, compiled.source, compile(APP.format(v="master"), compiled.path, "exec"), ()
    )
    assert load_app(str(app), marked).module.VERSION == "master"


def test_a_changed_file_is_compiled_by_the_worker_itself(app):
    compiled = compile_app(str(app))
    rewrite_in_place(app, APP.format(v="v2"))
    assert load_app(str(app), compiled).module.VERSION == "v2"


def test_code_of_another_file_is_never_used(app, tmp_path):
    other = tmp_path / "other.py"
    other.write_text(APP.format(v="v1"))  # the same bytes, another file
    compiled = compile_app(str(other))
    marked = CompiledApp(compiled.path, compiled.source, compile("VERSION = 'x'", "o", "exec"), ())
    assert load_app(str(app), marked).module.VERSION == "v1"


def test_refresh_keeps_the_code_while_the_file_is_unchanged(app):
    first = refresh_compiled(str(app), None)
    assert first is not None
    assert refresh_compiled(str(app), first) is first


def test_refresh_compiles_anew_after_an_edit_in_place(app):
    first = refresh_compiled(str(app), None)
    assert first is not None
    rewrite_in_place(app, APP.format(v="v2"))
    assert file_stamp(str(app)) != first.stamp
    second = refresh_compiled(str(app), first)
    assert second is not None and second is not first
    assert b"v2" in second.source


def test_refresh_gives_none_for_a_broken_or_missing_file(app):
    first = refresh_compiled(str(app), None)
    app.write_text("def broken(:\n")
    assert refresh_compiled(str(app), first) is None  # the worker reports the error itself
    app.unlink()
    assert refresh_compiled(str(app), first) is None


def test_a_dotted_module_is_never_compiled_in_the_master():
    assert refresh_compiled("some.module", None) is None
