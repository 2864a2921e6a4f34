"""The only package that touches asyncio libraries (asyncpg, grpclib).

Everything here is used from trio code running inside `trio_asyncio.open_loop()` and
exposes trio-shaped APIs: async context managers, memory channels, plain exceptions.
Each crossing of the bridge costs ~0.1 ms, so the APIs cross once per batch.

- `pg`     the asyncpg pool (`Database`: one crossing per call or transaction), LISTEN
           as a trio channel, `DatabaseUnavailable` for every way of not reaching it
- `grpc`   trio handlers served by grpclib (`worker_service`, `coordinator_service`,
           typed by `WorkerHandlers` / `CoordinatorHandlers`), and the typed peers
           `WorkerPeer` / `CoordinatorPeer`: one long-lived channel each, one method per
           RPC, every failure an `RpcFailed` that says whether it was delivered
"""
