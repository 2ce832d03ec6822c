"""unicornish: a Unicorn-faithful prefork process master for Python."""

__version__ = "0.1.0"
