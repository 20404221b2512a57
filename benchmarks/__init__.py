"""batchboard's benchmarks: each module measures one concern and prints its figures beside their targets.

Run one with `python -m benchmarks.<name>` (`--help` lists its options), or all of them in turn with
`python -m benchmarks` (what `make bench` does). Each runs in a scratch database of its own, never yours. To add one,
write a module runnable as `python -m benchmarks.<name>` and list it in MODULES.
"""

MODULES = (
    "pages",
    "scale",
    "cost",
    "production",
    "results",
    "retry",
    "hostile",
    "tasks",
    "webhooks",
    "connections",
    "notifications",
    "api",
    "split",
)
