"""Serve a model over HTTP: an OpenAI-compatible API with streaming and batching, and a chat
page (`tinyllm-serve`, `python -m tinyllm.serve`; needs the `serve` extra).

    app.py         the FastAPI app: routes, the OpenAI wire format, limits, errors, the page
    scheduler.py   the decode thread: continuous batching of every active request
    server.py      the command line: load the model, bind, run uvicorn
    static/        the chat page (plain HTML, CSS, JavaScript; no CDN, no build step)
"""
