"""The run layer: from ``adbench run``'s options to records on disk.

``options`` declares every run option once; ``runner`` checks them and plans the job grid;
``executors`` / ``ray_executor`` run jobs (one child process each, or Ray tasks); ``worker`` is
what runs inside a job's process; ``result_writer`` stores what a job returns. ``gpus``,
``workdirs`` and ``preload`` are their helpers. See docs/ARCHITECTURE.md for one job's path."""
