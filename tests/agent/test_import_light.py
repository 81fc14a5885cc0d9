import subprocess
import sys


def test_import_edgekit_agent_does_not_import_torch_nncf_or_edgekit():
    code = (
        "import sys, edgekit_agent, edgekit_agent.protocol; "
        "bad = [m for m in ('torch', 'nncf', 'edgekit', 'openvino', 'onnxruntime') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
