"""Lazily imported code: 144 standard-library modules, imported 4 per task over a
worker's first 36 tasks, as a real app imports on first use (a template
engine, an e-mail backend, a parser...). Their module objects, functions,
classes and constants are the state that `--preload` cannot share, because
the master never runs a task.

A module that this Python lacks is skipped (nothing else changes). Each warm
task reads a few public attributes of the imported modules, uniformly spread
(BENCH_LAZY_READS): the reference counts it changes un-share pages after a
fork, as a real app's calls into them do.
"""

import importlib
import os
import warnings
from types import ModuleType

# Modules a unicornish or gunicorn worker has already imported are left out
# (their import would cost nothing), and so are those removed in 3.13 (PEP 594).
MODULES = """
argparse array ast asyncio base64 bdb calendar cmath cmd code codeop colorsys compileall
concurrent.futures concurrent.futures.process configparser contextvars copy cProfile csv ctypes
ctypes.util dataclasses datetime dbm dbm.dumb decimal difflib dis doctest email email.generator
email.headerregistry email.mime.application email.mime.multipart email.mime.text email.parser
email.policy email.utils ensurepip filecmp fileinput fractions ftplib getopt getpass gettext
glob graphlib gzip hashlib heapq hmac html html.entities html.parser http http.client
http.cookiejar http.cookies http.server imaplib importlib.metadata inspect json json.decoder
json.encoder locale logging logging.config logging.handlers mailbox mimetypes modulefinder
multiprocessing multiprocessing.managers multiprocessing.pool netrc numbers opcode optparse pdb
pickle pickletools pkgutil platform plistlib poplib pprint profile pstats py_compile pyclbr
pydoc pydoc_data.topics queue quopri rlcompleter runpy sched secrets shelve shlex smtplib
socketserver sqlite3 ssl statistics string stringprep subprocess symtable sysconfig tabnanny
tarfile textwrap timeit token tokenize tomllib trace tracemalloc unicodedata unittest
unittest.mock urllib.request urllib.robotparser uuid venv wave webbrowser wsgiref
wsgiref.simple_server wsgiref.validate xml.dom.minidom xml.dom.pulldom xml.etree.ElementTree
xml.parsers.expat xml.sax xml.sax.saxutils xmlrpc.client xmlrpc.server zipapp zoneinfo
""".split()
_PER_STEP = 4
_READS = int(os.environ.get("BENCH_LAZY_READS", "8"))

LOADED: list[ModuleType] = []
_names: list[tuple[ModuleType, str]] = []
_next = 0
_cursor = 0


def complete() -> bool:
    return _next >= len(MODULES)


def step() -> None:
    """One task's share of the build: the next 4 imports."""
    global _next
    for name in MODULES[_next : _next + _PER_STEP]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mod = importlib.import_module(name)
        except ImportError:
            continue
        LOADED.append(mod)
        _names.extend((mod, a) for a in dir(mod) if not a.startswith("_"))
    _next += _PER_STEP


def read() -> int:
    """A warm task's use of the modules: a few attribute reads, spread over all of them."""
    global _cursor
    n = len(_names)
    if not n:
        return 0
    found = 0
    for _ in range(_READS):
        _cursor = (_cursor + 7919) % n
        mod, attr = _names[_cursor]
        found += getattr(mod, attr, None) is not None
    return found
