"""What happened to a deletion request: GET /api/deletions/{correlationId} or /api/deletions?customerTenantId=<guid>
(trigger: HTTP, function key, GET only). Reads the request ledger; makes no Partner Center call."""

import azure.functions as func

from shared.app import run_deletion_status


def main(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    reply = run_deletion_status(req.route_params, req.url, context)
    return func.HttpResponse(reply.text, status_code=reply.status, headers=reply.headers)
