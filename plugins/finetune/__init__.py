"""Built-in headstart plugins, loaded only through entry points in group `headstart`."""
