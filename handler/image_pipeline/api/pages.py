"""The web page's routes (filled in by the page's own module)."""

routes: list = []
