"""Circuit breakers per tenant and target host, for deliveries.

When a host keeps failing, every pending delivery to it retrying on its own
schedule would hammer it the moment it tries to come back. After
``FAILURES_TO_OPEN`` failures in a row the circuit *opens*: deliveries to
that host wait, untried, for the cool-down. Then it is *half open*: one
delivery goes through as a probe while the rest keep waiting; its success
closes the circuit, its failure opens it again.

State lives in memory: after a restart every circuit starts closed, which
costs at most one more round of failures.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

FAILURES_TO_OPEN = 5
COOL_DOWN_S = 30.0
# While a probe is out, others look again this soon.
PROBE_WAIT_S = 1.0


@dataclass
class Circuit:
    """One tenant's view of one host."""

    failures: int = 0
    open_until: float = 0.0
    probing: bool = False

    def state(self, now: float) -> str:
        if self.probing:
            return "half_open"
        if self.open_until > now:
            return "open"
        return "half_open" if self.failures >= FAILURES_TO_OPEN else "closed"


class CircuitBreakers:
    """Every circuit; ``time_scale`` compresses the cool-down for tests."""

    def __init__(self, time_scale: float = 1.0) -> None:
        self.circuits: dict[tuple[str, str], Circuit] = {}
        self.cool_down_s = COOL_DOWN_S * time_scale
        self.probe_wait_s = PROBE_WAIT_S * time_scale

    def blocked_until(self, tenant: str, host: str, now: float) -> float | None:
        """When to look again if a delivery may not go now; None if it may."""
        circuit = self.circuits.get((tenant, host))
        if circuit is None or circuit.failures < FAILURES_TO_OPEN:
            return None
        if circuit.open_until > now:
            return circuit.open_until
        if circuit.probing:
            return now + self.probe_wait_s
        circuit.probing = True  # this delivery is the probe
        return None

    def record(self, tenant: str, host: str, succeeded: bool, now: float) -> None:
        """Count an attempt's outcome; open or close the circuit."""
        circuit = self.circuits.setdefault((tenant, host), Circuit())
        circuit.probing = False
        if succeeded:
            circuit.failures = 0
            circuit.open_until = 0.0
            return
        circuit.failures += 1
        if circuit.failures >= FAILURES_TO_OPEN:
            circuit.open_until = now + self.cool_down_s

    def counts(self, now: float) -> Counter[tuple[str, str]]:
        """How many hosts each tenant has in each state, for the metrics."""
        return Counter(
            (owner, circuit.state(now)) for (owner, _), circuit in self.circuits.items()
        )

    def of_tenant(self, tenant: str, now: float) -> list[dict[str, object]]:
        """The tenant's circuits, for the management API."""
        return [
            {
                "host": host,
                "state": circuit.state(now),
                "failures": circuit.failures,
                "open_until": circuit.open_until or None,
            }
            for (owner, host), circuit in sorted(self.circuits.items())
            if owner == tenant
        ]
