"""Wire formats (records.py) and the clients that speak to each server.

The clients run under trio (the mount, the CLI) and under asyncio (the daemons talking to each
other): httpx picks the event loop it runs on.
"""
