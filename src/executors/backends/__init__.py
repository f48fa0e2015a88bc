"""Built-in backends, one module each, imported only when chosen."""
