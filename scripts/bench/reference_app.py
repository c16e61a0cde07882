"""The reference endpoint of figure (r): the bare FastAPI POST that issue 6's targets are scaled to.

A JSON body validated by a model and an HS256 JWT verified by PyJWT in an ``async`` dependency,
answered with 201 and no database, broker or Redis behind it. The issue measured about 3,000
requests/s for this under uvicorn with two worker processes, and set the API target (2,000 job
creations/s) at two thirds of it; measured in the same run as the other figures, it tells how
fast the machine at hand is. Run by ``scenarios.start_reference``:

    BENCH_REFERENCE_SECRET=... uvicorn scripts.bench.reference_app:app --workers 2
"""

import os
from typing import Annotated, Any

import jwt
from fastapi import Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel

SECRET = os.environ["BENCH_REFERENCE_SECRET"]

app = FastAPI()


class JobBody(BaseModel):
    type: str
    payload: Any = None


async def subject(authorization: Annotated[str, Header()] = "") -> str:
    scheme, _, token = authorization.partition(" ")
    try:
        if scheme.lower() != "bearer":
            raise jwt.InvalidTokenError
        claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"require": ["exp"]})
    except jwt.InvalidTokenError:
        raise HTTPException(401, "invalid token") from None
    sub: str = claims["sub"]
    return sub


@app.post("/jobs", status_code=201)
async def create(body: JobBody, sub: Annotated[str, Depends(subject)]) -> dict[str, Any]:
    return {"type": body.type, "payload": body.payload, "userId": sub}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "UP"}
