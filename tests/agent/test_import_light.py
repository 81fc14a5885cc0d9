from imports import heavy_modules_loaded_by

MODULES = ("protocol", "agent", "cli", "verify", "updater", "transfer", "store", "runtime", "power", "telemetry")


def test_import_edgekit_agent_does_not_import_torch_nncf_or_edgekit():
    statement = "import edgekit_agent, " + ", ".join(f"edgekit_agent.{m}" for m in MODULES)
    assert heavy_modules_loaded_by(statement, ("torch", "nncf", "edgekit", "openvino", "onnxruntime")) == []


def test_running_the_agent_cli_help_stays_light():
    statement = "import edgekit_agent.cli as c; c.parser()"
    assert heavy_modules_loaded_by(statement, ("torch", "nncf", "edgekit", "numpy", "openvino")) == []
