"""Talking to a running master: the control socket's server (server.py), the
`status` and `ctl` client (client.py), and the commands both read (commands.py)."""
