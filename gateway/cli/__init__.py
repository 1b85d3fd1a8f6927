"""cpmictl, the operator command line."""
