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
        headers = {
            "header": {"x-customer-name": "Zo\u00eb"},
            "host": {"Host": "elsewhere.example"},
            "length": {"Content-Length": "5"},
        }.get(odd, {})
        url = {
            "url": target + "/a\nforged line",
            "port": "http://127.0.0.1:99999/",
            "port0": "http://127.0.0.1:0/",
            "ipv6": "http://[::1/",
            "userinfo": target.replace("http://", "http://user:pass@"),
        }.get(odd, target)
        options = {"headers": headers, "body": b"0123456789"}
        if odd == "nan":
            options = {"timeout": float("nan")}  # ctx.fetch only
        try:
            await call(url, **options)
        except PermissionError as exc:
            return {"refused": str(exc)}
        return {"refused": None}
    if request.path == "/fetch-within":
        try:
            await ctx.fetch(target, timeout=float(request.query["s"][0]))
        except ConnectionError as exc:
            return {"failed": str(exc)}
        return {"failed": None}
    if request.path == "/fetch-typed-wrong":
        try:
            await ctx.fetch(12345)
        except TypeError as exc:
            return {"type_error": str(exc)}
        return {"type_error": None}
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
