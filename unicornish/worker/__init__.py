"""A worker process (process.py) and the kinds it can run (kinds.py): the task
loop of --app (tasks.py), WSGI over HTTP/1.1 (wsgi.py), ASGI under uvicorn
(asgi.py); and the mold new workers fork from (mold.py)."""
