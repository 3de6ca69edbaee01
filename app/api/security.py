"""API-key check for the endpoints that change state (/admin/reload, /feedback)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader

API_KEY_HEADER = "X-API-Key"
_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="Set with CHURN_API_KEY on the server")


def require_api_key(request: Request, supplied: Annotated[str | None, Depends(_header)]) -> None:
    configured = request.app.state.settings.api_key
    if configured is None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail="this endpoint is disabled: set CHURN_API_KEY on the server to enable it"
        )
    if supplied is None or not secrets.compare_digest(supplied.encode(), configured.get_secret_value().encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail=f"missing or wrong API key (send it in the {API_KEY_HEADER} header)",
            headers={"WWW-Authenticate": "ApiKey"},
        )


ApiKeyRequired = Annotated[None, Depends(require_api_key)]
