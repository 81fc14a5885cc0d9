import subprocess
import sys


def test_cli_help_does_not_import_heavy_runtimes():
    code = (
        "import sys; from edgekit.cli import app; "
        "bad = [m for m in ('torch', 'onnxruntime', 'openvino', 'nncf', 'onnx') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_edgekit_help_runs(cli):
    code, out, _ = cli("--help")
    assert code == 0 and "package" in out and "profiles" in out
