"""The cloud side of the bridge: the command API; later CloudEvents forwarding."""
