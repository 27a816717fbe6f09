"""The Ray backend: the same farm, world and patterns on a Ray cluster.

Imported only when a Farm asks for backend="ray"; carmp without Ray never imports it.
"""
