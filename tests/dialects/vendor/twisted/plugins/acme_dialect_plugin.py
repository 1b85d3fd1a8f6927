from acme_dialect import acme

__all__ = ["acme"]
