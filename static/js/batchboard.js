// Small behaviours htmx cannot do declaratively (the CSP forbids inline scripts and hx-on).
