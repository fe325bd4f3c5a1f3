"""`agentmx serve`: the HTTP API (send, inbox, blobs, metrics) as one ASGI application.

    app.py      the routes and their error handling
    guard.py    every request bounded in size, time and number
    context.py  what the routes share (config, store, inbox readers, listener, thread pool)
    inbox.py    the inbox API, long-poll and event stream
    news.py     one read of new inbox rows per wake-up, for every open wait and stream
    sending.py  POST /v1/send (batch.py, scheduling.py; sendnow.py: one request sent now)
    blobs.py    signed raw-message and attachment URLs
    streams.py  caps on open waits and streams
    server.py   Hypercorn: foreground, or in a thread
"""
