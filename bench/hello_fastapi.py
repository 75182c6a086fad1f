"""The FastAPI baseline of the dispatch benchmark: one route, one answer.

It is what a service built the usual way costs: a FastAPI route that
returns the benchmark tenants' small JSON body, served by uvicorn with the
same settings as ``raw_asgi``. Switchyard keeps FastAPI out of its tenant
path; this row shows what that choice is worth.
"""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI()


@app.get("/")
async def hello() -> dict[str, object]:
    """Answer like a benchmark tenant, through FastAPI's routing."""
    return {"tenant": "c0", "ok": True}
