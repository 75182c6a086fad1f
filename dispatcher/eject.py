"""``switchyard eject``: turn a declarative adapter into Python to edit.

The generated ``worker.py`` does exactly what the adapter did, written out:
the same trigger check and fields, the mapping as a plain dict, the same
target request and delivery, built from the same library pieces in
``sandbox_runner.adapters``. ``tenant.toml`` then points at it and keeps the
adapter's retry policy, and ``adapter.json`` stays beside it for reference.
"""

from __future__ import annotations

import re
from pathlib import Path

from sandbox_runner import adapters

TEMPLATE = '''"""Ejected from adapter.json ({name}): edit freely."""

from sandbox_runner import Response
from sandbox_runner.adapters import TARGETS, TRIGGERS, resolve

TRIGGER = TRIGGERS[{trigger!r}]
TARGET = TARGETS[{target!r}]


async def fetch(request, env, ctx):
    rejection = TRIGGER.check(request, env)
    if rejection is not None:
        return rejection
    payload = request.json()
    early = TRIGGER.early_answer(payload)
    if early is not None:
        return early

    fields = TRIGGER.read(payload)
    mapped = {{
{mapping}
    }}

    url, headers, body = TARGET.build(mapped, env)
    delivery = await ctx.deliver(url, json=body, headers=headers)
    return Response.json({{"delivery": delivery.id}}, status=202)
'''


def eject(folder: Path) -> Path:
    """Write ``worker.py`` for the adapter in ``folder``; return its path."""
    config = adapters.load_config(folder / "adapter.json")
    lines = [
        f"        {destination.split('.', 1)[1]!r}: resolve(fields, {source!r}),"
        for source, destination in config.mapping.items()
    ]
    source = TEMPLATE.format(
        name=config.name,
        trigger=config.trigger,
        target=config.target,
        mapping="\n".join(lines),
    )
    compile(source, "worker.py", "exec")
    script = folder / "worker.py"
    if script.exists():
        raise FileExistsError(f"{script} exists; move it away first")
    script.write_text(source)
    point_tenant_at(folder / "tenant.toml", config.retry_policy.max)
    return script


def point_tenant_at(toml: Path, max_attempts: int) -> None:
    """Make tenant.toml run worker.py, with the adapter's attempts kept."""
    text = toml.read_text()
    text, replaced = re.subn(
        r'(?m)^script\s*=\s*"adapter\.json"\s*$', 'script = "worker.py"', text
    )
    if not replaced:
        raise ValueError(f'{toml} does not say script = "adapter.json"')
    if re.search(r"(?m)^\[retry\]", text):
        text = re.sub(r"(?m)^max_attempts\s*=.*$", "", text)
        text = re.sub(
            r"(?m)^\[retry\]\s*$", f"[retry]\nmax_attempts = {max_attempts}", text
        )
    else:
        text = text.rstrip("\n") + f"\n\n[retry]\nmax_attempts = {max_attempts}\n"
    toml.write_text(text)
