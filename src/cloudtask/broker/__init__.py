"""Message brokers: one interface (``base``), RabbitMQ for production and an in-process twin."""

from cloudtask.broker.base import Broker, Delivery, Handler, OutgoingMessage, QueueStats

__all__ = ["Broker", "Delivery", "Handler", "OutgoingMessage", "QueueStats"]
