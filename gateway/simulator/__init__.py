"""Simulated lot systems (`cpmictl lot simulate`): a reusable lot-side client, traffic and a runner."""
