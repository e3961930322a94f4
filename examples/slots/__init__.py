"""Workers whose processes hold many jobs at once (`concurrency`): see docs/concurrency.md."""
