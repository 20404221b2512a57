"""What the snapshots tell about a batch over time: timeline, progress series, ETA and warnings."""


def batch_history(batch):
    """Placeholder until the history work lands; the detail page includes batches/_history.html with this."""
    return None
