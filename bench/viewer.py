"""What one viewer of a job's event stream received: the last train/loss step at its `hello`, then every train/loss
step the stream sent, until `end`. Fed the stream's lines one at a time (from a sync or an async client)."""

import json
from dataclasses import dataclass, field


@dataclass
class Viewer:
    after: int | None = None
    steps: list[int] = field(default_factory=list)
    ended: bool = False
    _kind: str | None = None

    def line(self, line: str) -> bool:
        """Takes one line of the stream; True once its `end` event arrived."""
        if line.startswith("event:"):
            self._kind = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and self._kind in ("hello", "metrics", "end"):
            data = json.loads(line.split(":", 1)[1])
            if self._kind == "hello":
                self.after = data["last_steps"].get("train/loss", -1)
            elif self._kind == "metrics":
                self.steps += data.get("train/loss", {}).get("steps", [])
            else:
                self.ended = True
        return self.ended

    def complete(self, recorded: list[int]) -> bool:
        """It received, once and in order, every recorded step after its hello."""
        return self.after is not None and self.steps == [s for s in recorded if s > self.after]
