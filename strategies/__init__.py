"""Built-in strategies: one module per method, each registering itself with purify's registry."""
