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
    if request.path in ("/deliver-odd", "/fetch-odd"):
        call = ctx.deliver if request.path == "/deliver-odd" else ctx.fetch
        odd = request.query["odd"][0]
        headers = {"x-customer-name": "Zo\u00eb"} if odd == "header" else {}
        url = {"url": target + "/a\nforged line", "port": "http://127.0.0.1:99999/"}
        try:
            await call(url.get(odd, target), headers=headers, body=b"x")
        except PermissionError as exc:
            return {"refused": str(exc)}
        return {"refused": None}
    if request.path == "/deliver-secret":
        delivery = await ctx.deliver(f"{target}/hooks/{env.HOOK_TOKEN}", body=b"x")
        return {"delivery": delivery.id}
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
