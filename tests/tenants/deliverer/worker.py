"""Deliverer tenant: ctx.deliver and ctx.fetch to a URL given in the query."""


async def fetch(request, env, ctx):
    target = request.query["to"][0]
    if request.path == "/deliver":
        delivery = await ctx.deliver(target, body=request.body)
        return {"delivery": delivery.id}
    if request.path == "/fetch":
        try:
            response = await ctx.fetch(target, method="POST", body=b"ping")
        except PermissionError as exc:
            return {"refused": str(exc)}
        return {"status": response.status, "body": response.json()}
    if request.path == "/fetch-many":
        results = []
        for _ in range(int(request.query["n"][0])):
            try:
                await ctx.fetch(target, method="POST", body=b"x")
                results.append("ok")
            except PermissionError as exc:
                results.append(str(exc))
        return {"results": results}
    return {}
