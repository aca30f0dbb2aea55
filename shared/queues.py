"""Sending to storage queues the way the Functions host reads them: Base64 text, queue created when missing."""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.queue import QueueServiceClient

from shared.config import MAX_QUEUE_DELAY_SECONDS

__all__ = ["QueuePublisher", "encode_for_trigger"]

log = logging.getLogger("customer_deletion.queues")


def encode_for_trigger(data: bytes | str) -> str:
    """The stored text of a message a queue trigger with ``messageEncoding: base64`` decodes to ``data``."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    return base64.b64encode(raw).decode("ascii")


class QueuePublisher:
    """Sends Base64-encoded messages; creates a queue the first time a send finds it missing."""

    def __init__(self, service: QueueServiceClient):
        self._service = service
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _client(self, queue: str) -> Any:
        with self._lock:
            client = self._clients.get(queue)
            if client is None:
                client = self._service.get_queue_client(queue)
                self._clients[queue] = client
            return client

    def send(self, queue: str, data: bytes | str, *, delay: int = 0, time_to_live: int = -1) -> str:
        """Send ``data`` hidden for ``delay`` seconds; ``time_to_live`` -1 never expires. Returns the message id."""
        if not 0 <= delay <= MAX_QUEUE_DELAY_SECONDS:
            raise ValueError(f"queue delay must be 0..{MAX_QUEUE_DELAY_SECONDS} seconds, not {delay}")
        if time_to_live != -1 and time_to_live <= delay:
            raise ValueError("time_to_live must be longer than the delay")
        text = encode_for_trigger(data)
        client = self._client(queue)
        try:
            sent = client.send_message(text, visibility_timeout=delay, time_to_live=time_to_live)
        except ResourceNotFoundError:
            log.info("queue %s does not exist; creating it", queue)
            with contextlib.suppress(ResourceExistsError):
                client.create_queue()
            sent = client.send_message(text, visibility_timeout=delay, time_to_live=time_to_live)
        return str(sent.id)
