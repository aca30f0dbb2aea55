"""Cancel a customer's orders and start polling (trigger: %DELETE_CUSTOMER_QUEUE%)."""

import azure.functions as func

from shared.app import run_delete_customer


def main(msg: func.QueueMessage, context: func.Context) -> None:
    run_delete_customer(msg, context)
