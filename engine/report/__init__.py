"""Self-contained HTML reports (inline SVG from matplotlib): ``headstart report``, ``eval --html``, ``sweep --html``."""
