"""The audit log: who cancelled, created or downloaded what, every login and lockout, and every change to accounts,
groups, permissions and passwords: when, from where, outcome. Also the per-address login limit (login_limit)."""
