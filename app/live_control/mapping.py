"""The MIDI mapping file: which control change and which note does what (docs/live-control.md).

A TOML file, read and checked whole when the server starts, so a typo stops `serve` with a line
that names it instead of a controller that silently does nothing on stage:

    [[cc]]                   # a knob or fader: its 0..127 spans the parameter's range
    control = 1
    param = "strength"

    [[note]]                 # a key or pad: sets values, or flips a boolean
    note = 60
    set = { prompt = "a watercolor city" }

Which session it drives is the latest one (MIDI carries no address). Parameter names are checked
against the session's own schema when a message arrives, as any update is.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the `live` extra installs tomli on 3.10
    import tomli as tomllib


class MappingError(ValueError):
    """The mapping file cannot be used; the message names the file and what is wrong in it."""


class CcMapping(BaseModel):
    """A control change drives one parameter: 0..127 spans its range (the schema's, or `min`..`max`)."""

    model_config = ConfigDict(extra="forbid")
    control: int = Field(ge=0, le=127, description="The controller number.")
    channel: int | None = Field(None, ge=1, le=16, description="Only this MIDI channel (1..16); omitted: any.")
    param: str = Field(min_length=1)
    min: float | None = Field(None, description="The value at 0 (default: the schema's minimum).")
    max: float | None = Field(None, description="The value at 127 (default: the schema's maximum); below min turns the knob round.")


class NoteMapping(BaseModel):
    """A note-on (velocity above 0) sets values (a preset, a prompt) or flips a boolean parameter."""

    model_config = ConfigDict(extra="forbid")
    note: int = Field(ge=0, le=127, description="The note number (60 is middle C).")
    channel: int | None = Field(None, ge=1, le=16, description="Only this MIDI channel (1..16); omitted: any.")
    set: dict[str, Any] | None = Field(None, min_length=1, description="Parameter values applied together, as one update.")
    toggle: str | None = Field(None, min_length=1, description="A boolean parameter flipped on each press.")

    @model_validator(mode="after")
    def _one_action(self) -> NoteMapping:
        if (self.set is None) == (self.toggle is None):
            raise ValueError("give either `set` (values) or `toggle` (a boolean parameter), not both or neither")
        return self


class MidiMap(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cc: list[CcMapping] = Field(default_factory=list)
    note: list[NoteMapping] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unambiguous(self) -> MidiMap:
        if not self.cc and not self.note:
            raise ValueError("no [[cc]] or [[note]] mapping: the file maps nothing")
        _no_overlap([(m.control, m.channel) for m in self.cc], "control change")
        _no_overlap([(m.note, m.channel) for m in self.note], "note")
        return self

    def cc_for(self, channel: int, control: int) -> CcMapping | None:
        """The mapping of a control change (`channel` 1..16), if any."""
        return next((m for m in self.cc if m.control == control and m.channel in (None, channel)), None)

    def note_for(self, channel: int, note: int) -> NoteMapping | None:
        return next((m for m in self.note if m.note == note and m.channel in (None, channel)), None)


def _no_overlap(keys: list[tuple[int, int | None]], what: str) -> None:
    """One message must mean one thing: the same number twice on one channel (or once on any) is ambiguous."""
    for i, (number, channel) in enumerate(keys):
        for other_number, other_channel in keys[i + 1:]:
            if number == other_number and (channel is None or other_channel is None or channel == other_channel):
                where = "any channel" if channel is None or other_channel is None else f"channel {channel}"
                raise ValueError(f"{what} {number} is mapped twice on {where}")


def load_midi_map(path: Path) -> MidiMap:
    """The mapping in `path`; MappingError naming the file and the problem (unreadable, not TOML, a bad entry)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise MappingError(f"cannot read the MIDI mapping file {path}: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise MappingError(f"the MIDI mapping file {path} is not valid TOML: {err}") from None
    try:
        return MidiMap.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise MappingError(f"the MIDI mapping file {path}: {where + ': ' if where else ''}{message}") from None
