"""postgres connectors."""
