"""The audit log: who cancelled, created, downloaded, logged in or was locked out, when, from where, with what outcome."""
