"""NATS JetStream connectors: a durable pull source, a deduplicating sink, stream provisioning.

`connection` shares one NATS client per named connection and creates the declared streams;
`source` and `sink` hold the node types (entry points `jetstream_source`, `jetstream_sink`).
"""
