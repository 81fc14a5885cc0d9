"""Power readers: measured where the board exposes a sensor, an estimate labelled as such, or nothing.

Every reading carries its ``source``: ``rapl`` (Intel/AMD package energy counter), ``hwmon`` (a
``power1_input`` sensor in µW), ``jetson-ina3221`` (the board's input rail in mW), ``rpi-pmic`` (Raspberry Pi 5
PMIC rails via ``vcgencmd pmic_read_adc``), ``estimate`` (the profile's linear model: idle + (max − idle) ×
CPU utilisation) or ``none``. Readers take their root path / command so tests run them on fake trees.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Reading:
    watts: float | None
    source: str
    measured: bool


class Reader:
    source = "none"
    measured = False

    def read(self, cpu_utilisation: float) -> Reading:
        return Reading(None, self.source, False)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


class RaplReader(Reader):
    """Average power between two reads of ``energy_uj``, handling the counter's wrap at ``max_energy_range_uj``."""

    source, measured = "rapl", True

    def __init__(self, zones: list[Path]) -> None:
        self.zones = zones
        self._last: tuple[float, list[int]] | None = None

    @classmethod
    def find(cls, root: Path = Path("/sys/class/powercap")) -> RaplReader | None:
        zones = [z for z in sorted(root.glob("intel-rapl:*")) if z.name.count(":") == 1]  # packages, not subzones
        zones = [z for z in zones if _read_int(z / "energy_uj") is not None]
        return cls(zones) if zones else None

    def read(self, cpu_utilisation: float) -> Reading:
        now = time.monotonic()
        counters = [_read_int(z / "energy_uj") for z in self.zones]
        if any(c is None for c in counters):
            return Reading(None, self.source, True)
        last, self._last = self._last, (now, counters)  # type: ignore[assignment]
        if last is None or now <= last[0]:
            return Reading(None, self.source, True)
        joules = 0.0
        for zone, before, after in zip(self.zones, last[1], counters, strict=True):
            delta = after - before
            if delta < 0:  # the counter wrapped
                delta += _read_int(zone / "max_energy_range_uj") or 0
            joules += delta / 1e6
        return Reading(joules / (now - last[0]), self.source, True)


class HwmonReader(Reader):
    source, measured = "hwmon", True

    def __init__(self, sensors: list[Path]) -> None:
        self.sensors = sensors

    @classmethod
    def find(cls, root: Path = Path("/sys/class/hwmon")) -> HwmonReader | None:
        sensors = [p for p in sorted(root.glob("hwmon*/power1_input")) if _read_int(p) is not None]
        return cls(sensors) if sensors else None

    def read(self, cpu_utilisation: float) -> Reading:
        values = [_read_int(p) for p in self.sensors]
        return Reading(sum(v for v in values if v is not None) / 1e6, self.source, True)


class JetsonReader(Reader):
    """Rail 0 of the INA3221 monitor is the board input (VDD_IN / POM_5V_IN), in mW."""

    source, measured = "jetson-ina3221", True

    def __init__(self, sensor: Path) -> None:
        self.sensor = sensor

    @classmethod
    def find(cls, root: Path = Path("/sys/bus/i2c/drivers")) -> JetsonReader | None:
        for path in sorted(root.glob("ina3221*/**/in_power0_input")):
            if _read_int(path) is not None:
                return cls(path)
        return None

    def read(self, cpu_utilisation: float) -> Reading:
        value = _read_int(self.sensor)
        return Reading(None if value is None else value / 1e3, self.source, True)


_PMIC = re.compile(r"^\s*(\S+?)_([AV])\s+(?:current|volt)\(\d+\)=([0-9.]+)[AV]\s*$")


class RpiPmicReader(Reader):
    """Sum of V × A over the PMIC rails that report both (Raspberry Pi 5 firmware)."""

    source, measured = "rpi-pmic", True

    def __init__(self, command: list[str]) -> None:
        self.command = command

    @classmethod
    def find(cls, command: list[str] | None = None) -> RpiPmicReader | None:
        reader = cls(command or ["vcgencmd", "pmic_read_adc"])
        return reader if reader.read(0.0).watts is not None else None

    def read(self, cpu_utilisation: float) -> Reading:
        try:
            text = subprocess.run(self.command, capture_output=True, text=True, timeout=2, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return Reading(None, self.source, True)
        amps: dict[str, float] = {}
        volts: dict[str, float] = {}
        for line in text.splitlines():
            match = _PMIC.match(line)
            if match:
                (amps if match.group(2) == "A" else volts)[match.group(1)] = float(match.group(3))
        rails = set(amps) & set(volts)
        return Reading(sum(amps[r] * volts[r] for r in rails) if rails else None, self.source, True)


class EstimateReader(Reader):
    source = "estimate"

    def __init__(self, idle_w: float, max_w: float) -> None:
        self.idle_w, self.max_w = idle_w, max_w

    def read(self, cpu_utilisation: float) -> Reading:
        u = min(max(cpu_utilisation, 0.0), 1.0)
        return Reading(self.idle_w + (self.max_w - self.idle_w) * u, self.source, False)


def detect(
    *,
    sys_root: Path = Path("/sys"),
    pmic_command: list[str] | None = None,
    power_model: tuple[float, float] | None = None,
) -> Reader:
    """The first sensor this board has; else the profile's estimate; else ``none``."""
    for found in (
        RaplReader.find(sys_root / "class" / "powercap"),
        JetsonReader.find(sys_root / "bus" / "i2c" / "drivers"),
        HwmonReader.find(sys_root / "class" / "hwmon"),
        RpiPmicReader.find(pmic_command),
    ):
        if found is not None:
            return found
    return EstimateReader(*power_model) if power_model else Reader()
