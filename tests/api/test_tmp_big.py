import time
import trio
MIB = 1024 * 1024
async def test_a(api):
    with trio.fail_after(20):
        t = time.time()
        r = await api.post("/schedule", content=b"a" * (33 * MIB))
        print("A", time.time() - t, r.status_code)
async def test_b(api):
    with trio.fail_after(20):
        r = await api.get("/healthz")
        t = time.time()
        r = await api.post("/schedule", content=b"a" * (33 * MIB))
        print("B", time.time() - t, r.status_code)
