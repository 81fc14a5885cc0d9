"""Power readers against fake sysfs trees laid out like the real ones (this machine has no sensors)."""

from __future__ import annotations

import stat

import pytest
from edgekit_agent import power
from edgekit_agent.outbox import Outbox
from edgekit_agent.telemetry import Telemetry


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_rapl_average_power_and_counter_wrap(tmp_path, monkeypatch):
    zone = tmp_path / "class/powercap/intel-rapl:0"
    write(zone / "energy_uj", "999000000")
    write(zone / "max_energy_range_uj", "1000000000")
    write(tmp_path / "class/powercap/intel-rapl:0:0/energy_uj", "5")  # a subzone: not double counted
    clock = iter([100.0, 102.0, 104.0])
    monkeypatch.setattr(power.time, "monotonic", lambda: next(clock))
    reader = power.detect(sys_root=tmp_path, pmic_command=["false"])
    assert isinstance(reader, power.RaplReader) and len(reader.zones) == 1
    assert reader.read(0.5).watts is None  # the first read only starts the interval
    write(zone / "energy_uj", "3000000")  # wrapped: 1 J to the top, then 3 J
    assert reader.read(0.5).watts == pytest.approx(4.0 / 2.0)
    write(zone / "energy_uj", "13000000")
    r = reader.read(0.5)
    assert r.watts == pytest.approx(5.0) and r.source == "rapl" and r.measured


def test_hwmon_microwatts(tmp_path):
    write(tmp_path / "class/hwmon/hwmon3/power1_input", "4250000")
    reader = power.detect(sys_root=tmp_path, pmic_command=["false"])
    assert reader.source == "hwmon" and reader.read(0.1).watts == pytest.approx(4.25)


def test_jetson_ina3221_input_rail_milliwatts(tmp_path):
    write(tmp_path / "bus/i2c/drivers/ina3221x/1-0040/iio:device0/in_power0_input", "5120")
    write(tmp_path / "bus/i2c/drivers/ina3221x/1-0040/iio:device0/in_power1_input", "900")
    reader = power.detect(sys_root=tmp_path, pmic_command=["false"])
    assert reader.source == "jetson-ina3221" and reader.read(0.1).watts == pytest.approx(5.12)


def test_rpi5_pmic_rails(tmp_path):
    script = tmp_path / "vcgencmd"
    script.write_text(
        "#!/bin/sh\ncat <<'X'\n"
        "   VDD_CORE_A current(7)=2.00000000A\n   VDD_CORE_V volt(15)=0.80000000V\n"
        "   3V3_SYS_A current(1)=0.50000000A\n   3V3_SYS_V volt(9)=3.30000000V\n"
        "   EXT5V_V volt(24)=5.10000000V\nX\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    reader = power.detect(sys_root=tmp_path, pmic_command=[str(script)])
    assert reader.source == "rpi-pmic" and reader.read(0.1).watts == pytest.approx(2.0 * 0.8 + 0.5 * 3.3)


def test_no_sensor_is_an_estimate_from_the_profile_or_none(tmp_path):
    estimate = power.detect(sys_root=tmp_path, pmic_command=["false"], power_model=(2.7, 6.4))
    r = estimate.read(0.5)
    assert r.source == "estimate" and not r.measured and r.watts == pytest.approx(2.7 + 0.5 * 3.7)
    assert power.detect(sys_root=tmp_path, pmic_command=["false"]).read(0.5) == power.Reading(None, "none", False)


def test_telemetry_labels_estimated_energy(tmp_path):
    t = Telemetry(power.EstimateReader(2.0, 4.0))
    for ms in (1.0, 2.0, 3.0, 4.0):
        t.record(ms)
    t.record(None)
    snap = t.snapshot()
    assert snap["inferences"] == 4 and snap["errors"] == 1
    assert snap["latency_ms"]["p50"] in (2.0, 3.0) and snap["latency_ms"]["p99"] == 4.0
    assert snap["power"]["source"] == "estimate" and snap["energy_is_estimate"] is True
    assert snap["energy_per_inference_mj"] > 0
    assert Telemetry(power.Reader()).snapshot()["energy_per_inference_mj"] is None


def test_outbox_keeps_order_across_restarts_and_drops_the_oldest_past_its_limit(tmp_path):
    box = Outbox(tmp_path, limit=3)
    for i in range(5):
        box.put("t", str(i).encode())
    assert box.dropped == 2 and len(box) == 3
    again = Outbox(tmp_path, limit=3)
    got = []
    while (item := again.peek(0.01)) is not None:
        got.append(item[2])
        again.done(item[0])
    assert got == [b"2", b"3", b"4"]
