"""One poll hop: read the orders, re-enqueue with a growing delay, or DELETE the customer."""

import azure.functions as func

from shared.app import run_poll_orders


def main(msg: func.QueueMessage, context: func.Context) -> None:
    run_poll_orders(msg, context)
