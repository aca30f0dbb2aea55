"""The customer-deletion app's own package (imported as ``from shared import ...``)."""
