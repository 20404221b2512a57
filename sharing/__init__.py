"""Read-only share links: a batch's page (and optionally its results) for people without an account."""
