"""Transport-agnostic media core: frame types, queues, sessions, the scheduler and metrics."""
