"""Event-time features: their definitions, the Redis store and the reference store."""
