"""Function tests: each function's ``main`` called with a message received from Azurite as the host receives it."""

from __future__ import annotations

from tools.local_host.host import decode_base64_strict, to_function_message


def receive(queues, name, visibility=30):
    """Receive one message as the host does and build the function's QueueMessage from it: (message, raw) or None."""
    page = list(
        next(
            queues.client(name)
            .receive_messages(max_messages=1, messages_per_page=1, visibility_timeout=visibility)
            .by_page(),
            [],
        )
    )
    if not page:
        return None
    raw = page[0]
    return to_function_message(raw, decode_base64_strict(raw.content).decode("utf-8")), raw
