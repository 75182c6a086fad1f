"""Noisy tenant: everything it prints must land in its log, not the frames."""

import os
import sys

print("noisy tenant imported")


async def fetch(request, env, ctx):
    print("noisy fetch says hi")
    print("noisy to stderr", file=sys.stderr)
    # Looks like a frame length prefix followed by junk.
    os.write(1, b"\x00\x00\x00\x10\xff\xfe\x00junk\n")
    sys.stdout.buffer.write(b"\xc1\xc1 binary junk\n") if hasattr(
        sys.stdout, "buffer"
    ) else None
    return {"ok": True}
