"""Results: splat detection in kernel logs, JUnit reading and run-to-run comparison."""
