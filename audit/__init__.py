"""The audit log: who cancelled, created or downloaded what, every login and lockout: when, from where, outcome."""
