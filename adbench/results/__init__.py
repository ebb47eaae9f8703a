"""The results layer: what a run leaves on disk and every later command reads.

``store`` (one atomic JSON record per job and category), ``checks`` (every record is checked
when read), ``records`` (building a record), ``predictions`` (saved test outputs beside a
record), ``claims`` (which run is doing which job in a shared results folder)."""
