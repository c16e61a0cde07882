"""Key-value stores: one interface (``base``), Redis for production and an in-process twin."""

from cloudtask.kv.base import KV, Subscription

__all__ = ["KV", "Subscription"]
