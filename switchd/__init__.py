"""switchd: an event hub delivering published events to HTTP subscribers."""

__version__ = "0.1.0"
