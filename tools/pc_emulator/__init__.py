"""A local Partner Center integration-sandbox emulator (HTTPS on loopback), with an Entra ID token endpoint:
``python -m tools.pc_emulator --help``. Development tool: never deployed.

It behaves like the documented API (../shared/reference/partner-center-api.md): customers (get, paged list),
entitlements (paged, nested), orders (get, list, PATCH to cancel with a configurable lag), subscriptions of every
kind a 2026 sandbox customer holds (NCE, SaaS, Azure plan with its Azure subscriptions, software, legacy; list, get,
PATCH, and the plan's azureEntitlements with their cancel; ../shared/reference/partner-center-subscriptions.md),
DELETE customer with the documented refusal while orders or subscriptions block it, error bodies in the documented
shapes, a per-tenant rate limit answering 429 with Retry-After, a UTF-8 BOM on every body, and injected faults.
Admin endpoints under ``/_emulator/`` expose the state, the request log, the knobs and the faults.

Laid out like moto's services (../shared/reference/style.md, section 8):
- ``models.py``: the state and its rules, typed (``Sandbox``, ``Customer``, ``Order``, ``Subscription``), raising
  typed errors;
- ``exceptions.py``: every error and its wire body;
- ``faults.py``: injected faults and the rate limit;
- ``identity.py``: Entra ID (tokens, OpenID configuration, signing keys);
- ``responses.py``: the Partner Center handlers, HTTP in and out;
- ``admin.py``: the admin API;
- ``urls.py``: the route tables;
- ``server.py``: the HTTP server and TLS, and the one request handler that parses, calls and renders.
"""
