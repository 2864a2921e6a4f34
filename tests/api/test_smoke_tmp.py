import trio
async def test_x(api):
    with trio.fail_after(30):
        for body in [
            b'{"command":"x","scheduled_at":"0001-01-01T00:00:00+05:30"}',
            b'{"command":"x","scheduled_at":"0999-01-01T00:00:00Z"}',
            b'{"command":"x","timeout_s":1' + b'0'*400 + b'}',
            b'{"command":"x","idempotency_key":"\\ud800"}',
            b'{"command":"x\\ud800"}',
            b'{"command":"x","scheduled_at":"2023-12-25T22:34:00\\ud800"}',
            b'{"command":"x","scheduled_at":"2023-12-25 22:34:00Z"}',
            b'{"command":"x","scheduled_at":"2023-12-25T22:34Z"}',
            b'{"command":"x","scheduled_at":"20231225T223400Z"}',
            b'{"command":"x","scheduled_at":"2023-12-25T22:34:00.123456789Z"}',
            b'{"command":"x","scheduled_at":"2023-12-25T22:34:00+24:00"}',
            b'{"command":"x","scheduled_at":"2023-W52-1T22:34:00Z"}',
            b'{"command":"x","max_attempts":1.0}',
            b'{"command":"x","timeout_s":1e-320}',
            b'{"tasks":[{"command":"a","idempotency_key":"k"},{"command":"b","idempotency_key":"k"}]}',
            b'{"command":"x","max_attempts":null,"timeout_s":null,"idempotency_key":null,"at_most_once":null,"scheduled_at":null}',
            b'{"command":"x", "command":"y"}',
            b'[' * 100000,
            b'\xef\xbb\xbf{"command":"bom"}',
        ]:
            r = await api.post("/tasks", content=body)
            print(body[:80], r.status_code, r.text[:300])
        r = await api.get("/tasks", params={"after": "MTAwMDAwMDAwMDAwMDAwMDAwOjEyMzQ1Njc4LTEyMzQtNTY3OC0xMjM0LTU2NzgxMjM0NTY3OA"})
        print(r.status_code, r.text[:300])
        for q in [{"limit": "-1"}, {"limit": "1_0"}, {"limit": "٣"}, {"status": "SCHEDULED"}]:
            r = await api.get("/tasks", params=q)
            print(q, r.status_code, r.text[:200])
        for p in ["/tasks/%20", "/tasks/x/cancel", "/tasks/", "/status?task_id=%00", "/tasks/12345678123456781234567812345678"]:
            r = await api.get(p)
            print(p, r.status_code, r.text[:200])
        r = await api.post("/tasks/zzz/cancel"); print(r.status_code, r.text)
        r = await api.request("HEAD", "/tasks"); print("HEAD", r.status_code, r.headers)
        r = await api.request("OPTIONS", "/tasks"); print("OPTIONS", r.status_code, r.headers, r.text)
        r = await api.get("/metrics"); print("metrics", r.status_code, r.text[:100])
        r = await api.get("/openapi.json"); print("openapi", r.status_code, r.text[:100])
