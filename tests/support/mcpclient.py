"""MCP's own client (the mcp SDK) over streamable HTTP at serve's /mcp, with an API key."""
from __future__ import annotations

import asyncio


def mcp_calls(url: str, key: str, calls: list[tuple[str, dict]]) -> list:
    """Each (tool, arguments) called in order in one session; their results."""
    import httpx2
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def run():
        async with httpx2.AsyncClient(headers={"authorization": f"Bearer {key}"}, timeout=60) as http:
            async with streamable_http_client(url + "/mcp", http_client=http) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    return [await session.call_tool(name, args) for name, args in calls]
    return asyncio.run(run())
