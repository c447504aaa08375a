"""Deployment tooling: local services for development and tests."""
