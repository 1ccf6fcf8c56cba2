"""Context Cluster detection backbone."""
