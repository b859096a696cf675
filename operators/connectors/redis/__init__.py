"""redis connectors."""
