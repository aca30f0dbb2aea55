"""List the sandbox's customers and report or enqueue the deletion of
those the policy selects (trigger: %SWEEP_SCHEDULE%)."""

import azure.functions as func

from shared.app import run_sweep_customers


def main(timer: func.TimerRequest, context: func.Context) -> None:
    run_sweep_customers(timer, context)
