from imports import heavy_modules_loaded_by


def test_cli_help_does_not_import_heavy_runtimes():
    statement = "from edgekit.cli import app"
    assert heavy_modules_loaded_by(statement, ("torch", "onnxruntime", "openvino", "nncf", "onnx")) == []


def test_edgekit_help_runs(cli):
    code, out, _ = cli("--help")
    assert code == 0 and "package" in out and "profiles" in out
