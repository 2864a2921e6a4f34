"""Pure scheduling logic: no I/O, no trio, no asyncio. Time is always an argument."""
