"""Pure scheduling logic: no I/O, no trio, no asyncio. Time is always an argument.

    lifecycle   the task state machine, as a table: what each event (claim, report, loss,
                cancel) does to a task, and when it is stale; tm/db builds its SQL from it
    reports     report kinds, a worker's report, and the one merge of two reports of a task
    backoff     retry and reconnect delays (capped exponential, jittered)
    dispatch    credit: how many tasks each worker may be sent, and which worker gets which
    tasks       what a task is; client input checked into a NewTask
    schedules   recurring schedules: input, and which occurrences become tasks
    recurrence  when a cron expression or interval fires
    when        times as a person types them (`tm submit --at`)
    timefmt     RFC 3339 times on the wire
    ids         UUIDv7 task ids
    addresses   HOST:PORT
"""
