"""The only package that touches asyncio libraries (asyncpg, grpclib).

Everything here is used from trio code running inside `trio_asyncio.open_loop()` and
exposes trio-shaped APIs: async context managers, memory channels, plain exceptions.
Each crossing of the bridge costs ~0.1 ms, so the APIs cross once per batch.
"""
