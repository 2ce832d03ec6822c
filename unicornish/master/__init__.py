"""The master process: one loop (master.py) and its duties, each acting and
saying when it next needs the master; wiring.py builds and connects them."""
