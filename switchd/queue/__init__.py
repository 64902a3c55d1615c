"""Job queues: the embedded SQLite queue and (later) Faktory, behind one interface."""
