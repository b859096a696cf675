"""http connectors."""
