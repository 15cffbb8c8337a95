"""Execution: tasks and executors (serial, threads, dask), and the checkpoint of finished tasks."""
