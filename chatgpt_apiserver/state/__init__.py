"""Controller state: buckets, in-flight slots, cooldowns, disables and the breaker, local or in Redis."""
