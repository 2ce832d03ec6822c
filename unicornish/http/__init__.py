"""HTTP/1.1 for the HTTP worker kinds: strict request parsing (parser.py) and
the one-thread connection loop that buffers requests and writes responses
(server.py). Imported only by a worker that serves HTTP."""
