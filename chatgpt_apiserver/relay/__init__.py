"""Getting an answer and relaying it: attempts and failover, streams, SSE and the upstream body."""
